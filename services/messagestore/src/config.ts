import { join } from "node:path";
import { envPort, envString, type Env } from "../../../lib/env.js";

export interface MessageStoreConfig {
  host: string;
  /** gRPC port (0 picks a free one). */
  port: number;
  /** PGlite directory when no shared database is passed in (`<PARLEY_DATA_DIR>/messagestore`). */
  dataDir: string;
  logLevel: string;
}

/** The message store's configuration from environment variables, with defaults and checks. */
export function loadConfig(env: Env): MessageStoreConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_MESSAGESTORE_PORT", 7103),
    dataDir: join(envString(env, "PARLEY_DATA_DIR", "data"), "messagestore"),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
