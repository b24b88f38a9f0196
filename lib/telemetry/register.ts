/**
 * Telemetry for any entry point, loaded before it:
 *
 *   node --import tsx --import ./lib/telemetry/register.ts services/router/src/main.ts
 *
 * Reads PARLEY_TRACING, OTEL_EXPORTER_OTLP_ENDPOINT, PARLEY_METRICS, ... (see
 * lib/telemetry/config.ts) from the environment, like an entry point's `loadConfig`,
 * names the service after the entry point, and flushes the spans when the process
 * ends by itself. An entry point that calls `startTelemetry` too gets this instance.
 */
import { createLogger } from "../logger.js";
import { processKind, telemetryConfig } from "./config.js";
import { startTelemetry } from "./telemetry.js";

const kind = processKind(process.argv[1]);
const cfg = telemetryConfig(process.env, kind);
const telemetry = startTelemetry(cfg, { logger: createLogger(`${kind}-telemetry`, process.env.PARLEY_LOG_LEVEL?.trim() || "info") });
process.once("beforeExit", () => void telemetry.shutdown());
