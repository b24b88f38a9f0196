/**
 * Parley's metrics (OpenTelemetry sdk-metrics, read as Prometheus text by `/metrics`).
 * Hot paths never build attribute objects: counters that change per frame are plain
 * numbers the code keeps anyway (GatewayCore.stats), read by observable instruments at
 * scrape time; histograms record once per message, batch or backend call with cached
 * attribute sets. Without a meter provider every instrument is a no-op and `enabled` is
 * false, so callers can skip even the measurement (a clock read).
 */
import { metrics, type Attributes, type Counter, type Histogram, type Meter } from "@opentelemetry/api";

/** Histogram buckets in milliseconds (latencies of calls and deliveries). */
export const LATENCY_BUCKETS_MS = [0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
/** Buckets of fan-out sizes (gateways per message). */
export const FANOUT_BUCKETS = [0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128];
/** Buckets of batch sizes (items per batched call or insert; 256 is the usual cap). */
export const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export interface Instruments {
  readonly enabled: boolean;
  /** `parley.rpc.server.duration_ms`: served gRPC calls by `rpc.method` and `rpc.response.status_code`. */
  readonly rpcServerDuration: Histogram;
  /** `parley.backend.duration_ms`: calls to Cassandra, Postgres, Redis and etcd, by `db.system.name` and `db.operation.name`. */
  readonly backendDuration: Histogram;
  /** `parley.delivery.latency_ms`: send received at the sender's gateway → frame written on a receiving gateway (per envelope). */
  readonly deliveryLatency: Histogram;
  /** `parley.fanout.gateways`: gateways a stored message was delivered to (envelopes per message). */
  readonly fanoutGateways: Histogram;
  /** Counts an error by where it was seen (`rpc`, `frame`, `backend`) and its code. */
  countError(where: string, code: string): void;
  /**
   * `parley.batch.size`: items per batch of a hot path (`parley.batch`: "send batch",
   * "store batch", "deliver batch", "write batch"), which says how much a hop's fixed
   * cost is shared at the current load.
   */
  recordBatch(name: string, size: number): void;
}

/** What a gateway exposes for its gauges and counters (read at scrape time). */
export interface GatewayMetricsSource {
  gatewayId: string;
  stats(): { connections: number; framesIn: number; framesOut: number; sendsIn: number; framesDelivered: number };
}

const gatewaySources = new Set<GatewayMetricsSource>();

/** Adds a gateway to the gateway metrics; returns its removal. */
export function observeGateway(source: GatewayMetricsSource): () => void {
  gatewaySources.add(source);
  return () => void gatewaySources.delete(source);
}

function build(meter: Meter, enabled: boolean): Instruments {
  const errors: Counter = meter.createCounter("parley.errors", { description: "Errors by where they were seen (rpc: served calls; frame: error frames to clients; backend: failed backend calls) and code" });
  const errorAttrs = new Map<string, Attributes>();
  const batchSize: Histogram = meter.createHistogram("parley.batch.size", {
    description: "Items per batch of a hot path (send, store, deliver batches; message store inserts)",
    advice: { explicitBucketBoundaries: BATCH_BUCKETS },
  });
  const batchAttrs = new Map<string, Attributes>();
  return {
    enabled,
    rpcServerDuration: meter.createHistogram("parley.rpc.server.duration_ms", {
      unit: "ms",
      description: "Served gRPC calls (internal API) by method and status",
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS_MS },
    }),
    backendDuration: meter.createHistogram("parley.backend.duration_ms", {
      unit: "ms",
      description: "Calls to the backends (Cassandra, Postgres, Redis, etcd) by system and operation",
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS_MS },
    }),
    deliveryLatency: meter.createHistogram("parley.delivery.latency_ms", {
      unit: "ms",
      description: "End-to-end delivery: send received at the sender's gateway until the frame was written on the receiving gateway (per envelope; wall clocks of two hosts)",
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS_MS },
    }),
    fanoutGateways: meter.createHistogram("parley.fanout.gateways", {
      description: "Gateways a stored message was delivered to (envelopes per message)",
      advice: { explicitBucketBoundaries: FANOUT_BUCKETS },
    }),
    recordBatch(name, size) {
      let attrs = batchAttrs.get(name);
      if (!attrs) batchAttrs.set(name, (attrs = { "parley.batch": name }));
      batchSize.record(size, attrs);
    },
    countError(where, code) {
      const key = `${where}|${code}`;
      let attrs = errorAttrs.get(key);
      if (!attrs) errorAttrs.set(key, (attrs = { "parley.error.source": where, "parley.error.code": code }));
      errors.add(1, attrs);
    },
  };
}

/** The gateway instruments read at scrape time, over every gateway of the process. */
function observeGateways(meter: Meter): void {
  const connections = meter.createObservableGauge("parley.gateway.connections", { description: "Open client connections" });
  const framesIn = meter.createObservableCounter("parley.gateway.frames.received", { description: "Frames received from clients" });
  const framesOut = meter.createObservableCounter("parley.gateway.frames.sent", { description: "Frames written to clients (answers, deliveries, presence, resume)" });
  const sends = meter.createObservableCounter("parley.gateway.messages.received", { description: "Messages (send frames) received from clients and handed to a router" });
  const delivered = meter.createObservableCounter("parley.gateway.messages.delivered", { description: "Frames delivered to client connections from Deliver calls" });
  meter.addBatchObservableCallback(
    (r) => {
      for (const src of gatewaySources) {
        const s = src.stats();
        const attrs = { "parley.gateway.id": src.gatewayId };
        r.observe(connections, s.connections, attrs);
        r.observe(framesIn, s.framesIn, attrs);
        r.observe(framesOut, s.framesOut, attrs);
        r.observe(sends, s.sendsIn, attrs);
        r.observe(delivered, s.framesDelivered, attrs);
      }
    },
    [connections, framesIn, framesOut, sends, delivered],
  );
}

const NOOP = build(metrics.getMeterProvider().getMeter("parley-noop"), false);
let current: Instruments = NOOP;

/** The process's instruments (no-ops until startTelemetry turns metrics on). */
export function instruments(): Instruments {
  return current;
}

/** Called by startTelemetry with the meter of its provider, and with undefined by its shutdown. */
export function installInstruments(meter: Meter | undefined): void {
  if (!meter) {
    current = NOOP;
    return;
  }
  current = build(meter, true);
  observeGateways(meter);
}

const backendAttrs = new Map<string, Attributes>();

/** Cached attributes of one backend operation (a bounded set: the code's own statements). */
export function backendAttributes(system: string, operation: string): Attributes {
  const key = `${system}|${operation}`;
  let attrs = backendAttrs.get(key);
  if (!attrs) backendAttrs.set(key, (attrs = { "db.system.name": system, "db.operation.name": operation }));
  return attrs;
}
