/**
 * The tracing API of Parley's hot paths. Everything here costs one branch when tracing
 * is off (`tracing()` is undefined): no span object, no context lookup, no string.
 *
 * One message is one trace, across batches: an RPC batch mixes many messages, so each
 * batched item (SendRequest, AppendRequest, Envelope) carries its own W3C trace context
 * (`traceparent`/`tracestate` fields), and each hop starts the message's span from it
 * explicitly — never from the ambient (AsyncLocalStorage) context, which under batching
 * would be some other message's. The ambient context is used only below one span: an
 * unbatched RPC's server span, or a batch span, makes its RPC and backend calls children
 * (see `recordingParent`). Batch-level spans are children of their first item's span and
 * link to the others (`inBatchSpan`).
 *
 * Only sampled messages cost spans. A trace starts at the sender's gateway (a share of
 * the sends, PARLEY_TRACING_SAMPLE_PERCENT, or the client's own sampled trace context);
 * every later hop makes spans only for items whose trace context is sampled, and for
 * the others does nothing at all (no span object, no ambient context). So sampling
 * scales the whole cost, down to ~nothing at 0%.
 *
 * The tracer is process state (set by lib/telemetry/telemetry.ts), like OpenTelemetry's
 * own global providers: each process exports its spans once, whatever built them.
 */
import {
  context,
  isSpanContextValid,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type SpanContext,
  type Tracer,
} from "@opentelemetry/api";
import { TraceState } from "@opentelemetry/core";
import { Code, ConnectError } from "@connectrpc/connect";
import { instruments } from "./metrics.js";

export { SpanKind, type Attributes, type Context, type Span, type Tracer };

let tracer: Tracer | undefined;
let sampleShare = 1;

/** The tracer while tracing is on, else undefined: the one check a hot path makes. */
export function tracing(): Tracer | undefined {
  return tracer;
}

/** Set by startTelemetry (and cleared by its shutdown), with the share of new traces kept (0..1). */
export function setTracer(t: Tracer | undefined, share = 1): void {
  tracer = t;
  sampleShare = share;
}

/** Whether a new trace (a send without the client's trace context) is kept. */
export function sampleNewTrace(): boolean {
  return sampleShare >= 1 || (sampleShare > 0 && Math.random() < sampleShare);
}

/** The trace context fields of a batched item (empty strings: none). */
export interface TraceFields {
  traceparent: string;
  tracestate: string;
}

/** Most span links of one batch span (the SDK's default limit). */
const MAX_LINKS = 128;

// version-traceid-parentid-flags; an all-zero id is invalid, version ff is forbidden.
const TRACEPARENT = /^([\da-f]{2})-([\da-f]{32})-([\da-f]{16})-([\da-f]{2})(-.*)?$/;

