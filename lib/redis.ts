import { Code, ConnectError } from "@connectrpc/connect";
import { Redis, ReplyError } from "ioredis";
import type { ChainableCommander } from "ioredis";
import { ConfigError, type Env } from "./env.js";
import type { Logger } from "./logger.js";
import { backendCall } from "./telemetry/backend.js";

/**
 * The Redis client of the registry and presence adapters, set up to fail fast: while the
 * server is unreachable, calls reject at once (no offline queue) and a reply that takes
 * longer than the command timeout rejects, so callers degrade (gateways close new sockets
 * with 4013, routers treat recipients as unreachable) instead of hanging. ioredis keeps
 * reconnecting in the background and calls succeed again once the server is back.
 */
export interface RedisClientOptions {
  /** A reply slower than this rejects (ms). */
  commandTimeoutMs?: number;
  /** Shown in CLIENT LIST. */
  name?: string;
  logger?: Logger;
}

export function createRedisClient(url: string, o: RedisClientOptions = {}): Redis {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: o.commandTimeoutMs ?? 2000,
    connectTimeout: 2000,
    // Reconnect quickly at first, then every second at most: outages end when the server is back.
    retryStrategy: (times) => Math.min(times * 50, 1000),
    connectionName: o.name,
    disableClientInfo: true,
  });
  let down = false;
  redis.on("error", (err: Error) => {
    if (down) return; // one line per outage, not one per reconnect attempt
    down = true;
    o.logger?.warn({ err: err.message }, "redis unreachable; retrying in the background");
  });
  redis.on("ready", () => {
    if (!down) return;
    down = false;
    o.logger?.info("redis reachable again");
  });
  return redis;
}

/**
 * Creates a client and waits for its first connection. A server that is down at start
 * is not fatal: the client keeps reconnecting and calls fail fast meanwhile.
 */
export async function openRedis(url: string, o: RedisClientOptions = {}): Promise<Redis> {
  const redis = createRedisClient(url, o);
  try {
    await redis.connect();
  } catch {
    // Logged by the error listener; ioredis retries by itself.
  }
  return redis;
}

/** Closes a client: politely when connected, at once otherwise. */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === "ready") {
    try {
      await redis.quit();
      return;
    } catch {
      // fall through
    }
  }
  redis.disconnect();
}

/** A Redis failure as an RPC error: Unavailable when the server could not be reached, Internal when it refused the command. */
export function redisError(err: unknown, what: string): ConnectError {
  if (err instanceof ConnectError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = err instanceof ReplyError ? Code.Internal : Code.Unavailable;
  return new ConnectError(`${what}: redis: ${message}`, code, undefined, undefined, err);
}

/**
 * Runs a pipeline (one round trip) and returns its replies; the first failure rejects.
 * Every Redis call of the adapters goes through here: traced (a span under the caller's
 * span) and measured as operation `what` (lib/telemetry/backend.ts).
 */
export async function execPipeline(pipeline: ChainableCommander, what: string): Promise<unknown[]> {
  let results: [Error | null, unknown][] | null;
  try {
    results = await backendCall("redis", what, () => pipeline.exec(), {
      attributes: () => ({ "db.operation.batch.size": pipeline.length }),
    });
  } catch (err) {
    throw redisError(err, what);
  }
  if (!results) throw redisError(new Error("pipeline discarded"), what);
  return results.map(([err, reply]) => {
    if (err) throw redisError(err, what);
    return reply;
  });
}

/** `PARLEY_REDIS_URL` (redis:// or rediss://), or undefined when unset: the embedded adapters then. */
export function redisUrlFrom(env: Env): string | undefined {
  const raw = env.PARLEY_REDIS_URL?.trim();
  if (!raw) return undefined;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`PARLEY_REDIS_URL: not a URL: "${raw}"`);
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    throw new ConfigError(`PARLEY_REDIS_URL: expected redis:// or rediss://, got "${url.protocol}"`);
  }
  return raw;
}

/** `PARLEY_REDIS_PREFIX`: the namespace of every key, so deployments (or tests) can share a server. */
export function redisPrefixFrom(env: Env): string {
  return env.PARLEY_REDIS_PREFIX?.trim() || "parley:";
}

/**
 * Best-effort pipelines run in the background (lazy cleanups): a failure only leaves
 * work for the next reader, and `settled()` lets close() wait for what is in flight.
 */
export class BackgroundPipelines {
  private readonly pending = new Set<Promise<void>>();

  run(p: ChainableCommander, what: string): void {
    const done = execPipeline(p, what).then(
      () => {},
      () => {},
    );
    this.pending.add(done);
    void done.finally(() => this.pending.delete(done));
  }

  async settled(): Promise<void> {
    await Promise.all(this.pending);
  }
}

/**
 * Lua: KEYS[1] a hash; ARGV field, value pairs. Deletes each field that still holds the
 * value a reader saw expire (a newer write is left alone). Used for lazy cleanup.
 */
export const FORGET_STALE_FIELDS = `
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return n`;
