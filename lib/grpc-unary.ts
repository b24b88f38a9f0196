/**
 * A lean gRPC unary path over node:http2, for the internal hot paths (gateway → router →
 * message store → gateway). It speaks the same gRPC wire protocol as connect-node and
 * grpc-js, and uses the same generated descriptors and service implementations, but
 * skips the general machinery (async iterables, web Headers conversions, abort-signal
 * chains) that made each unary call cost about a millisecond of CPU. Streaming methods,
 * compressed messages and interceptors still go through connect-node.
 *
 * Measured with tools/bench/rpc.ts: see docs/architecture.md ("Internal RPC").
 */
import type * as http2 from "node:http2";
import { constants as h2 } from "node:http2";
import {
  fromBinary,
  type DescMessage,
  type DescMethod,
  type DescMethodUnary,
  type DescService,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type ConnectRouter,
  type HandlerContext,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import { fastGrpcFrame } from "./fast-binary.js";
import { endRpcSpan, recordRpcServed, runInSpan, startRpcClientSpan, startRpcServerSpan } from "./telemetry/rpc.js";

/** The largest request or response message accepted (gRPC's own default is 4 MiB). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** gRPC status 0 (connect's Code enum has no OK member). */
const GRPC_OK = 0;

const GRPC_CONTENT_TYPES = new Set(["application/grpc", "application/grpc+proto"]);

// ---------------------------------------------------------------- framing

/** The single message of a unary request or response body, or a ConnectError. */
function unframe(body: Buffer): Uint8Array | ConnectError {
  if (body.length < 5) return new ConnectError("missing message", Code.Internal);
  if (body[0]! & 1) return new ConnectError("compressed messages are not accepted here", Code.Internal);
  const length = body.readUInt32BE(1);
  if (length > MAX_MESSAGE_BYTES) return new ConnectError(`message larger than ${MAX_MESSAGE_BYTES} bytes`, Code.ResourceExhausted);
  if (body.length !== 5 + length) return new ConnectError("expected exactly one message", Code.Internal);
  return body.subarray(5);
}

/** gRPC's grpc-message encoding: percent-encode everything outside printable ASCII and '%'. */
function encodeGrpcMessage(message: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(message)) return message;
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function decodeGrpcMessage(value: string | undefined): string {
  if (!value) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** grpc-timeout ("100m", "5S", ...) in milliseconds, or undefined. */
export function parseGrpcTimeout(value: string | undefined): number | undefined {
  const m = value ? /^(\d{1,8})([HMSmun])$/.exec(value) : null;
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };
  return n * unit[m[2]!]!;
}

// ---------------------------------------------------------------- server

type UnaryImpl = (req: unknown, ctx: HandlerContext) => unknown;

interface UnaryRoute {
  service: DescService;
  method: DescMethodUnary;
  impl: UnaryImpl;
}

/**
 * Records the unary methods `routes` registers, while forwarding every registration to
 * the real connect router (which keeps serving everything else).
 */
export function recordUnaryRoutes(routes: (router: ConnectRouter) => void): {
  routes: (router: ConnectRouter) => void;
  table: Map<string, UnaryRoute>;
} {
  const table = new Map<string, UnaryRoute>();
  const add = (service: DescService, method: DescMethod, impl: unknown) => {
    if (method.methodKind === "unary" && typeof impl === "function") {
      table.set(`/${service.typeName}/${method.name}`, { service, method: method as DescMethodUnary, impl: impl as UnaryImpl });
    }
  };
  return {
    table,
    routes: (router) => {
      const recording: ConnectRouter = {
        get handlers() {
          return router.handlers;
        },
        service(service, impl, options) {
          for (const method of service.methods) {
            const fn = (impl as Record<string, unknown>)[method.localName];
            add(service, method, typeof fn === "function" ? fn.bind(impl) : undefined);
          }
          router.service(service, impl, options);
          return recording;
        },
        rpc(method, impl, options) {
          add(method.parent, method, impl);
          router.rpc(method, impl, options);
          return recording;
        },
      };
      routes(recording);
    },
  };
}

/** The handler context of a lean call; request headers are converted only if asked for. */
class UnaryContext implements HandlerContext {
  readonly requestMethod = "POST";
  readonly protocolName = "grpc";
  readonly responseHeader = new Headers();
  readonly responseTrailer = new Headers();
  readonly values = createContextValues();
  readonly method: DescMethod;
  readonly service: DescService;
  readonly url: string;
  #requestHeader: Headers | undefined;

  constructor(
    route: UnaryRoute,
    private readonly req: http2.Http2ServerRequest,
    readonly signal: AbortSignal,
    private readonly deadline: number | undefined,
  ) {
    this.method = route.method;
    this.service = route.service;
    this.url = req.url;
  }

  get requestHeader(): Headers {
    return (this.#requestHeader ??= toHeaders(this.req.headers));
  }

  timeoutMs(): number | undefined {
    return this.deadline === undefined ? undefined : this.deadline - Date.now();
  }
}

/**
 * Serves a unary call from `table` if the request is plain gRPC (uncompressed protobuf);
 * returns false to let the general handler take it.
 */
export function serveUnary(
  table: Map<string, UnaryRoute>,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
): boolean {
  const route = table.get(req.url);
  if (!route || req.method !== "POST") return false;
  const headers = req.headers;
  const contentType = headers["content-type"];
  const encoding = headers["grpc-encoding"];
  if (!contentType || !GRPC_CONTENT_TYPES.has(contentType) || (encoding && encoding !== "identity")) return false;

  const startedMs = performance.now();
  // Tracing (off: undefined, one branch): the caller's trace context is in the metadata.
  const span = startRpcServerSpan(route.service.typeName, route.method.name, headerValue(headers, "traceparent"), headerValue(headers, "tracestate"));
  const controller = new AbortController();
  const timeoutMs = parseGrpcTimeout(headers["grpc-timeout"] as string | undefined);
  const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
  let timer: NodeJS.Timeout | undefined;
  if (timeoutMs !== undefined) {
    timer = setTimeout(() => controller.abort(new ConnectError("deadline exceeded", Code.DeadlineExceeded)), timeoutMs);
  }
  let done = false;
  let measured = false;
  const measure = (status: number, err?: unknown) => {
    if (measured) return;
    measured = true;
    endRpcSpan(span, status, err);
    recordRpcServed(route.service.typeName, route.method.name, status, startedMs);
  };
  const finish = (status: number, message: string | undefined, body?: Buffer, err?: unknown) => {
    done = true;
    if (timer) clearTimeout(timer);
    measure(status, err);
    if (res.stream.destroyed || res.stream.closed) return;
    const trailers: http2.OutgoingHttpHeaders = { "grpc-status": String(status) };
    if (message) trailers["grpc-message"] = encodeGrpcMessage(message);
    res.writeHead(200, { "content-type": "application/grpc+proto" });
    res.addTrailers(trailers);
    if (body) res.end(body);
    else res.end();
  };
  const fail = (err: unknown) => {
    const ce = ConnectError.from(err);
    finish(ce.code, ce.rawMessage, undefined, ce);
  };
  res.stream.once("close", () => {
    if (done) return;
    if (timer) clearTimeout(timer);
    measure(Code.Canceled);
    if (!controller.signal.aborted) controller.abort(new ConnectError("the caller closed the call", Code.Canceled));
  });

  const chunks: Buffer[] = [];
  let size = 0;
  req.on("data", (chunk: Buffer) => {
    size += chunk.length;
    if (size > MAX_MESSAGE_BYTES + 5) {
      req.removeAllListeners("data");
      return fail(new ConnectError(`message larger than ${MAX_MESSAGE_BYTES} bytes`, Code.ResourceExhausted));
    }
    chunks.push(chunk);
  });
  req.once("end", () => {
    if (size > MAX_MESSAGE_BYTES + 5) return;
    const bytes = unframe(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    if (bytes instanceof ConnectError) return fail(bytes);
    let input;
    try {
      input = fromBinary(route.method.input, bytes);
    } catch (err) {
      return fail(new ConnectError(`cannot decode request: ${String(err)}`, Code.InvalidArgument));
    }
    const ctx = new UnaryContext(route, req, controller.signal, deadline);
    runInSpan(span, () => Promise.resolve().then(() => route.impl(input, ctx)))
      .then((out) => {
        // The fast encoder (lib/fast-binary.ts) takes a message or an init object as it is.
        finish(GRPC_OK, undefined, fastGrpcFrame(route.method.output, out as MessageInitShape<DescMessage>));
      }, fail);
  });
  return true;
}

// ---------------------------------------------------------------- client

/** Maps a failure of the connection or the stream to a ConnectError (retryable ones to Unavailable). */
function transportError(err: unknown, rstCode?: number, connectionLost = false): ConnectError {
  if (err instanceof ConnectError) return err;
  // Node resets the streams of a connection that died (a TCP reset: the peer's process was
  // killed) with INTERNAL_ERROR: that is a lost connection, not a server's verdict.
  if (connectionLost) rstCode = undefined;
  // Our own cancellations settle the call before the stream closes, so a CANCEL seen
  // here came from the peer or from the connection going away (node resets the open
  // streams of a lost connection with CANCEL): the call did not complete. It is treated
  // as Unavailable below, so callers retry or fail over.
  switch (rstCode) {
    case h2.NGHTTP2_ENHANCE_YOUR_CALM:
      return new ConnectError("the server asked to slow down", Code.ResourceExhausted);
    case h2.NGHTTP2_PROTOCOL_ERROR:
    case h2.NGHTTP2_INTERNAL_ERROR:
    case h2.NGHTTP2_FLOW_CONTROL_ERROR:
    case h2.NGHTTP2_FRAME_SIZE_ERROR:
    case h2.NGHTTP2_COMPRESSION_ERROR:
      return new ConnectError(`http/2 stream reset (0x${rstCode.toString(16)})`, Code.Internal);
  }
  // Refused streams, GOAWAY, a reset or refused connection, a server that went away
  // mid-call: the peer is (momentarily) not there. Callers retry or fail over.
  const detail = err instanceof Error ? err.message : `stream closed${rstCode ? ` (0x${rstCode.toString(16)})` : ""}`;
  return new ConnectError(`connection to the service failed: ${detail}`, Code.Unavailable, undefined, undefined, err);
}

/** Whether the stream's connection is gone (node detaches the streams of a destroyed session). */
function lost(stream: http2.ClientHttp2Stream): boolean {
  return stream.session === undefined || stream.session.destroyed;
}

/** The HTTP status of a non-gRPC response, as gRPC maps it. */
function codeFromHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.Internal;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.Unavailable;
    default:
      return Code.Unknown;
  }
}

function headerValue(h: http2.IncomingHttpHeaders | undefined, name: string): string | undefined {
  const v = h?.[name];
  return Array.isArray(v) ? v[0] : v;
}

function toHeaders(h: http2.IncomingHttpHeaders | undefined): Headers {
  const out = new Headers();
  if (!h) return out;
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(":") || v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [String(v)]) out.append(k, one);
  }
  return out;
}

