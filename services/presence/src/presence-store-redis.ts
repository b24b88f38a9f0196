import type { ChainableCommander, Redis } from "ioredis";
import { closeRedis, execPipeline } from "../../../lib/redis.js";
import type { LiveState, Presence, PresenceState, PresenceStore, PresenceStoreStats, PresenceTiming, UserReport } from "./presence-store.js";

/**
 * Presence on Redis (ioredis), with the rules of presence-rules.ts (the memory adapter
 * runs the same rules in TypeScript; the contract suite holds both to them).
 *
 * Layout:
 * - one hash per user, `{prefix}presence:{userId}`: `g:{gatewayId}` → `{o|a}|{seenMs}`
 *   (that gateway's state of the user and its last report), `cur` / `chg` (computed
 *   state and when it changed), `pub` (published state), `last` (last seen, ms).
 *   States are one letter: o online, a away, f offline.
 * - one sorted set `{prefix}presence:due`: userId scored by its next deadline (the
 *   earliest expiry of its entries, or the end of a damping window). The sweep reads
 *   the due members; nothing else runs on a timer.
 *
 * Every change to a user is one script call (`parleyPresenceApply`) that reads the hash,
 * applies the report, expires entries, decides damping and publication, and re-scores
 * the user in the due set, atomically: several presence instances may sweep at once and
 * exactly one publishes a given change. The script touches two keys (the user's hash and
 * the due set): fine on one Redis server (or a primary with replicas); Redis Cluster
 * would need the due set split by hash tag per slot group (not done).
 *
 * Times come from the caller (`nowMs`, the service's clock), so tests need no sleeping.
 * Round trips: `report` one pipeline (one script call per user), `get` one pipeline
 * (HMGET per user), `sweep` one ZRANGEBYSCORE plus one pipeline of script calls.
 */
export interface RedisPresenceOptions {
  /** Namespace of every key (e.g. `parley:`); tests use a random one. */
  prefix?: string;
}

const APPLY = `
local key, zkey, user = KEYS[1], KEYS[2], ARGV[1]
local now, ttl, damp = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local op, field = ARGV[5], ARGV[6]
local h = redis.call('HGETALL', key)
if #h == 0 and op == 'f' then return false end
local cur, pub, chg, last = 'f', 'f', 0, 0
local entries = {}
for i = 1, #h, 2 do
  local f, v = h[i], h[i + 1]
  if f == 'cur' then cur = v
  elseif f == 'pub' then pub = v
  elseif f == 'chg' then chg = tonumber(v)
  elseif f == 'last' then last = tonumber(v)
  elseif string.sub(f, 1, 2) == 'g:' then entries[f] = v end
end
local goneSeen = 0
if op == 'o' or op == 'a' then
  entries[field] = op .. '|' .. ARGV[2]
  redis.call('HSET', key, field, entries[field])
elseif op == 'f' then
  if entries[field] then
    entries[field] = nil
    redis.call('HDEL', key, field)
    goneSeen = now
  end
end
local best, nextExp, expiredAt = 'f', nil, 0
for f, v in pairs(entries) do
  local s, seen = string.match(v, '^(%a)|(%d+)$')
  seen = tonumber(seen)
  local exp = seen + ttl
  if exp <= now then
    redis.call('HDEL', key, f)
    if seen > goneSeen then goneSeen = seen end
    if exp > expiredAt then expiredAt = exp end
  else
    if s == 'o' or best == 'f' then best = s end
    if not nextExp or exp < nextExp then nextExp = exp end
  end
end
if best ~= cur then
  cur = best
  chg = now
  if op == '' and expiredAt > 0 then chg = expiredAt end
  if best == 'f' and goneSeen > 0 then
    last = goneSeen
    redis.call('HSET', key, 'last', last)
  end
  redis.call('HSET', key, 'cur', cur, 'chg', chg)
end
local out = false
local due = nil
if cur ~= pub then
  due = chg + damp
  if now >= due then
    pub = cur
    due = nil
    redis.call('HSET', key, 'pub', pub)
    out = { pub, tostring(last) }
  end
end
local deadline = nextExp
if due and (not deadline or due < deadline) then deadline = due end
if deadline then redis.call('ZADD', zkey, deadline, user) else redis.call('ZREM', zkey, user) end
return out`;

