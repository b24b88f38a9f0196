/**
 * Spans and latency of backend calls (Cassandra, Postgres, Redis, etcd), with the
 * OpenTelemetry database conventions (`db.system.name`, `db.operation.name`,
 * `db.namespace`, `db.collection.name`, `db.query.text`, `db.operation.batch.size`).
 *
 * The official instrumentations (ioredis, pg, cassandra-driver) patch modules as they
 * load, which under ESM needs import-in-the-middle loader hooks stacked on tsx's own
 * loader, and they trace every command without knowing our batches. So the adapters
 * wrap their own calls here instead: a span only under a recording parent (an RPC
 * handler or a batch span), a latency record always when metrics are on, nothing at
 * all (one branch) when both are off.
 */
import { context, SpanKind, trace, ROOT_CONTEXT, type Attributes } from "@opentelemetry/api";
import { backendAttributes, instruments } from "./metrics.js";
import { endSpan, recordingParent, sampleNewTrace, tracing } from "./tracing.js";

export type BackendSystem = "cassandra" | "postgresql" | "redis" | "etcd";

export interface BackendCallOptions {
  /** More span attributes (namespace, collection, query text, batch size), made only when traced. */
  attributes?: () => Attributes;
  /**
   * Background calls (etcd registrations): without a recording parent the call is a
   * trace of its own (sampled like a new message trace), and makes no ambient context
   * (nothing is called under it).
   */
  root?: boolean;
}

/**
 * Runs one backend call, traced and measured as `operation` of `system` (a function is
 * only called when something is on).
 */
export function backendCall<T>(system: BackendSystem, op: string | (() => string), fn: () => Promise<T>, o?: BackendCallOptions): Promise<T> {
  const t = tracing();
  const m = instruments();
  if (!t && !m.enabled) return fn();
  const operation = typeof op === "string" ? op : op();
  const parent = t ? (recordingParent() ?? (o?.root && sampleNewTrace() ? ROOT_CONTEXT : undefined)) : undefined;
  const span =
    parent &&
    t!.startSpan(
      `${operation}`,
      { kind: SpanKind.CLIENT, attributes: { ...backendAttributes(system, operation), ...o?.attributes?.() }, root: parent === ROOT_CONTEXT },
      parent,
    );
  const started = performance.now();
  const done = (err?: unknown) => {
    if (m.enabled) {
      m.backendDuration.record(performance.now() - started, backendAttributes(system, operation));
      if (err !== undefined) m.countError("backend", system);
    }
    endSpan(span, err);
  };
  const run = span && parent !== ROOT_CONTEXT ? () => context.with(trace.setSpan(ROOT_CONTEXT, span), fn) : fn;
  return run().then(
    (v) => {
      done();
      return v;
    },
    (err: unknown) => {
      done(err);
      throw err;
    },
  );
}

const operations = new Map<string, string>();

/**
 * `SELECT accounts`, `INSERT messages`, `BEGIN`: the operation of a SQL or CQL statement
 * (a bounded set: the code's own statement texts, so it is cached by text).
 */
export function statementOperation(text: string): string {
  let op = operations.get(text);
  if (op === undefined) {
    op = parseOperation(text);
    if (operations.size >= 2000) operations.clear();
    operations.set(text, op);
  }
  return op;
}

function parseOperation(text: string): string {
  const s = text.trimStart();
  const verb = /^[A-Za-z]+/.exec(s)?.[0]?.toUpperCase() ?? "QUERY";
  const table =
    verb === "SELECT" || verb === "DELETE"
      ? /\bFROM\s+([\w."]+)/i.exec(s)?.[1]
      : verb === "INSERT"
        ? /\bINTO\s+([\w."]+)/i.exec(s)?.[1]
        : verb === "UPDATE"
          ? /^UPDATE\s+([\w."]+)/i.exec(s)?.[1]
          : undefined;
  if (!table) return verb;
  const name = table.replaceAll('"', "");
  return `${verb} ${name.slice(name.lastIndexOf(".") + 1)}`;
}
