import { pino, type Logger } from "pino";

export type { Logger };

/**
 * The root logger of a process. `PARLEY_LOG_LEVEL` is read by entry points and passed
 * in; tests pass "silent".
 */
export function createLogger(name: string, level = "info"): Logger {
  return pino({ name, level, base: { pid: process.pid } });
}
