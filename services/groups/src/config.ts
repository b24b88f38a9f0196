import { join } from "node:path";
import { envPort, envString, type Env } from "../../../lib/env.js";
import { postgresUrlFromEnv } from "../../../lib/sql.js";

export interface GroupsConfig {
  host: string;
  port: number;
  /** PGlite directory when no shared database is passed in. */
  dataDir: string;
  /** `PARLEY_POSTGRES_URL`: a Postgres server instead of PGlite. */
  postgresUrl: string | undefined;
  logLevel: string;
}

export function loadConfig(env: Env): GroupsConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_GROUPS_PORT", 7105),
    dataDir: join(envString(env, "PARLEY_DATA_DIR", "data"), "groups"),
    postgresUrl: postgresUrlFromEnv(env),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
