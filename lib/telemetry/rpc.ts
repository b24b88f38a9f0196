/**
 * Tracing and metrics of gRPC calls: W3C trace context in the request metadata
 * (`traceparent`, `tracestate`), a client span per call made under a recording span and a
 * server span per call served. The lean unary path (lib/grpc-unary.ts) calls these
 * helpers directly; connect's general path uses `rpcTracingInterceptor`.
 */
import { context, SpanKind, trace, ROOT_CONTEXT, type Attributes, type Span } from "@opentelemetry/api";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { instruments } from "./metrics.js";
import { endSpan, errorCodeName, formatTraceparent, recordingParent, sampledContextOf, tracing } from "./tracing.js";

/** Probes and tool services: neither traced nor measured. */
export function isQuietService(typeName: string): boolean {
  return typeName === "grpc.health.v1.Health" || typeName.startsWith("grpc.reflection.");
}

function rpcAttributes(service: string, method: string): Attributes {
  return { "rpc.system.name": "grpc", "rpc.method": `${service}/${method}` };
}

/** A client span for a call made under a recording span (else undefined) and the metadata that carries it. */
export function startRpcClientSpan(service: string, method: string): { span: Span; traceparent: string; tracestate: string } | undefined {
  const t = tracing();
  if (!t || isQuietService(service)) return undefined;
  const parent = recordingParent();
  if (!parent) return undefined;
  const span = t.startSpan(`${service}/${method}`, { kind: SpanKind.CLIENT, attributes: rpcAttributes(service, method) }, parent);
  const sc = span.spanContext();
  return { span, traceparent: formatTraceparent(sc), tracestate: sc.traceState?.serialize() ?? "" };
}

/**
 * The server span of a call whose metadata carries a sampled trace context (a traced
 * caller); undefined for any other call: Parley starts traces at the gateway's sends,
 * not per RPC (a batch call of untraced messages makes no span).
 */
export function startRpcServerSpan(service: string, method: string, traceparent: string | null | undefined, tracestate: string | null | undefined): Span | undefined {
  const t = tracing();
  if (!t || !traceparent || isQuietService(service)) return undefined;
  const parent = sampledContextOf(traceparent, tracestate);
  return parent && t.startSpan(`${service}/${method}`, { kind: SpanKind.SERVER, attributes: rpcAttributes(service, method) }, parent);
}

/** Ends an RPC span with the call's gRPC status (0 = OK). */
export function endRpcSpan(span: Span | undefined, status: number, err?: unknown): void {
  if (!span) return;
  span.setAttribute("rpc.response.status_code", status);
  endSpan(span, status === 0 ? undefined : (err ?? new ConnectError("", status)));
}

/** Runs a handler with the server span as its ambient context (so its own calls become children). */
export function runInSpan<T>(span: Span | undefined, fn: () => T): T {
  return span ? context.with(trace.setSpan(ROOT_CONTEXT, span), fn) : fn();
}

const serverAttrs = new Map<string, Attributes>();

/**
 * Records a served call: duration (ms) by method and status, and an error count by code
 * for failures. Attribute sets are cached, so a call allocates nothing here.
 */
export function recordRpcServed(service: string, method: string, status: number, startedMs: number): void {
  const m = instruments();
  if (!m.enabled || isQuietService(service)) return;
  const key = `${service}/${method}|${status}`;
  let attrs = serverAttrs.get(key);
  if (!attrs) {
    attrs = { "rpc.method": `${service}/${method}`, "rpc.response.status_code": status === 0 ? "ok" : errorCodeName(new ConnectError("", status)) };
    serverAttrs.set(key, attrs);
  }
  m.rpcServerDuration.record(performance.now() - startedMs, attrs);
  if (status !== 0) m.countError("rpc", attrs["rpc.response.status_code"] as string);
}

/**
 * Tracing for connect's general paths (streams, compressed calls, interceptor chains,
 * in-process transports): `client` injects the trace context of a client span, `server`
 * continues it in a server span that is ambient while the handler runs. One branch per
 * call when tracing is off.
 */
export function rpcTracingInterceptor(side: "client" | "server"): Interceptor {
  if (side === "client") {
    return (next) => async (req) => {
      const started = startRpcClientSpan(req.service.typeName, req.method.name);
      if (!started) return next(req);
      req.header.set("traceparent", started.traceparent);
      if (started.tracestate) req.header.set("tracestate", started.tracestate);
      try {
        const res = await next(req);
        endRpcSpan(started.span, 0);
        return res;
      } catch (err) {
        endRpcSpan(started.span, ConnectError.from(err).code, err);
        throw err;
      }
    };
  }
  return (next) => async (req) => {
    const service = req.service.typeName;
    const startedMs = performance.now();
    const span = startRpcServerSpan(service, req.method.name, req.header.get("traceparent"), req.header.get("tracestate"));
    try {
      const res = await runInSpan(span, () => next(req));
      endRpcSpan(span, 0);
      recordRpcServed(service, req.method.name, 0, startedMs);
      return res;
    } catch (err) {
      const code = ConnectError.from(err).code;
      endRpcSpan(span, code, err);
      recordRpcServed(service, req.method.name, code, startedMs);
      throw err;
    }
  };
}
