import { envInt, envPort, envString, type Env } from "../../../lib/env.js";
import { redisPrefixFrom, redisUrlFrom } from "../../../lib/redis.js";

export interface PresenceConfig {
  host: string;
  port: number;
  /** A user stays online this long after the last gateway report that listed them. */
  ttlMs: number;
  /** `PARLEY_REDIS_URL`: presence lives in Redis; unset → in memory (one presence instance only). */
  redisUrl: string | undefined;
  /** `PARLEY_REDIS_PREFIX` (default `parley:`): the namespace of the keys. */
  redisPrefix: string;
  logLevel: string;
}

export function loadConfig(env: Env): PresenceConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_PRESENCE_PORT", 7104),
    ttlMs: envInt(env, "PARLEY_PRESENCE_TTL_SECONDS", 60, 1, 86_400) * 1000,
    redisUrl: redisUrlFrom(env),
    redisPrefix: redisPrefixFrom(env),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
