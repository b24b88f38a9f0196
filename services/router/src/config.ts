import type { Instance } from "../../../lib/discovery/discovery.js";
import { parseGateways } from "../../../lib/discovery/discovery-static.js";
import { envInt, envPort, envString, type Env } from "../../../lib/env.js";
import { redisPrefixFrom, redisUrlFrom } from "../../../lib/redis.js";

export interface RouterConfig {
  host: string;
  port: number;
  groupsUrl: string;
  messagestoreUrl: string;
  notifyUrl: string;
  /** Gateways known up front (static discovery): `id=url,id=url`. */
  gateways: Instance[];
  membershipCacheEntries: number;
  /**
   * How long cached membership lives without an explicit invalidation. Changes are
   * invalidated at once on the conversation's owning router; these bound how stale a
   * non-owner's copy can be (it only serves the conversation after routers came or went).
   */
  groupMembershipTtlMs: number;
  directMembershipTtlMs: number;
  /** `PARLEY_ROUTER_NOTIFY_QUEUE_MAX`: most conversations whose push summaries wait for notify (the oldest are dropped beyond). */
  notifyQueueMax: number;
  /** `PARLEY_ROUTER_NOTIFY_RETRY_MS`: first retry delay after notify failed (doubling up to 30 s). */
  notifyRetryMs: number;
  /** `PARLEY_REDIS_URL`: the connection registry the gateways write, in Redis; unset → in memory (one process). */
  redisUrl: string | undefined;
  redisPrefix: string;
  logLevel: string;
}

export function loadConfig(env: Env): RouterConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_ROUTER_PORT", 7102),
    groupsUrl: env.PARLEY_GROUPS_URL ?? "http://127.0.0.1:7105",
    messagestoreUrl: env.PARLEY_MESSAGESTORE_URL ?? "http://127.0.0.1:7103",
    notifyUrl: env.PARLEY_NOTIFY_URL ?? "http://127.0.0.1:7106",
    gateways: parseGateways(env.PARLEY_GATEWAYS),
    membershipCacheEntries: envInt(env, "PARLEY_ROUTER_MEMBERSHIP_CACHE", 100_000, 1, 100_000_000),
    groupMembershipTtlMs: envInt(env, "PARLEY_ROUTER_GROUP_MEMBERSHIP_TTL_MS", 30_000, 100, 3_600_000),
    directMembershipTtlMs: envInt(env, "PARLEY_ROUTER_DIRECT_MEMBERSHIP_TTL_MS", 600_000, 100, 86_400_000),
    notifyQueueMax: envInt(env, "PARLEY_ROUTER_NOTIFY_QUEUE_MAX", 100_000, 1, 10_000_000),
    notifyRetryMs: envInt(env, "PARLEY_ROUTER_NOTIFY_RETRY_MS", 200, 1, 60_000),
    redisUrl: redisUrlFrom(env),
    redisPrefix: redisPrefixFrom(env),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