/** A W3C `traceparent` header value for a span context. */
export function formatTraceparent(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-0${(sc.traceFlags & TraceFlags.SAMPLED).toString(16)}`;
}

/** The fields a batched item carries for `span`. */
export function traceFields(span: Span): TraceFields {
  const sc = span.spanContext();
  return { traceparent: formatTraceparent(sc), tracestate: sc.traceState?.serialize() ?? "" };
}

/** The remote span context of a `traceparent` (and `tracestate`), or undefined when absent or malformed. */
export function parseTraceparent(traceparent: string | null | undefined, tracestate?: string | null): SpanContext | undefined {
  if (!traceparent) return undefined;
  const m = TRACEPARENT.exec(traceparent.trim());
  if (!m || m[1] === "ff" || (m[1] === "00" && m[5] !== undefined)) return undefined;
  const sc: SpanContext = { traceId: m[2]!, spanId: m[3]!, traceFlags: parseInt(m[4]!, 16) & TraceFlags.SAMPLED, isRemote: true };
  if (!isSpanContextValid(sc)) return undefined;
  if (tracestate) sc.traceState = new TraceState(tracestate);
  return sc;
}

/** A context whose parent is the span that `traceparent` names, or undefined. */
export function contextOf(traceparent: string | null | undefined, tracestate?: string | null): Context | undefined {
  const sc = parseTraceparent(traceparent, tracestate);
  return sc && trace.setSpanContext(ROOT_CONTEXT, sc);
}

/** `contextOf` when the trace context is sampled; undefined otherwise (nothing to record under it). */
export function sampledContextOf(traceparent: string | null | undefined, tracestate?: string | null): Context | undefined {
  if (!traceparent) return undefined;
  // Cheap check first: a version-00 traceparent ends with its flags, the sampled bit last.
  if (traceparent.length === 55 && (parseInt(traceparent[54]!, 16) & TraceFlags.SAMPLED) === 0) return undefined;
  const sc = parseTraceparent(traceparent, tracestate);
  return sc && sc.traceFlags & TraceFlags.SAMPLED ? trace.setSpanContext(ROOT_CONTEXT, sc) : undefined;
}

/** A context holding `span` (and nothing ambient). */
export function contextWith(span: Span): Context {
  return trace.setSpan(ROOT_CONTEXT, span);
}

/**
 * Starts a span under `parent` (a new trace when undefined), ignoring the ambient
 * context: message spans always name their parent.
 */
export function startSpan(t: Tracer, name: string, kind: SpanKind, parent: Context | undefined, attributes?: Attributes, links?: Link[]): Span {
  return t.startSpan(name, { kind, attributes, links, root: parent === undefined }, parent ?? ROOT_CONTEXT);
}

/**
 * Starts the span of a batched item from the trace context it carries, when sampled;
 * otherwise no span (undefined): the item is not traced. Never the ambient context: in
 * a batch that is another message's.
 */
export function startItemSpan(t: Tracer, name: string, kind: SpanKind, item: Partial<TraceFields>, attributes?: Attributes): Span | undefined {
  const parent = sampledContextOf(item.traceparent, item.tracestate);
  return parent && t.startSpan(name, { kind, attributes }, parent);
}

/** The gRPC code name of a failure (`unavailable`, ...) for span status and error metrics. */
export function errorCodeName(err: unknown): string {
  return Code[ConnectError.from(err).code]?.toLowerCase() ?? "unknown";
}

/** Ends `span`, as failed when `err` is given. */
export function endSpan(span: Span | undefined, err?: unknown): void {
  if (!span) return;
  if (err !== undefined) {
    const message = err instanceof Error ? err.message : String(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message });
    span.setAttribute("error.type", err instanceof ConnectError ? errorCodeName(err) : err instanceof Error ? err.name : "error");
  }
  span.end();
}

/**
 * The ambient context when its span is still recording, else undefined. RPC client and
 * backend spans are made only under such a parent: work that merely inherited an old
 * context (a loop started by a request that has ended) makes none.
 */
export function recordingParent(): Context | undefined {
  const ctx = context.active();
  return trace.getSpan(ctx)?.isRecording() ? ctx : undefined;
}

/**
 * Runs `fn` with `ctx` as the ambient context; without one, with none (see `detached`).
 */
export function runIn<T>(ctx: Context | undefined, fn: () => T): T {
  return ctx ? context.with(ctx, fn) : detached(fn);
}

/**
 * Runs `fn` with no ambient context. Batch loops (a sequencer's drain, a batcher's queue,
 * fan-out) run in the context of whatever call started them, which may be a span still
 * recording for another message: work for untraced messages must not land under it.
 * Free when nothing is ambient (and while tracing is off).
 */
export function detached<T>(fn: () => T): T {
  return tracer && context.active() !== ROOT_CONTEXT ? context.with(ROOT_CONTEXT, fn) : fn();
}

/**
 * Runs one batch's work in a span that is a child of the first item's context and links
 * to the other items' spans, so each message's trace shows the batch it travelled in.
 * Calls made inside (RPCs, backends) are children of the batch span. Without tracing,
 * or when no item is traced, it just runs `fn`.
 */
export async function inBatchSpan<T>(
  name: string,
  items: readonly (Context | undefined)[],
  fn: () => Promise<T>,
  attributes?: Attributes,
): Promise<T> {
  const t = tracer;
  if (!t) return fn();
  let parent: Context | undefined;
  const links: Link[] = [];
  for (const ctx of items) {
    if (!ctx) continue;
    if (!parent) {
      parent = ctx;
      continue;
    }
    if (links.length >= MAX_LINKS) break;
    const sc = trace.getSpanContext(ctx);
    if (sc) links.push({ context: sc });
  }
  if (!parent) return detached(fn);
  const span = t.startSpan(name, { kind: SpanKind.INTERNAL, attributes: { "parley.batch.size": items.length, ...attributes }, links }, parent);
  try {
    const out = await context.with(trace.setSpan(ROOT_CONTEXT, span), fn);
    span.end();
    return out;
  } catch (err) {
    endSpan(span, err);
    throw err;
  }
}

/** The contexts of batched items that carry sampled trace fields. */
export function itemContexts(items: readonly Partial<TraceFields>[]): (Context | undefined)[] {
  return items.map((i) => sampledContextOf(i.traceparent, i.tracestate));
}

/**
 * Runs a batch RPC of items carrying trace fields (`inBatchSpan` over their contexts):
 * the client span of the RPC is then a child of the batch span. Records the batch's size
 * (`parley.batch.size`) under `name`.
 */
export function tracedBatch<T>(name: string, items: readonly Partial<TraceFields>[], fn: () => Promise<T>): Promise<T> {
  const ins = instruments();
  if (ins.enabled) ins.recordBatch(name, items.length);
  return tracer ? inBatchSpan(name, itemContexts(items), fn) : fn();
}

/** `trace_id`/`span_id` of the active span, for log lines (a pino mixin); {} without one. */
export function traceLogFields(): Record<string, string> {
  if (!tracer) return {};
  const sc = trace.getSpanContext(context.active());
  if (!sc || !isSpanContextValid(sc)) return {};
  return { trace_id: sc.traceId, span_id: sc.spanId };
}
