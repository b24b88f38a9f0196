import type { Instance } from "../../../lib/discovery/discovery.js";
import { envInt, envPort, envString, type Env } from "../../../lib/env.js";
import { redisPrefixFrom, redisUrlFrom } from "../../../lib/redis.js";
import { parseGateways } from "../../../lib/discovery/discovery-static.js";

export interface PresenceConfig {
  host: string;
  port: number;
  /**
   * `PARLEY_PRESENCE_TTL_SECONDS` (default 60): a user's entry for a gateway lives this
   * long after the last report listing them. Gateways report every
   * `PARLEY_PRESENCE_REPORT_MS` (default 30 s): keep the TTL about twice that.
   */
  ttlMs: number;
  /** `PARLEY_PRESENCE_DAMP_MS` (default 1000): a change is published once it held this long. */
  dampMs: number;
  /** `PARLEY_PRESENCE_SWEEP_MS` (default 250): the period of the one sweep timer (expiries, damped changes). */
  sweepMs: number;
  /** `PARLEY_REDIS_URL`: presence and the registry live in Redis; unset → in memory (one process). */
  redisUrl: string | undefined;
  /** `PARLEY_REDIS_PREFIX` (default `parley:`): the namespace of the keys. */
  redisPrefix: string;
  /** Gateways known up front when there is no etcd discovery: `id=url,id=url` (`PARLEY_GATEWAYS`). */
  gateways: Instance[];
  logLevel: string;
}

export function loadConfig(env: Env): PresenceConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_PRESENCE_PORT", 7104),
    ttlMs: envInt(env, "PARLEY_PRESENCE_TTL_SECONDS", 60, 1, 86_400) * 1000,
    dampMs: envInt(env, "PARLEY_PRESENCE_DAMP_MS", 1000, 0, 60_000),
    sweepMs: envInt(env, "PARLEY_PRESENCE_SWEEP_MS", 250, 10, 60_000),
    redisUrl: redisUrlFrom(env),
    redisPrefix: redisPrefixFrom(env),
    gateways: parseGateways(env.PARLEY_GATEWAYS),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
