/**
 * The cost of one presence change against the number of subscribers.
 *
 *   node --import tsx tools/bench/presence.ts            (Redis from PARLEY_REDIS_URL or
 *                                                          PARLEY_TEST_REDIS_URL; memory otherwise)
 *   PARLEY_BENCH_CONTACTS=1000 PARLEY_BENCH_CHANGES=50   (defaults)
 *
 * One process holds the presence service (its real store, registry and fan-out code, on
 * Redis when configured), two gateways' presence parts (core/presence.ts, with fake
 * sockets that count writes) and a source gateway reporting the changing user. A user U
 * has CONTACTS contacts, all connected, spread over the two gateways; N of them follow U
 * (they are looking at U). Each measured change is U switching between ONLINE and AWAY
 * (damping off, so every change is published).
 *
 * Parley: report → one script call in Redis, one topic lookup (`presence:<U>`), one
 * Deliver per gateway holding followers with one envelope, one frame per follower.
 * Baseline (the naive design, measured in the same run): every change is broadcast to
 * every contact, followed or not — one registry lookup per contact and one frame per
 * connected contact device (what presence costs when it is pushed to contacts instead
 * of subscribers).
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import { PresenceState as FrameState, ServerFrameSchema, SubscribePresenceSchema } from "../../gen/parley/client/v1/frames_pb.js";
import { DeliveryService } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { PresenceService, PresenceState } from "../../gen/parley/presence/v1/presence_service_pb.js";
import { StaticDiscovery } from "../../lib/discovery/discovery-static.js";
import { createLogger } from "../../lib/logger.js";
import { openRedis } from "../../lib/redis.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { RedisConnectionRegistry } from "../../lib/registry/connection-registry-redis.js";
import type { ConnectionRegistry, DeviceEntry } from "../../lib/registry/connection-registry.js";
import { inProcess } from "../../lib/rpc.js";
import { dropPrefix } from "../../lib/testing/redis.js";
import { loadConfig as gatewayConfig } from "../../gateway/src/config.js";
import { Connection, type SocketPort } from "../../gateway/src/core/connection.js";
import { GatewayPresence, presenceTopic } from "../../gateway/src/core/presence.js";
import { loadConfig } from "../../services/presence/src/config.js";
import { PresenceContext } from "../../services/presence/src/context.js";
import { MemoryPresenceStore } from "../../services/presence/src/presence-store-memory.js";
import { RedisPresenceStore } from "../../services/presence/src/presence-store-redis.js";
import { presenceRoutes } from "../../services/presence/src/routes.js";

const CONTACTS = Number(process.env.PARLEY_BENCH_CONTACTS ?? 1000);
const CHANGES = Number(process.env.PARLEY_BENCH_CHANGES ?? 50);
const SUBSCRIBERS = [1, 10, 100, 1000].filter((n) => n <= CONTACTS);
const GATEWAYS = ["gw-a", "gw-b"];
const redisUrl = process.env.PARLEY_REDIS_URL ?? process.env.PARLEY_TEST_REDIS_URL;
const prefix = `parley-bench:presence:${randomUUID().slice(0, 8)}:`;
const silent = createLogger("bench", "silent");

/** The registry, counting the keys each call touches (one Redis command per key on the Redis adapter) and the calls (round trips). */
class CountingRegistry implements ConnectionRegistry {
  commands = 0;
  roundTrips = 0;
  constructor(private readonly inner: ConnectionRegistry) {}
  private count(n: number) {
    this.roundTrips++;
    this.commands += n;
  }
  add(g: string, e: readonly DeviceEntry[]) {
    this.count(new Set(e.map((x) => x.userId)).size);
    return this.inner.add(g, e);
  }
  refresh(g: string, e: readonly DeviceEntry[]) {
    this.count(new Set(e.map((x) => x.userId)).size);
    return this.inner.refresh(g, e);
  }
  remove(g: string, e: readonly DeviceEntry[]) {
    this.count(new Set(e.map((x) => x.userId)).size);
    return this.inner.remove(g, e);
  }
  removeUsers(g: string, u: readonly string[]) {
    this.count(u.length);
    return this.inner.removeUsers(g, u);
  }
  lookup(u: readonly string[]) {
    this.count(u.length);
    return this.inner.lookup(u);
  }
  lookupDevices(u: readonly string[]) {
    this.count(u.length);
    return this.inner.lookupDevices(u);
  }
  addTopics(g: string, t: readonly string[]) {
    this.count(t.length);
    return this.inner.addTopics(g, t);
  }
  removeTopics(g: string, t: readonly string[]) {
    this.count(t.length);
    return this.inner.removeTopics(g, t);
  }
  lookupTopics(t: readonly string[]) {
    this.count(t.length);
    return this.inner.lookupTopics(t);
  }
  close() {
    return this.inner.close();
  }
}

