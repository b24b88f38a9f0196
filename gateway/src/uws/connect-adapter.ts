import { STATUS_CODES } from "node:http";
import { Code, ConnectError, createConnectRouter, type ConnectRouterOptions, type ContextValues } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import type { HttpRequest, HttpResponse, TemplatedApp } from "uWebSockets.js";
import type { Routes } from "../../../lib/rpc.js";

/**
 * Serves Connect RPCs (Connect protocol and gRPC-Web, HTTP/1.1, JSON and binary) from a
 * uWebSockets.js app: a small adapter over `createConnectRouter().handlers` and the
 * universal request/response shapes, like connect-es's fastify and express plugins.
 *
 * gRPC proper is not served: it needs HTTP/2 trailers, which uWS does not have. A gRPC
 * request gets 415 Unsupported Media Type.
 */

/** What `contextValues` sees of a request: read synchronously, valid after it returns. */
export interface ConnectRequestInfo {
  /** Upper case: "POST", "GET". */
  readonly method: string;
  /** The path without the query string, e.g. `/parley.client.v1.ChatService/GetUsers`. */
  readonly path: string;
  readonly header: Headers;
  /** The peer's IP address as text (the TCP peer, not a proxy's client). */
  readonly remoteAddress: string;
}

export interface MountConnectOptions extends Omit<ConnectRouterOptions, "grpc"> {
  /**
   * The largest request body (bytes on the wire) accepted. A bigger body, or a
   * Content-Length announcing one, ends the call with `resource_exhausted` (Connect
   * unary: HTTP 429 with a JSON error body) without waiting for the rest of the body,
   * and the connection is closed after the response so that the rest is not read.
   */
  maxRequestBytes: number;
  /** Prepended to every procedure path, e.g. "/rpc". No trailing slash. */
  requestPathPrefix?: string;
  /** Per-request context values (auth, peer address, ...). Called synchronously. */
  contextValues?(info: ConnectRequestInfo): ContextValues;
  /**
   * Also answer 404 for every other path under `requestPathPrefix` (with no prefix: the
   * whole app's fallback). Unknown procedures of mounted services get 404 regardless.
   */
  notFoundFallback?: boolean;
  /**
   * Asked at the end of every response: true closes the connection after it instead of
   * keeping it alive (a draining server uses it so keep-alive clients let go).
   */
  closeConnections?(): boolean;
  /** Failures that cannot reach the client (handler crashed, write failed). pino-compatible. */
  logger?: { error(obj: object, msg: string): void };
}

export interface MountedConnect {
  /** Every procedure path registered on the app, prefix included. */
  readonly paths: readonly string[];
}

/**
 * Registers every procedure of `routes` on `app`: POST, plus GET for procedures with
 * `idempotency_level = NO_SIDE_EFFECTS` (Connect GET), 405 for other methods on those
 * paths, and 404 for unknown procedures of the mounted services.
 */
export function mountConnect(app: TemplatedApp, routes: Routes, opts: MountConnectOptions): MountedConnect {
  if (!Number.isSafeInteger(opts.maxRequestBytes) || opts.maxRequestBytes < 0) {
    throw new RangeError(`maxRequestBytes must be a non-negative integer, got ${opts.maxRequestBytes}`);
  }
  const { maxRequestBytes, requestPathPrefix, contextValues, notFoundFallback, logger, closeConnections, ...routerOpts } = opts;
  const router = createConnectRouter({
    acceptCompression: [compressionGzip, compressionBrotli],
    // Applies to each (decompressed) message; the adapter limits the whole body.
    readMaxBytes: maxRequestBytes,
    ...routerOpts,
    grpc: false,
  });
  routes(router);
  const prefix = requestPathPrefix ?? "";
  const log = logger ?? { error: (obj: object, msg: string) => console.error(msg, obj) };
  // As in connect-node's adapter, a later handler for the same path wins (uWS itself
  // aborts the process when a route is registered twice).
  const byPath = new Map<string, UniversalHandler>();
  for (const handler of router.handlers) byPath.set(prefix + handler.requestPath, handler);
  const services = new Set<string>();
  for (const [path, handler] of byPath) {
    const serve = (res: HttpResponse, req: HttpRequest) => serveRequest(res, req, handler, path, maxRequestBytes, contextValues, closeConnections, log);
    app.post(path, serve);
    if (handler.allowedMethods.includes("GET")) app.get(path, serve);
    const allow = handler.allowedMethods.join(", ");
    app.any(path, (res) => {
      res.writeStatus(statusLine(405)).writeHeader("allow", allow).end();
    });
    services.add(handler.service.typeName);
  }
  const notFound = (res: HttpResponse) => {
    res.writeStatus(statusLine(404)).end();
  };
  for (const typeName of services) app.any(`${prefix}/${typeName}/*`, notFound);
  if (notFoundFallback) app.any(`${prefix}/*`, notFound);
  return { paths: [...byPath.keys()] };
}

