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
  /**
   * argon2id cost (`PARLEY_PASSWORD_HASH_MEMORY_KIB`, `PARLEY_PASSWORD_HASH_ITERATIONS`):
   * the OWASP minimum by default. Lower values exist for tests and benchmarks that sign
   * thousands of accounts up; never lower them in production.
   */
  passwordHashMemoryKib: number;
  passwordHashIterations: number;
  accessTokenTtlSeconds: number;
  refreshTokenTtlSeconds: number;
  /** `PARLEY_CONTACTS_MAX`: the most contacts one user may have. */
  contactsMax: number;
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
    passwordHashMemoryKib: int(env, "PARLEY_PASSWORD_HASH_MEMORY_KIB", 19456, 1024, 4 * 1024 * 1024),
    passwordHashIterations: int(env, "PARLEY_PASSWORD_HASH_ITERATIONS", 2, 1, 100),
    accessTokenTtlSeconds: int(env, "PARLEY_ACCESS_TOKEN_TTL_SECONDS", 15 * 60, 1, 24 * 3600),
    refreshTokenTtlSeconds: int(env, "PARLEY_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600, 1, 365 * 24 * 3600),
    contactsMax: int(env, "PARLEY_CONTACTS_MAX", 5_000, 1, 1_000_000),
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

