import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { PresenceService, PresenceState } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { openRedis } from "../../../lib/redis.js";
import { dropPrefix, eventually, testPrefix, ThrowawayRedis } from "../../../lib/testing/redis.js";
import { inProcess } from "../../../lib/rpc.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { loadConfig } from "../src/config.js";
import { PresenceContext } from "../src/context.js";
import { MemoryPresenceStore } from "../src/presence-store-memory.js";
import { RedisPresenceStore } from "../src/presence-store-redis.js";
import { presenceRoutes } from "../src/routes.js";
import { describePresenceStore } from "./presence-store.contract.js";

describePresenceStore("memory (embedded)", 60_000, async () => new MemoryPresenceStore(60_000));

const redisUrl = realBackend("redis");
if (redisUrl) {
  const prefix = testPrefix("presence");
  after(() => dropPrefix(redisUrl, prefix));
  describePresenceStore("on Redis (real server)", 60_000, async () => new RedisPresenceStore(await openRedis(redisUrl), 60_000, { prefix }));

  describe("PresenceService on Redis (PARLEY_REDIS_URL)", () => {
    let server: ThrowawayRedis;
    let ctx: PresenceContext;
    let client: Client<typeof PresenceService>;
    before(async () => {
      server = await ThrowawayRedis.start();
      ctx = await PresenceContext.fromConfig(loadConfig({ PARLEY_REDIS_URL: server.url, PARLEY_REDIS_PREFIX: prefix }), {
        logger: createLogger("presence", "silent"),
      });
      client = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
    });
    after(async () => {
      await ctx.close();
      await server.stop();
    });

    it("uses Redis; Unavailable fast while Redis is down, working again once it is back", async () => {
      assert.ok(ctx.store instanceof RedisPresenceStore);
      const u = randomUuid();
      await client.reportConnections({ gatewayId: "gw-1", online: [{ userId: u }] });
      assert.equal((await client.getPresence({ userIds: [u] })).presences[0]?.state, PresenceState.ONLINE);

      await server.stop();
      const unavailable = (e: unknown) => ConnectError.from(e).code === Code.Unavailable;
      const t = Date.now();
      await assert.rejects(client.getPresence({ userIds: [u] }), unavailable);
      await assert.rejects(client.reportConnections({ gatewayId: "gw-1", online: [{ userId: u }] }), unavailable);
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

describe("PresenceService", () => {
  let now = 1_800_000_000_000;
  let ctx: PresenceContext;
  let client: Client<typeof PresenceService>;
  before(async () => {
    ctx = await PresenceContext.fromConfig(loadConfig({ PARLEY_PRESENCE_TTL_SECONDS: "30" }), {
      clock: () => now,
      logger: createLogger("presence", "silent"),
    });
    client = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
  });
  after(() => ctx.close());

  it("reports and reads presence through the API", async () => {
    const [a, b] = [randomUuid(), randomUuid()];
    await client.reportConnections({ gatewayId: "gw-1", online: [{ userId: a }, { userId: b }] });
    now += 1000;
    await client.reportConnections({ gatewayId: "gw-1", offlineUserIds: [b] });
    const res = await client.getPresence({ userIds: [a, b] });
    assert.deepEqual(
      res.presences.map((p) => [p.userId, p.state]),
      [
        [a, PresenceState.ONLINE],
        [b, PresenceState.OFFLINE],
      ],
    );
    now += 31_000;
    assert.equal((await client.getPresence({ userIds: [a] })).presences[0]?.state, PresenceState.OFFLINE);
  });

  it("rejects malformed ids and empty gateway ids", async () => {
    const bad = async (p: Promise<unknown>) =>
      assert.rejects(p, (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
    await bad(client.reportConnections({ gatewayId: "", online: [] }));
    await bad(client.reportConnections({ gatewayId: "gw", online: [{ userId: "not-a-uuid" }] }));
    await bad(client.getPresence({ userIds: ["x"] }));
  });
});