type Log = NonNullable<MountConnectOptions["logger"]>;

/** The synchronous part: everything that needs `req` happens here, before any await. */
function serveRequest(
  res: HttpResponse,
  req: HttpRequest,
  handler: UniversalHandler,
  path: string,
  maxRequestBytes: number,
  contextValues: MountConnectOptions["contextValues"],
  closeConnections: MountConnectOptions["closeConnections"],
  log: Log,
): void {
  const call = new UwsCall(res, closeConnections);
  let uReq: UniversalServerRequest;
  try {
    const header = new Headers();
    req.forEach((key, value) => header.append(key, value));
    const method = req.getMethod().toUpperCase();
    const query = req.getQuery() ?? "";
    const host = header.get("host") ?? "localhost";
    const target = req.getUrl() + (query === "" ? "" : `?${query}`);
    const url = URL.canParse(target, `http://${host}`) ? new URL(target, `http://${host}`) : new URL(target, "http://localhost");
    const body = new RequestBody(call, maxRequestBytes, header);
    res.onData((chunk, isLast) => body.push(chunk, isLast));
    uReq = {
      httpVersion: "1.1",
      method,
      url: url.toString(),
      header,
      body,
      signal: call.signal,
      contextValues: contextValues?.({
        method,
        path: url.pathname,
        header,
        remoteAddress: Buffer.from(res.getRemoteAddressAsText()).toString(),
      }),
    };
  } catch (e) {
    log.error({ err: e, path }, "connect request setup failed");
    call.fail(e);
    return;
  }
  handler(uReq).then(
    (uRes) => call.respond(uRes),
    (e: unknown) => {
      if (!call.aborted) log.error({ err: e, path }, "connect handler failed");
      call.fail(e);
    },
  ).catch((e: unknown) => {
    // Last stop: nothing may escape as an unhandled rejection (fatal in Node).
    try {
      log.error({ err: e, path }, "connect response failed");
      call.fail(e);
    } catch {
      // the response is already gone
    }
  });
}

/**
 * One HTTP exchange on a uWS response. Owns the rule that `res` is never touched after
 * it was aborted or ended, and that every write after an await is corked.
 */
class UwsCall {
  aborted = false;
  /** end() or close() was called: `res` is gone. */
  finished = false;
  /** The status line and headers are on the wire. */
  private headersSent = false;
  /** The request body was read to its end (decides whether the connection can be reused). */
  requestComplete = false;
  private readonly controller = new AbortController();
  private writableWaiter: (() => void) | undefined;
  private watchingWritable = false;
  private abortListeners: (() => void)[] = [];

