/**
 * Starts a process's telemetry: the tracer provider (OTLP/HTTP export, or a given
 * exporter in tests) with an AsyncLocalStorage context manager and W3C propagation,
 * and the meter provider read by `/metrics`. Entry points call it once, before they
 * build anything (`lib/telemetry/register.ts` does it for `node --import`).
 */
import { context, metrics, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  AlwaysOnSampler,
  ParentBasedSampler,
  SimpleSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";
import type { Logger } from "../logger.js";
import type { TelemetryConfig } from "./config.js";
import { installInstruments } from "./metrics.js";
import { setTracer } from "./tracing.js";

export interface TelemetryOverrides {
  /** Export spans here instead of OTLP (tests: an InMemorySpanExporter), turning tracing on. */
  spanExporter?: SpanExporter;
  /** Export each span as it ends (tests) instead of in batches. */
  exportEachSpan?: boolean;
  /** Told once per outage when spans cannot be exported (and when they can again). */
  logger?: Logger;
}

export interface Telemetry {
  readonly tracing: boolean;
  readonly metrics: boolean;
  /** Exports the spans ended so far. */
  flush(): Promise<void>;
  /** Flushes and turns everything off again. */
  shutdown(): Promise<void>;
}

let running: Telemetry | undefined;
let prometheus: PrometheusExporter | undefined;
// No otel_scope_* labels: every instrument is Parley's own scope.
const serializer = new PrometheusSerializer(undefined, false, undefined, false, true);

/**
 * Turns telemetry on for this process as configured. Once per process: a second call
 * returns the running one (an entry point may be started with `--import` as well).
 */
export function startTelemetry(cfg: TelemetryConfig, o: TelemetryOverrides = {}): Telemetry {
  if (running) return running;
  const resource = resourceFromAttributes({
    "service.name": cfg.serviceName,
    "service.namespace": "parley",
    ...(cfg.instanceId && { "service.instance.id": cfg.instanceId }),
  });
  const tracingOn = cfg.tracing !== "off" || o.spanExporter !== undefined;
  let tracerProvider: BasicTracerProvider | undefined;
  if (tracingOn) {
    const otlp = o.spanExporter ?? new OTLPTraceExporter({ url: cfg.otlpTracesUrl });
    const exporter = o.logger ? new ReportingExporter(otlp, o.logger, o.spanExporter ? "test exporter" : cfg.otlpTracesUrl) : otlp;
    const processor = o.exportEachSpan
      ? new SimpleSpanProcessor(exporter)
      : new BatchSpanProcessor(exporter, {
          scheduledDelayMillis: cfg.exportDelayMs,
          maxQueueSize: cfg.maxQueueSize,
          maxExportBatchSize: cfg.maxExportBatchSize,
        });
    tracerProvider = new BasicTracerProvider({
      resource,
      // Parley decides which messages start a trace (sampleNewTrace, at the gateway) and
      // makes spans only under sampled parents: the SDK records whatever it is given.
      sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }),
      spanProcessors: [processor],
    });
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(tracerProvider);
    setTracer(tracerProvider.getTracer("parley"), cfg.samplePercent / 100);
  }
  let meterProvider: MeterProvider | undefined;
  if (cfg.metrics) {
    prometheus = new PrometheusExporter({ preventServerStart: true });
    meterProvider = new MeterProvider({ resource, readers: [prometheus] });
    metrics.setGlobalMeterProvider(meterProvider);
    installInstruments(meterProvider.getMeter("parley"));
  }
  let stopping: Promise<void> | undefined;
  const t: Telemetry = {
    tracing: tracingOn,
    metrics: cfg.metrics,
    flush: async () => {
      await tracerProvider?.forceFlush();
    },
    shutdown: () =>
      (stopping ??= (async () => {
        setTracer(undefined);
        installInstruments(undefined);
        prometheus = undefined;
        await tracerProvider?.shutdown().catch(() => {});
        await meterProvider?.shutdown().catch(() => {});
        trace.disable();
        context.disable();
        propagation.disable();
        metrics.disable();
        running = undefined;
      })()),
  };
  running = t;
  return t;
}

/** The Prometheus text exposition of this process's metrics, or undefined when metrics are off. */
export async function metricsText(): Promise<string | undefined> {
  const reader = prometheus;
  if (!reader) return undefined;
  const { resourceMetrics } = await reader.collect();
  return serializer.serialize(resourceMetrics);
}

/**
 * A `/metrics` route for lib/ops-server.ts (`ops.route("/metrics", metricsRoute)`) or any
 * HTTP host: 200 with the text exposition, 404 when metrics are off.
 */
export async function metricsRoute(): Promise<{ status: number; contentType: string; body: string }> {
  const text = await metricsText();
  return text === undefined
    ? { status: 404, contentType: "text/plain; charset=utf-8", body: "metrics are off (PARLEY_METRICS=off)" }
    : { status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: text };
}

/** An exporter that logs the first failure of an outage and the recovery, not every failed export. */
class ReportingExporter implements SpanExporter {
  private failing = false;

  constructor(
    private readonly inner: SpanExporter,
    private readonly logger: Logger,
    private readonly target: string,
  ) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS && !this.failing) {
        this.failing = true;
        this.logger.warn({ err: result.error?.message, target: this.target }, "span export failing; spans are dropped until it succeeds");
      } else if (result.code === ExportResultCode.SUCCESS && this.failing) {
        this.failing = false;
        this.logger.info({ target: this.target }, "span export works again");
      }
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}
