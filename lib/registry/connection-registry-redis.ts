import type { ChainableCommander, Redis } from "ioredis";
import {
  DEFAULT_REGISTRY_TTL_MS,
  gatewaysOf,
  type ConnectionRegistry,
  type DeviceEntry,
  type DeviceLocation,
  type RegistryTiming,
} from "./connection-registry.js";
import { BackgroundPipelines, FORGET_STALE_FIELDS, closeRedis, execPipeline } from "../redis.js";

/**
 * The connection registry on Redis (ioredis).
 *
 * Layout: one hash per user, `{prefix}conn:{userId}`, field deviceId → `gatewayId|expiresAtMs`;
 * and the conversation index, one hash per group conversation, `{prefix}topic:{conversationId}`,
 * field gatewayId → `expiresAtMs`.
 *
 * Expiry per entry: Redis 7.0 has no per-field TTL, so each value carries its own
 * deadline (`expiresAtMs`, from the adapter's clock: injectable, so tests need no
 * sleeping). Readers ignore entries past their deadline and delete them lazily (a
 * conditional delete: only if the value is still the expired one, so a concurrent
 * refresh is never undone). As a backstop, every write also extends the key's own TTL
 * to at least `ttlMs` (never shortens it): a user whose gateways all died disappears
 * entirely even if nobody reads them again. A value's deadline is never later than the
 * key's TTL, as long as writers share one TTL setting and roughly agree on the time.
 *
 * Round trips: `lookup` is one pipeline of HGETALL (read-only commands, one per user);
 * `add`, `refresh`, `remove` and `removeUsers` are one pipeline of small Lua scripts,
 * one script call per user, each touching that user's key only (atomic per user, and
 * compatible with Redis Cluster since no script spans two keys). ioredis sends EVAL the
 * first time on a connection and EVALSHA afterwards, inside the same pipeline.
 *
 * The conversation index works the same way: `addTopics` (one pipeline, one script call
 * per conversation key: HSET the gateway's deadline and extend the key TTL) both adds and
 * refreshes; `removeTopics` is one pipeline of HDEL; `lookupTopics` one pipeline of
 * HGETALL, expired fields deleted lazily and conditionally like device entries.
 *
 * `refresh` is what a live gateway calls once per interval with all its connections
 * (never a timer per connection): it extends the deadline of entries that point at that
 * gateway, re-creates missing or expired ones (e.g. after a Redis restart without
 * persistence), and leaves alone entries that a different gateway owns and keeps alive.
 */
export interface RedisRegistryOptions extends RegistryTiming {
  /** Namespace of every key (e.g. `parley:`); tests use a random one. */
  prefix?: string;
}

/** `gatewayId` and deadline of a stored value (`gatewayId|expiresAtMs`); gateway ids may contain `|`. */
function parseEntry(value: string): { gatewayId: string; expiresAtMs: number } | undefined {
  const bar = value.lastIndexOf("|");
  if (bar < 0) return undefined;
  const expiresAtMs = Number(value.slice(bar + 1));
  return Number.isFinite(expiresAtMs) ? { gatewayId: value.slice(0, bar), expiresAtMs } : undefined;
}

const LUA_COMMON = `
local function gw_of(v) return string.match(v, '^(.*)|%d+$') end
local function exp_of(v) return tonumber(string.match(v, '|(%d+)$')) end
local function extend(key, ttl)
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < tonumber(ttl)) then redis.call('PEXPIRE', key, ttl) end
end
`;

const SCRIPTS = {
  /** KEYS[1] user hash; ARGV: keyTtlMs, then deviceId, value pairs. */
  parleyRegistryAdd: `${LUA_COMMON}
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
extend(KEYS[1], ARGV[1])
return 0`,
  /** KEYS[1] user hash; ARGV: gatewayId, value, nowMs, keyTtlMs, deviceIds... */
  parleyRegistryRefresh: `${LUA_COMMON}
local gw, value, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 5, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local take = not cur
  if cur then
    local exp = exp_of(cur)
    take = gw_of(cur) == gw or exp == nil or exp <= now
  end
  if take then redis.call('HSET', KEYS[1], ARGV[i], value) end
end
extend(KEYS[1], ARGV[4])
return 0`,
  /** KEYS[1] user hash; ARGV: gatewayId, deviceIds... */
  parleyRegistryRemove: `${LUA_COMMON}
local n = 0
for i = 2, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and gw_of(cur) == ARGV[1] then n = n + redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return n`,
  /** KEYS[1] user hash; ARGV: gatewayId. */
  parleyRegistryRemoveGateway: `${LUA_COMMON}
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  if gw_of(all[i + 1]) == ARGV[1] then n = n + redis.call('HDEL', KEYS[1], all[i]) end
end
return n`,
  /** KEYS[1] conversation hash; ARGV: gatewayId, expiresAtMs, keyTtlMs. */
  parleyRegistryTopicAdd: `${LUA_COMMON}
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
extend(KEYS[1], ARGV[3])
return 0`,
  /** KEYS[1] user or conversation hash; ARGV: field, value pairs: deletes each field still holding that (expired) value. */
  parleyRegistryForget: FORGET_STALE_FIELDS,
} as const;

type ScriptName = keyof typeof SCRIPTS;
type Scripted = { [K in ScriptName]: (key: string, ...args: (string | number)[]) => unknown };

export class RedisConnectionRegistry implements ConnectionRegistry {
  private readonly prefix: string;
  private readonly ttlMs: number;
  private readonly clock: () => number;
  /** Lazy deletes of expired entries still in flight (awaited by close()). */
  private readonly cleanups = new BackgroundPipelines();

