import { ConfigError, envInt, envString, type Env } from "../env.js";

/** What a process exports: traces over OTLP (or nothing), metrics for Prometheus (or nothing). */
export interface TelemetryConfig {
  /** `service.name` of the process's telemetry (`OTEL_SERVICE_NAME`, else the kind of process). */
  serviceName: string;
  /** `service.instance.id` (`PARLEY_INSTANCE_ID` / `PARLEY_GATEWAY_ID`), when known. */
  instanceId: string | undefined;
  /**
   * `PARLEY_TRACING`: `off` (default) or `otlp` (spans to an OTLP/HTTP collector,
   * protobuf encoding). Off, no span is made and nothing is propagated.
   */
  tracing: "off" | "otlp";
  /**
   * The OTLP/HTTP traces URL: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else
   * `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` (default `http://127.0.0.1:4318`).
   */
  otlpTracesUrl: string;
  /** `PARLEY_TRACING_SAMPLE_PERCENT` (0..100, default 100): share of new traces kept; a traced parent's decision is followed. */
  samplePercent: number;
  /** Span batching (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). */
  exportDelayMs: number;
  maxQueueSize: number;
  maxExportBatchSize: number;
  /** `PARLEY_METRICS`: `on` (default: counters and histograms, read by `/metrics`) or `off`. */
  metrics: boolean;
}

/**
 * The telemetry settings of a process, from its environment. `kind` names the process
 * when `OTEL_SERVICE_NAME` does not ("router", "gateway", ...).
 */
export function telemetryConfig(env: Env, kind: string): TelemetryConfig {
  const tracing = envString(env, "PARLEY_TRACING", "off");
  if (tracing !== "off" && tracing !== "otlp") throw new ConfigError(`PARLEY_TRACING: expected off or otlp, got "${tracing}"`);
  const metrics = envString(env, "PARLEY_METRICS", "on");
  if (metrics !== "on" && metrics !== "off") throw new ConfigError(`PARLEY_METRICS: expected on or off, got "${metrics}"`);
  const base = envString(env, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318").replace(/\/+$/, "");
  const otlpTracesUrl = envString(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", `${base}/v1/traces`);
  try {
    new URL(otlpTracesUrl);
  } catch {
    throw new ConfigError(`OTLP traces endpoint: not a URL: "${otlpTracesUrl}"`);
  }
  const maxQueueSize = envInt(env, "OTEL_BSP_MAX_QUEUE_SIZE", 8192, 1, 1_000_000);
  const maxExportBatchSize = envInt(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 1_000_000);
  if (maxExportBatchSize > maxQueueSize) throw new ConfigError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE");
  return {
    serviceName: envString(env, "OTEL_SERVICE_NAME", `parley-${kind}`),
    instanceId: env.PARLEY_INSTANCE_ID?.trim() || env.PARLEY_GATEWAY_ID?.trim() || undefined,
    tracing,
    otlpTracesUrl,
    samplePercent: envInt(env, "PARLEY_TRACING_SAMPLE_PERCENT", 100, 0, 100),
    exportDelayMs: envInt(env, "OTEL_BSP_SCHEDULE_DELAY", 1000, 1, 600_000),
    maxQueueSize,
    maxExportBatchSize,
    metrics: metrics === "on",
  };
}

/** The kind of process an entry point is, from its path (`services/router/src/main.ts` → "router"). */
export function processKind(entry: string | undefined): string {
  const path = (entry ?? "").replaceAll("\\", "/");
  const service = /services\/([a-z]+)\/src\/main\.[jt]s$/.exec(path);
  if (service) return service[1]!;
  if (/gateway\/src\/main\.[jt]s$/.test(path)) return "gateway";
  if (/tools\/platform\/main\.[jt]s$/.test(path)) return "platform";
  return "process";
}