type Scripted = { parleyPresenceApply: (key: string, zkey: string, ...args: (string | number)[]) => unknown };

const LETTER: Record<LiveState, string> = { online: "o", away: "a" };
const STATE: Record<string, PresenceState> = { o: "online", a: "away", f: "offline" };

export class RedisPresenceStore implements PresenceStore {
  private readonly prefix: string;
  private readonly dueKey: string;
  readonly stats: PresenceStoreStats = { commands: 0, roundTrips: 0 };

  /** Takes ownership of `redis` (closed by close()). */
  constructor(
    private readonly redis: Redis,
    private readonly timing: PresenceTiming,
    o: RedisPresenceOptions = {},
  ) {
    this.prefix = o.prefix ?? "parley:";
    this.dueKey = `${this.prefix}presence:due`;
    redis.defineCommand("parleyPresenceApply", { numberOfKeys: 2, lua: APPLY });
  }

  private key(userId: string): string {
    return `${this.prefix}presence:${userId}`;
  }

  private pipeline(): ChainableCommander & Scripted {
    return this.redis.pipeline() as ChainableCommander & Scripted;
  }

  private apply(p: Scripted, userId: string, nowMs: number, op: string, gatewayId: string): void {
    p.parleyPresenceApply(this.key(userId), this.dueKey, userId, nowMs, this.timing.ttlMs, this.timing.dampMs, op, gatewayId ? `g:${gatewayId}` : "");
  }

  private async run(p: ChainableCommander, users: readonly string[], nowMs: number, what: string): Promise<Presence[]> {
    this.stats.roundTrips++;
    this.stats.commands += users.length;
    const replies = await execPipeline(p, what);
    const out: Presence[] = [];
    replies.forEach((r, i) => {
      if (!Array.isArray(r)) return;
      const state = STATE[String(r[0])] ?? "offline";
      out.push({ userId: users[i]!, state, lastSeenMs: state === "offline" ? Number(r[1]) : nowMs });
    });
    return out;
  }

  async report(gatewayId: string, online: readonly UserReport[], offline: readonly string[], nowMs: number): Promise<Presence[]> {
    if (online.length + offline.length === 0) return [];
    const p = this.pipeline();
    const users: string[] = [];
    for (const u of online) {
      this.apply(p, u.userId, nowMs, LETTER[u.state], gatewayId);
      users.push(u.userId);
    }
    for (const userId of offline) {
      this.apply(p, userId, nowMs, "f", gatewayId);
      users.push(userId);
    }
    return this.run(p, users, nowMs, "presence report");
  }

  async get(userIds: readonly string[], nowMs: number): Promise<Presence[]> {
    if (userIds.length === 0) return [];
    const p = this.redis.pipeline();
    for (const userId of userIds) p.hmget(this.key(userId), "pub", "last");
    this.stats.roundTrips++;
    this.stats.commands += userIds.length;
    const replies = await execPipeline(p, "presence get");
    return userIds.map((userId, i): Presence => {
      const [pub, last] = (replies[i] ?? []) as (string | null)[];
      const state = STATE[pub ?? "f"] ?? "offline";
      return { userId, state, lastSeenMs: state === "offline" ? Number(last ?? 0) : nowMs };
    });
  }

  async sweep(nowMs: number, limit: number): Promise<Presence[]> {
    this.stats.roundTrips++;
    this.stats.commands++;
    const [due] = (await execPipeline(
      this.redis.pipeline().zrangebyscore(this.dueKey, "-inf", nowMs, "LIMIT", 0, limit),
      "presence sweep",
    )) as [string[]];
    if (due.length === 0) return [];
    const p = this.pipeline();
    for (const userId of due) this.apply(p, userId, nowMs, "", "");
    return this.run(p, due, nowMs, "presence sweep");
  }

  async close(): Promise<void> {
    await closeRedis(this.redis);
  }
}