/**
 * `pending` (a stream being opened), failing with DeadlineExceeded after `timeoutMs` or
 * Canceled on `signal`; a stream that arrives after that is closed at once.
 */
function withDeadline(
  pending: Promise<http2.ClientHttp2Stream>,
  timeoutMs: number | undefined,
  signal: AbortSignal | undefined,
): Promise<http2.ClientHttp2Stream> {
  if ((timeoutMs === undefined || timeoutMs <= 0) && !signal) return pending;
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err: ConnectError | undefined, stream?: http2.ClientHttp2Stream) => {
      if (done) {
        if (stream && !stream.closed) stream.close(h2.NGHTTP2_CANCEL);
        return;
      }
      done = true;
      if (timer) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (err) reject(err);
      else resolve(stream!);
    };
    const onAbort = () => finish(ConnectError.from(signal!.reason, Code.Canceled));
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer =
      timeoutMs !== undefined && timeoutMs > 0 ? setTimeout(() => finish(new ConnectError("deadline exceeded", Code.DeadlineExceeded)), timeoutMs) : undefined;
    pending.then(
      (stream) => finish(undefined, stream),
      (err: unknown) => finish(transportError(err)),
    );
  });
}

/**
 * A transport whose unary calls take the lean path over `sessionManager` (one HTTP/2
 * connection, reconnecting as connect-node's manager does) and whose streaming calls go
 * to `streaming`.
 */