  /** Takes ownership of `redis` (closed by close()). */
  constructor(
    private readonly redis: Redis,
    o: RedisRegistryOptions = {},
  ) {
    this.prefix = o.prefix ?? "parley:";
    this.ttlMs = o.ttlMs ?? DEFAULT_REGISTRY_TTL_MS;
    this.clock = o.clock ?? Date.now;
    for (const [name, lua] of Object.entries(SCRIPTS)) redis.defineCommand(name, { numberOfKeys: 1, lua });
  }

  private key(userId: string): string {
    return `${this.prefix}conn:${userId}`;
  }

  private pipeline(): ChainableCommander & Scripted {
    return this.redis.pipeline() as ChainableCommander & Scripted;
  }

  async add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    if (entries.length === 0) return;
    const value = `${gatewayId}|${this.clock() + this.ttlMs}`;
    const p = this.pipeline();
    for (const [userId, devices] of byUser(entries)) {
      p.parleyRegistryAdd(this.key(userId), this.ttlMs, ...devices.flatMap((d) => [d, value]));
    }
    await execPipeline(p, "registry add");
  }

  async refresh(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    if (entries.length === 0) return;
    const now = this.clock();
    const value = `${gatewayId}|${now + this.ttlMs}`;
    const p = this.pipeline();
    for (const [userId, devices] of byUser(entries)) {
      p.parleyRegistryRefresh(this.key(userId), gatewayId, value, now, this.ttlMs, ...devices);
    }
    await execPipeline(p, "registry refresh");
  }

  async remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    if (entries.length === 0) return;
    const p = this.pipeline();
    for (const [userId, devices] of byUser(entries)) p.parleyRegistryRemove(this.key(userId), gatewayId, ...devices);
    await execPipeline(p, "registry remove");
  }

  async removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void> {
    if (userIds.length === 0) return;
    const p = this.pipeline();
    for (const userId of new Set(userIds)) p.parleyRegistryRemoveGateway(this.key(userId), gatewayId);
    await execPipeline(p, "registry removeUsers");
  }

  async lookup(userIds: readonly string[]): Promise<Map<string, string[]>> {
    return gatewaysOf(await this.lookupDevices(userIds));
  }

  async lookupDevices(userIds: readonly string[]): Promise<Map<string, DeviceLocation[]>> {
    const out = new Map<string, DeviceLocation[]>();
    const users = [...new Set(userIds)];
    if (users.length === 0) return out;
    const p = this.pipeline();
    for (const userId of users) p.hgetall(this.key(userId));
    const replies = await execPipeline(p, "registry lookup");
    const now = this.clock();
    const expired: [string, string[]][] = [];
    users.forEach((userId, i) => {
      const hash = (replies[i] ?? {}) as Record<string, string>;
      const devices: DeviceLocation[] = [];
      const stale: string[] = [];
      for (const [deviceId, value] of Object.entries(hash)) {
        const e = parseEntry(value);
        if (!e || e.expiresAtMs <= now) stale.push(deviceId, value);
        else devices.push({ deviceId, gatewayId: e.gatewayId });
      }
      if (devices.length > 0) out.set(userId, devices);
      if (stale.length > 0) expired.push([this.key(userId), stale]);
    });
    if (expired.length > 0) this.forget(expired);
    return out;
  }

  private topicKey(conversationId: string): string {
    return `${this.prefix}topic:${conversationId}`;
  }

  async addTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void> {
    if (conversationIds.length === 0) return;
    const expiresAtMs = this.clock() + this.ttlMs;
    const p = this.pipeline();
    for (const id of new Set(conversationIds)) p.parleyRegistryTopicAdd(this.topicKey(id), gatewayId, expiresAtMs, this.ttlMs);
    await execPipeline(p, "registry addTopics");
  }

  async removeTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void> {
    if (conversationIds.length === 0) return;
    const p = this.pipeline();
    for (const id of new Set(conversationIds)) p.hdel(this.topicKey(id), gatewayId);
    await execPipeline(p, "registry removeTopics");
  }

  async lookupTopics(conversationIds: readonly string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    const ids = [...new Set(conversationIds)];
    if (ids.length === 0) return out;
    const p = this.pipeline();
    for (const id of ids) p.hgetall(this.topicKey(id));
    const replies = await execPipeline(p, "registry lookupTopics");
    const now = this.clock();
    const expired: [string, string[]][] = [];
    ids.forEach((id, i) => {
      const hash = (replies[i] ?? {}) as Record<string, string>;
      const gateways: string[] = [];
      const stale: string[] = [];
      for (const [gatewayId, value] of Object.entries(hash)) {
        const expiresAtMs = Number(value);
        if (!Number.isFinite(expiresAtMs) || expiresAtMs <= now) stale.push(gatewayId, value);
        else gateways.push(gatewayId);
      }
      if (gateways.length > 0) out.set(id, gateways);
      if (stale.length > 0) expired.push([this.topicKey(id), stale]);
    });
    if (expired.length > 0) this.forget(expired);
    return out;
  }

  /** Deletes expired entries in the background (one pipeline); a failure only leaves them for the next reader. */
  private forget(expired: [string, string[]][]): void {
    const p = this.pipeline();
    for (const [key, pairs] of expired) p.parleyRegistryForget(key, ...pairs);
    this.cleanups.run(p, "registry cleanup");
  }

  async close(): Promise<void> {
    await this.cleanups.settled();
    await closeRedis(this.redis);
  }
}

/** userId → its distinct deviceIds, so each user's key gets one script call. */
function byUser(entries: readonly DeviceEntry[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const { userId, deviceId } of entries) {
    const list = out.get(userId);
    if (!list) out.set(userId, [deviceId]);
    else if (!list.includes(deviceId)) list.push(deviceId);
  }
  return out;
}