class CountingSocket implements SocketPort {
  writes = 0;
  send(): boolean {
    this.writes++;
    return true;
  }
  cork(fn: () => void): void {
    fn();
  }
  close(): void {}
  subscribe(): void {}
  unsubscribe(): void {}
  publish(): void {}
}

interface Gw {
  id: string;
  presence: GatewayPresence;
  /** userId → its connections here (the naive design writes to them directly). */
  conns: Map<string, Connection[]>;
}

async function main() {
  const timing = { ttlMs: 60_000, dampMs: 0 };
  const store = redisUrl ? new RedisPresenceStore(await openRedis(redisUrl), timing, { prefix }) : new MemoryPresenceStore(timing);
  const registry = new CountingRegistry(
    redisUrl ? new RedisConnectionRegistry(await openRedis(redisUrl), { prefix }) : new MemoryConnectionRegistry(),
  );
  const gws = new Map<string, Gw>();
  const discovery = new StaticDiscovery(GATEWAYS.map((id) => ({ kind: "gateway" as const, id, url: `http://${id}.invalid` })));
  const ctx = await PresenceContext.fromConfig(loadConfig({ PARLEY_PRESENCE_DAMP_MS: "0" }), {
    store,
    registry,
    discovery,
    logger: silent,
    sweepTimer: false,
    dialGateway: (_url, id) =>
      inProcess((r) =>
        r.service(DeliveryService, {
          deliver: (req) => {
            const gw = gws.get(id)!;
            let n = 0;
            for (const env of req.envelopes) {
              if (env.watchersOfUserId) n += gw.presence.deliverToWatchers(env.watchersOfUserId, env.serverFrame);
              for (const u of env.userIds) for (const c of gw.conns.get(u) ?? []) n += c.writeEncoded(env.serverFrame) ? 1 : 0;
            }
            return { deliveredFrames: n };
          },
        }),
      ),
  });
  const presenceClient = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
  for (const id of GATEWAYS) {
    const cfg = { ...gatewayConfig({ PARLEY_PRESENCE_REPORT_MS: "3600000" }), id };
    const conns = new Map<string, Connection[]>();
    const presence = new GatewayPresence(cfg, { presence: presenceClient, registry, clock: Date.now, logger: silent }, {
      reply: (conn, frame) => void conn.write(frame),
      connectionsOf: (userId) => conns.get(userId),
      users: () => conns.entries(),
    });
    gws.set(id, { id, presence, conns });
  }

  // The contacts, all connected, alternately on the two gateways.
  const contacts: { userId: string; conn: Connection; socket: CountingSocket; gw: Gw }[] = [];
  for (let i = 0; i < CONTACTS; i++) {
    const gw = gws.get(GATEWAYS[i % 2]!)!;
    const userId = randomUUID();
    const conn = new Connection({ userId, deviceId: randomUUID(), sessionId: "s" }, "binary", 1000, 0);
    const socket = new CountingSocket();
    conn.socket = socket;
    conn.ready = true;
    gw.conns.set(userId, [conn]);
    gw.presence.connected(conn);
    contacts.push({ userId, conn, socket, gw });
  }
  for (const gw of gws.values()) {
    await registry.add(gw.id, contacts.filter((c) => c.gw === gw).map((c) => ({ userId: c.userId, deviceId: c.conn.principal.deviceId })));
  }
  const frames = () => contacts.reduce((s, c) => s + c.socket.writes, 0);
  // The naive design's Deliver: each envelope's users' devices on that gateway.
  const naiveClients = new Map(
    GATEWAYS.map((g) => [
      g,
      createClient(
        DeliveryService,
        inProcess((r) =>
          r.service(DeliveryService, {
            deliver: (req) => {
              let k = 0;
              for (const env of req.envelopes) for (const u of env.userIds) for (const c of gws.get(g)!.conns.get(u) ?? []) k += c.writeEncoded(env.serverFrame) ? 1 : 0;
              return { deliveredFrames: k };
            },
          }),
        ),
      ),
    ]),
  );

  const rows: Record<string, string | number>[] = [];
  for (const n of SUBSCRIBERS) {
    const target = randomUUID();
    for (const c of contacts.slice(0, n)) {
      c.gw.presence.onSubscribe(c.conn, 1, create(SubscribePresenceSchema, { addUserIds: [target] }));
    }
    const holders = Math.min(n, GATEWAYS.length);
    for (let i = 0; ; i++) {
      const got = (await registry.lookupTopics([presenceTopic(target)])).get(presenceTopic(target))?.length ?? 0;
      if (got === holders) break;
      if (i > 1000) throw new Error("subscriptions never registered");
      await new Promise((r) => setTimeout(r, 5));
    }
    let flip = false;
    const change = async () => {
      flip = !flip;
      await presenceClient.reportConnections({
        gatewayId: "gw-src",
        online: [{ userId: target, state: flip ? PresenceState.AWAY : PresenceState.ONLINE }],
      });
      await ctx.fanOut.idle();
    };
    for (let i = 0; i < 5; i++) await change(); // warm up

    // Parley: publish to subscribers.
    const m0 = snapshot();
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < CHANGES; i++) await change();
    const cpu1 = process.cpuUsage(cpu0);
    const m1 = snapshot();

    // Baseline: broadcast each change to every contact (one lookup per contact, one frame per device).
    const contactIds = contacts.map((c) => c.userId);
    const naiveChange = async () => {
      flip = !flip;
      const state = flip ? "away" : "online";
      await store.report("gw-src", [{ userId: target, state }], [], Date.now());
      const where = await registry.lookup(contactIds);
      const frame = toBinary(
        ServerFrameSchema,
        create(ServerFrameSchema, { kind: { case: "presence", value: { userId: target, state: flip ? FrameState.AWAY : FrameState.ONLINE } } }),
      );
      const perGw = new Map<string, string[]>();
      for (const [u, gwIds] of where) for (const g of gwIds) perGw.set(g, [...(perGw.get(g) ?? []), u]);
      await Promise.all(
        [...perGw].map(async ([g, userIds]) => {
          naive.deliverCalls++;
          naive.events += userIds.length;
          const client = naiveClients.get(g)!;
          // One envelope per contact: the naive design sends each contact its own event.
          await client.deliver({ envelopes: userIds.map((u) => ({ userIds: [u], serverFrame: frame })) });
        }),
      );
    };
    const naive = { deliverCalls: 0, events: 0 };
    const n0 = snapshot();
    const ncpu0 = process.cpuUsage();
    for (let i = 0; i < CHANGES; i++) await naiveChange();
    const ncpu1 = process.cpuUsage(ncpu0);
    const n1 = snapshot();

    const per = (a: number) => +(a / CHANGES).toFixed(1);
    const ours = {
      redis: per(m1.redis - m0.redis),
      trips: per(m1.trips - m0.trips),
      events: per(m1.events - m0.events),
      delivers: per(m1.delivers - m0.delivers),
      frames: per(m1.frames - m0.frames),
      cpuUs: per(cpu1.user + cpu1.system),
    };
    const base = {
      redis: per(n1.redis - n0.redis),
      trips: per(n1.trips - n0.trips),
      events: per(naive.events),
      delivers: per(naive.deliverCalls),
      frames: per(n1.frames - n0.frames),
      cpuUs: per(ncpu1.user + ncpu1.system),
    };
    const ratio = (b: number, o: number) => (o === 0 ? "∞" : `${(b / o).toFixed(1)}×`);
    rows.push({
      subscribers: n,
      "redis ops": ours.redis,
      "round trips": ours.trips,
      events: ours.events,
      delivers: ours.delivers,
      frames: ours.frames,
      "cpu µs": ours.cpuUs,
      "naive redis ops": base.redis,
      "naive events": base.events,
      "naive frames": base.frames,
      "naive cpu µs": base.cpuUs,
      "redis ratio": ratio(base.redis, ours.redis),
      "events ratio": ratio(base.events, ours.events),
      "cpu ratio": ratio(base.cpuUs, ours.cpuUs),
    });
    // Unfollow, so the next round measures its own subscribers only.
    for (const c of contacts.slice(0, n)) c.gw.presence.onSubscribe(c.conn, 2, create(SubscribePresenceSchema, { removeUserIds: [target] }));

    function snapshot() {
      return {
        redis: store.stats.commands + registry.commands,
        trips: store.stats.roundTrips + registry.roundTrips,
        events: ctx.fanOut.stats.events,
        delivers: ctx.fanOut.stats.deliverCalls,
        frames: frames(),
      };
    }
  }

  console.log(`presence: one change, ${CONTACTS} contacts (all connected, over ${GATEWAYS.length} gateways), ${CHANGES} changes per row, ${redisUrl ? "Redis" : "memory"} store; per change:`);
  console.table(rows);
  for (const gw of gws.values()) await gw.presence.stop();
  await ctx.close();
  await registry.close();
  if (redisUrl) await dropPrefix(redisUrl, prefix);
}

await main();