export function leanGrpcTransport(sessionManager: Http2SessionManager, streaming: Transport): Transport {
  return {
    stream: streaming.stream.bind(streaming),
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      if (signal?.aborted) throw ConnectError.from(signal.reason, Code.Canceled);
      const body = fastGrpcFrame(method.input, input);
      const headers: http2.OutgoingHttpHeaders = { "content-type": "application/grpc+proto", te: "trailers" };
      if (timeoutMs !== undefined && timeoutMs > 0) headers["grpc-timeout"] = `${Math.ceil(timeoutMs)}m`;
      // Tracing (off: undefined, one branch): a client span under the caller's recording span, in the metadata.
      const traced = startRpcClientSpan(method.parent.typeName, method.name);
      if (traced) {
        headers.traceparent = traced.traceparent;
        if (traced.tracestate) headers.tracestate = traced.tracestate;
      }
      if (header) new Headers(header).forEach((v, k) => (headers[k] = v));

      // The deadline counts from here: getting a stream may wait for a connection to be
      // made or verified with a PING (up to the manager's pingTimeoutMs).
      const deadline = timeoutMs !== undefined && timeoutMs > 0 ? performance.now() + timeoutMs : undefined;
      let stream: http2.ClientHttp2Stream;
      try {
        stream = await withDeadline(sessionManager.request("POST", `/${method.parent.typeName}/${method.name}`, headers, {}), timeoutMs, signal);
      } catch (err) {
        const ce = err instanceof ConnectError ? err : transportError(err);
        endRpcSpan(traced?.span, ce.code, ce);
        throw ce;
      }
      return new Promise<UnaryResponse<I, O>>((resolve, reject) => {
        let responseHeaders: http2.IncomingHttpHeaders | undefined;
        let trailers: http2.IncomingHttpHeaders | undefined;
        const chunks: Buffer[] = [];
        let size = 0;
        let settled = false;
        let timer: NodeJS.Timeout | undefined;
        const settle = (err: ConnectError | undefined, value?: UnaryResponse<I, O>) => {
          if (settled) return;
          settled = true;
          if (traced) endRpcSpan(traced.span, err ? err.code : GRPC_OK, err);
          if (timer) clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          if (!stream.closed) stream.close(err ? h2.NGHTTP2_CANCEL : h2.NGHTTP2_NO_ERROR);
          if (err) reject(err);
          else resolve(value!);
        };
        const onAbort = () => settle(ConnectError.from(signal!.reason, Code.Canceled));
        signal?.addEventListener("abort", onAbort, { once: true });
        if (deadline !== undefined) {
          timer = setTimeout(() => settle(new ConnectError("deadline exceeded", Code.DeadlineExceeded)), Math.max(0, deadline - performance.now()));
        }
        stream.once("response", (h) => (responseHeaders = h));
        stream.once("trailers", (h) => (trailers = h));
        stream.on("data", (chunk: Buffer) => {
          sessionManager.notifyResponseByteRead(stream);
          size += chunk.length;
          if (size > MAX_MESSAGE_BYTES + 5) {
            return settle(new ConnectError(`response larger than ${MAX_MESSAGE_BYTES} bytes`, Code.ResourceExhausted));
          }
          chunks.push(chunk);
        });
        stream.once("error", (err) => settle(transportError(err, stream.rstCode, lost(stream))));
        stream.once("close", () => {
          if (settled) return;
          if (!responseHeaders) return settle(transportError(undefined, stream.rstCode, lost(stream)));
          const httpStatus = Number(responseHeaders[":status"]);
          // Trailers-only responses carry grpc-status in the headers.
          const status = headerValue(trailers, "grpc-status") ?? headerValue(responseHeaders, "grpc-status");
          if (status === undefined) {
            if (httpStatus !== 200) return settle(new ConnectError(`HTTP ${httpStatus}`, codeFromHttpStatus(httpStatus)));
            return settle(transportError(undefined, stream.rstCode, lost(stream)));
          }
          const code = Number(status);
          if (code !== GRPC_OK) {
            const msg = decodeGrpcMessage(headerValue(trailers, "grpc-message") ?? headerValue(responseHeaders, "grpc-message"));
            return settle(new ConnectError(msg, (Number.isInteger(code) && code > 0 && code <= 16 ? code : Code.Unknown) as Code, toHeaders(trailers ?? responseHeaders)));
          }
          const bytes = unframe(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
          if (bytes instanceof ConnectError) return settle(bytes);
          let output;
          try {
            output = fromBinary(method.output, bytes);
          } catch (err) {
            return settle(new ConnectError(`cannot decode response: ${String(err)}`, Code.Internal));
          }
          const rawTrailers = trailers;
          settle(undefined, {
            stream: false,
            service: method.parent,
            method,
            message: output,
            // Converted only if the caller asks (onHeader/onTrailer).
            get header() {
              return toHeaders(responseHeaders);
            },
            get trailer() {
              return toHeaders(rawTrailers);
            },
          });
        });
        stream.end(body);
      });
    },
  } as Transport;
}
