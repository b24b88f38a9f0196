import type { ChainableCommander, Redis } from "ioredis";
import { BackgroundPipelines, FORGET_STALE_FIELDS, closeRedis, execPipeline } from "../../../lib/redis.js";
import type { Presence, PresenceStore } from "./presence-store.js";

/**
 * Presence on Redis (ioredis), with the semantics of the memory store: a user is online
 * while at least one gateway's latest report, younger than the TTL, lists them.
 *
 * Layout: one hash per user, `{prefix}presence:{userId}`:
 * - `gw:{gatewayId}` → time (ms) of that gateway's last report listing the user online;
 * - `last` → when the user was last seen online (ms).
 * The times come from the caller (`nowMs`, the presence service's clock), so expiry is
 * decided by the same clock as in memory and tests need no sleeping. A gateway that dies
 * stops reporting: its fields expire when read and are deleted lazily then (a
 * conditional delete: only if still holding the expired time, so a newer report is never
 * undone). The hash has no key TTL: `last` is kept like the memory store keeps it.
 *
 * Round trips: `report` is one pipeline for all users of the report (HSET per online
 * user, a small single-key script per offline user); `get` is one pipeline of HGETALL.
 */
export interface RedisPresenceOptions {
  /** Namespace of every key (e.g. `parley:`); tests use a random one. */
  prefix?: string;
}

const GW = "gw:";
const LAST = "last";

const SCRIPTS = {
  /** KEYS[1] user hash; ARGV: gateway field, nowMs. A user the gateway held goes offline there: last seen now. */
  parleyPresenceOffline: `
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], '${LAST}', ARGV[2]) end
return 0`,
  /** KEYS[1] user hash; ARGV: field, value pairs: deletes each field still holding that (expired) value. */
  parleyPresenceForget: FORGET_STALE_FIELDS,
} as const;

type Scripted = { [K in keyof typeof SCRIPTS]: (key: string, ...args: (string | number)[]) => unknown };

export class RedisPresenceStore implements PresenceStore {
  private readonly prefix: string;
  private readonly cleanups = new BackgroundPipelines();

  /** Takes ownership of `redis` (closed by close()). */
  constructor(
    private readonly redis: Redis,
    private readonly ttlMs: number,
    o: RedisPresenceOptions = {},
  ) {
    this.prefix = o.prefix ?? "parley:";
    for (const [name, lua] of Object.entries(SCRIPTS)) redis.defineCommand(name, { numberOfKeys: 1, lua });
  }

  private key(userId: string): string {
    return `${this.prefix}presence:${userId}`;
  }

  private pipeline(): ChainableCommander & Scripted {
    return this.redis.pipeline() as ChainableCommander & Scripted;
  }

  async report(gatewayId: string, online: readonly string[], offline: readonly string[], nowMs: number): Promise<void> {
    if (online.length + offline.length === 0) return;
    const field = GW + gatewayId;
    const p = this.pipeline();
    for (const userId of online) p.hset(this.key(userId), field, nowMs, LAST, nowMs);
    for (const userId of offline) p.parleyPresenceOffline(this.key(userId), field, nowMs);
    await execPipeline(p, "presence report");
  }

  async get(userIds: readonly string[], nowMs: number): Promise<Presence[]> {
    if (userIds.length === 0) return [];
    const p = this.pipeline();
    for (const userId of userIds) p.hgetall(this.key(userId));
    const replies = await execPipeline(p, "presence get");
    const expired = new Map<string, string[]>();
    const out = userIds.map((userId, i): Presence => {
      const hash = (replies[i] ?? {}) as Record<string, string>;
      let online = false;
      for (const [field, value] of Object.entries(hash)) {
        if (!field.startsWith(GW)) continue;
        if (nowMs - Number(value) < this.ttlMs) online = true;
        else expired.set(userId, [...(expired.get(userId) ?? []), field, value]);
      }
      return { userId, state: online ? "online" : "offline", lastSeenMs: online ? nowMs : Number(hash[LAST] ?? 0) };
    });
    if (expired.size > 0) this.forget(expired);
    return out;
  }

  /** Deletes expired gateway fields in the background (one pipeline); a failure only leaves them for the next reader. */
  private forget(expired: Map<string, string[]>): void {
    const p = this.pipeline();
    for (const [userId, pairs] of expired) p.parleyPresenceForget(this.key(userId), ...pairs);
    this.cleanups.run(p, "presence cleanup");
  }

  async close(): Promise<void> {
    await this.cleanups.settled();
    await closeRedis(this.redis);
  }
}