  constructor(
    private readonly res: HttpResponse,
    private readonly closeConnections: (() => boolean) | undefined,
  ) {
    res.onAborted(() => {
      this.aborted = true;
      this.finished = true;
      this.controller.abort(new ConnectError("the client closed the connection", Code.Canceled));
      for (const l of this.abortListeners.splice(0)) l();
      this.wakeWritable();
    });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  onAbort(listener: () => void): void {
    if (this.aborted) listener();
    else this.abortListeners.push(listener);
  }

  async respond(uRes: UniversalServerResponse): Promise<void> {
    const it = uRes.body?.[Symbol.asyncIterator]();
    try {
      if (it === undefined) {
        this.end(uRes, undefined);
        return;
      }
      if (uRes.header?.has("content-length")) {
        // A unary response: bounded, sent in one write with uWS's own Content-Length.
        const chunks: Uint8Array[] = [];
        for (let r = await it.next(); r.done !== true; r = await it.next()) {
          if (this.finished) return;
          chunks.push(r.value);
        }
        this.end(uRes, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
        return;
      }
      // A stream: headers after the first chunk (the handler may still set some), then
      // chunk by chunk, waiting for onWritable whenever uWS reports backpressure.
      for (let r = await it.next(); r.done !== true; r = await it.next()) {
        if (this.finished) return;
        const chunk = r.value;
        let drained = true;
        this.res.cork(() => {
          if (!this.headersSent) this.writeHead(uRes);
          drained = this.res.write(chunk);
        });
        if (!drained) await this.writable();
        if (this.finished) return;
      }
      this.end(uRes, undefined);
    } finally {
      await it?.return?.().catch(() => {});
    }
  }

  /**
   * Something failed outside the Connect handler's own error handling: a Connect error
   * response if nothing was sent yet, else cut the connection so that the client cannot
   * mistake a truncated stream for a complete one.
   */
  fail(e: unknown): void {
    if (this.finished) return;
    if (this.headersSent) {
      this.finished = true;
      this.res.close();
      return;
    }
    const error = e instanceof ConnectError ? e : new ConnectError("internal error", Code.Internal);
    const header = new Headers({ "content-type": "application/json" });
    this.end({ status: codeToHttpStatus(error.code), header }, errorToJsonBytes(error, {}));
  }

  private end(uRes: UniversalServerResponse, body: Uint8Array | string | undefined): void {
    if (this.finished) return;
    this.finished = true;
    // A body we stopped reading (too big, or the handler did not need it) would have to
    // be read and thrown away to reuse the connection: close it instead.
    // Connect asks for it too when a client tried full-duplex over HTTP/1.1.
    const close =
      !this.requestComplete ||
      uRes.header?.get("connection")?.toLowerCase() === "close" ||
      this.closeConnections?.() === true;
    this.res.cork(() => {
      if (!this.headersSent) this.writeHead(uRes);
      this.res.end(body, close);
    });
  }

  private writeHead(uRes: UniversalServerResponse): void {
    this.headersSent = true;
    this.res.writeStatus(statusLine(uRes.status));
    uRes.header?.forEach((value, key) => {
      // uWS writes its own framing headers.
      if (key === "content-length" || key === "transfer-encoding" || key === "connection") return;
      this.res.writeHeader(key, value);
    });
  }

  private writable(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.finished) return resolve();
      this.writableWaiter = resolve;
      if (this.watchingWritable) return;
      this.watchingWritable = true;
      this.res.onWritable(() => {
        // While an onWritable handler is registered, uWS leaves draining its backpressure
        // buffer to the next write. An empty cork/uncork is such a write: without it, the
        // rest of a large chunk would sit in the buffer until the stream's next chunk.
        // uWS keeps calling this until the buffer is empty.
        this.res.cork(() => {});
        this.wakeWritable();
        return true;
      });
    });
  }

  private wakeWritable(): void {
    const w = this.writableWaiter;
    this.writableWaiter = undefined;
    w?.();
  }
}

/**
 * The request body as an async iterable of copied chunks (uWS reuses and neuters the
 * ArrayBuffer it hands to onData). Enforces the body size limit: past it, the iterator
 * throws `resource_exhausted`, which the Connect handler turns into a protocol error.
 * Memory is bounded by the limit, so there is no read pause/resume.
 */
class RequestBody implements AsyncIterable<Uint8Array> {
  private readonly chunks: Uint8Array[] = [];
  private received = 0;
  private ended = false;
  private failure: ConnectError | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly call: UwsCall,
    private readonly limit: number,
    header: Headers,
  ) {
    const length = header.get("content-length");
    if (length !== null && Number(length) > limit) {
      this.failure = tooLarge(limit);
    } else if ((length === null || Number(length) === 0) && !header.has("transfer-encoding")) {
      // No body: uWS may never call onData.
      this.ended = true;
      call.requestComplete = true;
    }
    call.onAbort(() => {
      this.failure ??= new ConnectError("the client closed the connection", Code.Canceled);
      this.notify();
    });
  }

  push(chunk: ArrayBuffer, isLast: boolean): void {
    if (isLast) {
      this.ended = true;
      this.call.requestComplete = true;
    }
    if (this.failure === undefined && chunk.byteLength > 0) {
      this.received += chunk.byteLength;
      if (this.received > this.limit) {
        this.failure = tooLarge(this.limit);
        this.chunks.length = 0;
      } else {
        this.chunks.push(new Uint8Array(chunk.slice(0)));
      }
    }
    this.notify();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      const chunk = this.chunks.shift();
      if (chunk !== undefined) {
        yield chunk;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }
}

function tooLarge(limit: number): ConnectError {
  return new ConnectError(`request body is larger than ${limit} bytes`, Code.ResourceExhausted);
}

function statusLine(status: number): string {
  const reason = STATUS_CODES[status];
  return reason === undefined ? String(status) : `${status} ${reason}`;
}
