import { join } from "node:path";

export interface MessageStoreConfig {
  host: string;
  /** gRPC port (0 picks a free one). */
  port: number;
  /** PGlite directory when no shared database is passed in (`<PARLEY_DATA_DIR>/messagestore`). */
  dataDir: string;
  logLevel: string;
}

/** The message store's configuration from environment variables, with defaults and checks. */
export function loadConfig(env: Record<string, string | undefined>): MessageStoreConfig {
  const portText = env.PARLEY_MESSAGESTORE_PORT ?? "7103";
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new Error(`PARLEY_MESSAGESTORE_PORT: bad port ${JSON.stringify(portText)}`);
  }
  const dataDir = env.PARLEY_DATA_DIR || "data";
  return {
    host: env.PARLEY_HOST ?? "127.0.0.1",
    port,
    dataDir: join(dataDir, "messagestore"),
    logLevel: env.PARLEY_LOG_LEVEL ?? "info",
  };
}
