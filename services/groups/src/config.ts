import { join } from "node:path";
import { envInt, envPort, envString, type Env } from "../../../lib/env.js";
import { postgresUrlFromEnv } from "../../../lib/sql.js";

export interface GroupsConfig {
  host: string;
  port: number;
  /** PGlite directory when no shared database is passed in. */
  dataDir: string;
  /** `PARLEY_POSTGRES_URL`: a Postgres server instead of PGlite. */
  postgresUrl: string | undefined;
  /** `PARLEY_ROUTER_URL`: the router, when there is no discovery (changes are published to it). */
  routerUrl: string;
  /** `PARLEY_GROUP_MEMBER_CAP`: most active members of one group. */
  memberCap: number;
  /** `PARLEY_GROUPS_OUTBOX_INTERVAL_MS`: how often unpublished changes are retried (base of the backoff). */
  outboxIntervalMs: number;
  /** `PARLEY_GROUPS_PUBLISH_TIMEOUT_MS`: deadline of one ApplyConversationChange call. */
  publishTimeoutMs: number;
  logLevel: string;
}

export function loadConfig(env: Env): GroupsConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_GROUPS_PORT", 7105),
    dataDir: join(envString(env, "PARLEY_DATA_DIR", "data"), "groups"),
    postgresUrl: postgresUrlFromEnv(env),
    routerUrl: envString(env, "PARLEY_ROUTER_URL", "http://127.0.0.1:7102"),
    memberCap: envInt(env, "PARLEY_GROUP_MEMBER_CAP", 100_000, 2, 10_000_000),
    outboxIntervalMs: envInt(env, "PARLEY_GROUPS_OUTBOX_INTERVAL_MS", 1000, 1, 3_600_000),
    publishTimeoutMs: envInt(env, "PARLEY_GROUPS_PUBLISH_TIMEOUT_MS", 5000, 1, 600_000),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
