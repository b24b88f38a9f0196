import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { PresenceState as FrameState, ServerFrameSchema } from "../../../gen/parley/client/v1/frames_pb.js";
import { DeliveryService, type DeliverRequest } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import { PresenceService, PresenceState } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { openRedis } from "../../../lib/redis.js";
import { MemoryConnectionRegistry } from "../../../lib/registry/connection-registry-memory.js";
import { dropPrefix, eventually, testPrefix, ThrowawayRedis } from "../../../lib/testing/redis.js";
import { inProcess } from "../../../lib/rpc.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { loadConfig } from "../src/config.js";
import { PresenceContext } from "../src/context.js";
import { presenceTopic } from "../src/presence-fan-out.js";
import { MemoryPresenceStore } from "../src/presence-store-memory.js";
import { RedisPresenceStore } from "../src/presence-store-redis.js";
import type { PresenceStore } from "../src/presence-store.js";
import { presenceRoutes } from "../src/routes.js";
import { CONTRACT_TIMING, describePresenceStore } from "./presence-store.contract.js";

const silent = createLogger("presence", "silent");

describePresenceStore("memory (embedded)", async (timing) => new MemoryPresenceStore(timing));

const redisUrl = realBackend("redis");
if (redisUrl) {
  const prefix = testPrefix("presence");
  after(() => dropPrefix(redisUrl, prefix));
  describePresenceStore("on Redis (real server)", async (timing) => new RedisPresenceStore(await openRedis(redisUrl), timing, { prefix }));

  describe("RedisPresenceStore: several presence instances", () => {
    it("sweeping at once from two instances publishes each change exactly once", async () => {
      const p2 = testPrefix("presence-multi");
      const stores = [
        new RedisPresenceStore(await openRedis(redisUrl), CONTRACT_TIMING, { prefix: p2 }),
        new RedisPresenceStore(await openRedis(redisUrl), CONTRACT_TIMING, { prefix: p2 }),
      ];
      try {
        const t0 = 1_900_000_000_000;
        const users = Array.from({ length: 50 }, () => randomUuid());
        await stores[0]!.report("gw-1", users.map((userId) => ({ userId, state: "online" as const })), [], t0);
        const at = t0 + CONTRACT_TIMING.dampMs;
        const [a, b] = await Promise.all(stores.map((s) => s.sweep(at, 1000)));
        assert.equal(a!.length + b!.length, users.length);
        assert.deepEqual([...a!, ...b!].map((p) => p.userId).sort(), [...users].sort());
        assert.equal(stores[0]!.stats.roundTrips, 3, "report 1, sweep 2");
      } finally {
        await Promise.all(stores.map((s) => s.close()));
        await dropPrefix(redisUrl, p2);
      }
    });
  });

  describe("PresenceService on Redis (PARLEY_REDIS_URL)", () => {
    let server: ThrowawayRedis;
    let ctx: PresenceContext;
    let client: Client<typeof PresenceService>;
    before(async () => {
      server = await ThrowawayRedis.start();
      ctx = await PresenceContext.fromConfig(
        loadConfig({ PARLEY_REDIS_URL: server.url, PARLEY_REDIS_PREFIX: prefix, PARLEY_PRESENCE_DAMP_MS: "0" }),
        { logger: silent, sweepTimer: false },
      );
      client = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
    });
    after(async () => {
      await ctx.close();
      await server.stop();
    });

    it("uses Redis; Unavailable fast while Redis is down, working again once it is back", async () => {
      assert.ok(ctx.store instanceof RedisPresenceStore);
      const u = randomUuid();
      await client.reportConnections({ gatewayId: "gw-1", online: [{ userId: u, state: PresenceState.ONLINE }] });
      assert.equal((await client.getPresence({ userIds: [u] })).presences[0]?.state, PresenceState.ONLINE);

      await server.stop();
      const unavailable = (e: unknown) => ConnectError.from(e).code === Code.Unavailable;
      const t = Date.now();
      await assert.rejects(client.getPresence({ userIds: [u] }), unavailable);
      await assert.rejects(client.reportConnections({ gatewayId: "gw-1", online: [{ userId: u }] }), unavailable);
      await assert.rejects(ctx.fanOut.sweep(), unavailable);
      assert.ok(Date.now() - t < 1500, "fails fast");

      await server.start(); // empty: no persistence
      await eventually("presence usable again", async () => {
        await client.reportConnections({ gatewayId: "gw-1", online: [{ userId: u }] });
        return true;
      });
      assert.equal((await client.getPresence({ userIds: [u] })).presences[0]?.state, PresenceState.ONLINE);
    });
  });
}

