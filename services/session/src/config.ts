import { join } from "node:path";
import { ConfigError, envInt as int, envString as nonEmpty, type Env } from "../../../lib/env.js";
import { postgresUrlFromEnv } from "../../../lib/sql.js";

export { ConfigError, type Env };

export interface SessionConfig {
  /** Address the standalone gRPC server binds. */
  host: string;
  /** gRPC port of the standalone process (0 picks a free one). */
  port: number;
  /** Root data directory; the embedded database lives in `<dataDir>/session`. */
  dataDir: string;
  /** `PARLEY_POSTGRES_URL`: a Postgres server instead of the embedded database. */
  postgresUrl: string | undefined;
  accessTokenTtlSeconds: number;
  refreshTokenTtlSeconds: number;
  logLevel: string;
}

const LOG_LEVELS = new Set(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

/** The session service's settings from the environment: defaults and checks, nothing else. */
export function loadConfig(env: Env): SessionConfig {
  const cfg: SessionConfig = {
    host: nonEmpty(env, "PARLEY_HOST", "127.0.0.1"),
    port: int(env, "PARLEY_SESSION_PORT", 7101, 0, 65535),
    dataDir: nonEmpty(env, "PARLEY_DATA_DIR", "./data"),
    postgresUrl: postgresUrlFromEnv(env),
    accessTokenTtlSeconds: int(env, "PARLEY_ACCESS_TOKEN_TTL_SECONDS", 15 * 60, 1, 24 * 3600),
    refreshTokenTtlSeconds: int(env, "PARLEY_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600, 1, 365 * 24 * 3600),
    logLevel: nonEmpty(env, "PARLEY_LOG_LEVEL", "info"),
  };
  if (!LOG_LEVELS.has(cfg.logLevel)) {
    throw new ConfigError(`PARLEY_LOG_LEVEL: must be one of ${[...LOG_LEVELS].join(", ")}`);
  }
  if (cfg.refreshTokenTtlSeconds <= cfg.accessTokenTtlSeconds) {
    throw new ConfigError("PARLEY_REFRESH_TOKEN_TTL_SECONDS: must be longer than PARLEY_ACCESS_TOKEN_TTL_SECONDS");
  }
  return cfg;
}

/** Where the embedded database of this service lives. */
export function sessionDbDir(cfg: SessionConfig): string {
  return join(cfg.dataDir, "session");
}

