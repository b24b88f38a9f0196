import { pino, type Logger } from "pino";
import { traceLogFields } from "./telemetry/tracing.js";

export type { Logger };

/**
 * The root logger of a process. `PARLEY_LOG_LEVEL` is read by entry points and passed
 * in; tests pass "silent". While tracing is on, a line logged under a span carries its
 * `trace_id` and `span_id` (lib/telemetry/tracing.ts).
 */
export function createLogger(name: string, level = "info"): Logger {
  return pino({ name, level, base: { pid: process.pid }, mixin: traceLogFields });
}
