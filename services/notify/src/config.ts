import { envPort, envString, type Env } from "../../../lib/env.js";

export interface NotifyConfig {
  host: string;
  port: number;
  logLevel: string;
}

export function loadConfig(env: Env): NotifyConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_NOTIFY_PORT", 7106),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