/** A fake gateway's DeliveryService: records every Deliver. */
function fakeGateway(calls: DeliverRequest[]) {
  return inProcess((r) =>
    r.service(DeliveryService, {
      deliver: (req) => {
        calls.push(req);
        return { deliveredFrames: req.envelopes.length };
      },
    }),
  );
}

function decode(env: { serverFrame: Uint8Array }) {
  const f = fromBinary(ServerFrameSchema, env.serverFrame);
  assert.equal(f.kind.case, "presence");
  const p = f.kind.value as { userId: string; state: FrameState; lastSeenAt?: Parameters<typeof timestampMs>[0] };
  return { userId: p.userId, state: p.state, lastSeenMs: p.lastSeenAt ? timestampMs(p.lastSeenAt) : 0 };
}

function describeService(name: string, openStore: (() => Promise<PresenceStore>) | undefined) {
  describe(`PresenceService: publishing to followers (${name})`, () => {
    let now = 1_800_000_000_000;
    let ctx: PresenceContext;
    let client: Client<typeof PresenceService>;
    const registry = new MemoryConnectionRegistry({ clock: () => now });
    const delivered = new Map<string, DeliverRequest[]>([
      ["gw-1", []],
      ["gw-2", []],
      ["gw-3", []],
    ]);
    before(async () => {
      const discovery = new StaticDiscovery(
        [...delivered.keys()].map((id) => ({ kind: "gateway" as const, id, url: `http://${id}.invalid` })),
      );
      ctx = await PresenceContext.fromConfig(loadConfig({ PARLEY_PRESENCE_TTL_SECONDS: "30", PARLEY_PRESENCE_DAMP_MS: "1000" }), {
        store: openStore ? await openStore() : undefined,
        clock: () => now,
        logger: silent,
        registry,
        discovery,
        dialGateway: (_url, id) => fakeGateway(delivered.get(id)!),
        sweepTimer: false,
      });
      client = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
    });
    after(() => ctx.close());

    async function sweepAt(t: number) {
      now = t;
      await ctx.fanOut.sweep();
      await ctx.fanOut.idle();
    }
    const envelopes = (gw: string, user?: string) =>
      delivered.get(gw)!.flatMap((d) => d.envelopes).filter((e) => user === undefined || e.watchersOfUserId === user);

    it("publishes a change only to the gateways holding followers: one Deliver per gateway, one envelope per changed user", async () => {
      const [a, b, lonely] = [randomUuid(), randomUuid(), randomUuid()];
      // gw-1 follows a and b; gw-2 follows a; gw-3 follows nobody.
      await registry.addTopics("gw-1", [presenceTopic(a), presenceTopic(b)]);
      await registry.addTopics("gw-2", [presenceTopic(a)]);
      const t0 = now;
      await client.reportConnections({
        gatewayId: "gw-3",
        online: [
          { userId: a, state: PresenceState.ONLINE },
          { userId: b, state: PresenceState.AWAY },
          { userId: lonely, state: PresenceState.ONLINE },
        ],
        full: true,
      });
      await sweepAt(t0 + 500);
      assert.equal(envelopes("gw-1").length, 0, "damped");
      const before = { ...ctx.fanOut.stats };
      await sweepAt(t0 + 1000);
      assert.equal(delivered.get("gw-1")!.length, 1);
      assert.equal(delivered.get("gw-2")!.length, 1);
      assert.equal(delivered.get("gw-3")!.length, 0, "no followers there: nothing");
      const got1 = envelopes("gw-1").map((e) => ({ watchers: e.watchersOfUserId, ...decode(e) }));
      assert.deepEqual(
        got1.sort((x, y) => x.userId.localeCompare(y.userId)),
        [
          { watchers: a, userId: a, state: FrameState.ONLINE, lastSeenMs: 0 },
          { watchers: b, userId: b, state: FrameState.AWAY, lastSeenMs: 0 },
        ].sort((x, y) => x.userId.localeCompare(y.userId)),
      );
      assert.deepEqual(envelopes("gw-2").map((e) => e.watchersOfUserId), [a]);
      assert.equal(ctx.fanOut.stats.changes - before.changes, 3, "three users changed");
      assert.equal(ctx.fanOut.stats.events - before.events, 3, "events only where followed: 2 + 1");
      assert.equal(ctx.fanOut.stats.deliverCalls - before.deliverCalls, 2);
      assert.equal(ctx.fanOut.stats.lookups - before.lookups, 1, "one topic lookup for the batch");

      // a goes offline: followers get OFFLINE with last seen; GetPresence agrees.
      const t1 = t0 + 5000;
      now = t1;
      await client.reportConnections({ gatewayId: "gw-3", offlineUserIds: [a] });
      await sweepAt(t1 + 1000);
      const last = envelopes("gw-2").at(-1)!;
      assert.deepEqual(decode(last), { userId: a, state: FrameState.OFFLINE, lastSeenMs: t1 });
      const res = await client.getPresence({ userIds: [a, b, lonely] });
      assert.deepEqual(
        res.presences.map((p) => [p.state, p.lastSeenAt ? timestampMs(p.lastSeenAt) : 0]),
        [
          [PresenceState.OFFLINE, t1],
          [PresenceState.AWAY, t1 + 1000],
          [PresenceState.ONLINE, t1 + 1000],
        ],
      );
    });

    it("offline by expiry: a gateway that stops reporting, its users go offline after the TTL", async () => {
      const u = randomUuid();
      await registry.addTopics("gw-1", [presenceTopic(u)]);
      const t0 = now;
      await client.reportConnections({ gatewayId: "gw-dead", online: [{ userId: u, state: PresenceState.ONLINE }], full: true });
      await sweepAt(t0 + 1000);
      assert.equal(decode(envelopes("gw-1", u).at(-1)!).state, FrameState.ONLINE);
      // Keep gw-1's follow alive, not gw-dead's report.
      await sweepAt(t0 + 29_000);
      await registry.addTopics("gw-1", [presenceTopic(u)]);
      await sweepAt(t0 + 30_500);
      assert.equal(decode(envelopes("gw-1", u).at(-1)!).state, FrameState.ONLINE, "damped after the expiry");
      await sweepAt(t0 + 31_000);
      assert.equal(envelopes("gw-1", u).length, 2, "online, then offline");
      assert.deepEqual(decode(envelopes("gw-1", u).at(-1)!), { userId: u, state: FrameState.OFFLINE, lastSeenMs: t0 });
    });

    it("a flap within the damping window sends nothing at all", async () => {
      const u = randomUuid();
      await registry.addTopics("gw-2", [presenceTopic(u)]);
      const t0 = now;
      await client.reportConnections({ gatewayId: "gw-3", online: [{ userId: u, state: PresenceState.ONLINE }] });
      await sweepAt(t0 + 1000);
      const n = envelopes("gw-2", u).length;
      assert.equal(n, 1);
      await client.reportConnections({ gatewayId: "gw-3", offlineUserIds: [u] });
      now += 300;
      await client.reportConnections({ gatewayId: "gw-3", online: [{ userId: u, state: PresenceState.ONLINE }] });
      await sweepAt(now + 5000);
      assert.equal(envelopes("gw-2", u).length, n, "nothing sent");
    });

    it("rejects malformed ids, empty gateway ids and offline as a live state", async () => {
      const bad = async (p: Promise<unknown>) => assert.rejects(p, (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
      await bad(client.reportConnections({ gatewayId: "", online: [] }));
      await bad(client.reportConnections({ gatewayId: "gw", online: [{ userId: "not-a-uuid" }] }));
      await bad(client.reportConnections({ gatewayId: "gw", online: [{ userId: randomUuid(), state: PresenceState.OFFLINE }] }));
      await bad(client.reportConnections({ gatewayId: "gw", offlineUserIds: ["x"] }));
      await bad(client.getPresence({ userIds: ["x"] }));
    });
  });
}

describeService("memory", undefined);
if (redisUrl) {
  const prefix = testPrefix("presence-svc");
  after(() => dropPrefix(redisUrl, prefix));
  describeService("Redis", async () => new RedisPresenceStore(await openRedis(redisUrl), { ttlMs: 30_000, dampMs: 1000 }, { prefix }));
}

describe("PresenceService config", () => {
  it("defaults: TTL 60 s, damping 1 s, sweep 250 ms; gateways from PARLEY_GATEWAYS", () => {
    const cfg = loadConfig({ PARLEY_GATEWAYS: "gw-1=http://127.0.0.1:7200" });
    assert.equal(cfg.ttlMs, 60_000);
    assert.equal(cfg.dampMs, 1000);
    assert.equal(cfg.sweepMs, 250);
    assert.deepEqual(cfg.gateways, [{ kind: "gateway", id: "gw-1", url: "http://127.0.0.1:7200" }]);
  });
});
