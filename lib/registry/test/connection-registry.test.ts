import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Redis } from "ioredis";
import { randomUuid } from "../../ids.js";
import { realBackend } from "../../testing/backends.js";
import { MemoryConnectionRegistry } from "../connection-registry-memory.js";
import { RedisConnectionRegistry } from "../connection-registry-redis.js";
import { openRedis } from "../../redis.js";
import { describeConnectionRegistry } from "./connection-registry.contract.js";
import { dropPrefix, eventually, keysUnder, testPrefix, ThrowawayRedis } from "../../testing/redis.js";

describeConnectionRegistry("memory (embedded)", async (o) => new MemoryConnectionRegistry(o));

const redisUrl = realBackend("redis");
if (redisUrl) {
  const prefix = testPrefix("registry");
  after(() => dropPrefix(redisUrl, prefix));

  describeConnectionRegistry("on Redis (real server)", async (o) => new RedisConnectionRegistry(await openRedis(redisUrl), { ...o, prefix }));

  describe("RedisConnectionRegistry on Redis (real server): keys", () => {
    let raw: Redis;
    let reg: RedisConnectionRegistry;
    before(async () => {
      raw = await openRedis(redisUrl);
      reg = new RedisConnectionRegistry(await openRedis(redisUrl), { prefix, ttlMs: 30_000 });
    });
    after(async () => {
      await reg.close();
      raw.disconnect();
    });

    it("one hash per user, field deviceId → gateway|deadline, with a key TTL as a backstop", async () => {
      const u = randomUuid();
      await reg.add("gw-1", [
        { userId: u, deviceId: "a" },
        { userId: u, deviceId: "b" },
      ]);
      const key = `${prefix}conn:${u}`;
      assert.deepEqual(await keysUnder(raw, key), [key]);
      const hash = await raw.hgetall(key);
      assert.deepEqual(Object.keys(hash).sort(), ["a", "b"]);
      assert.match(hash.a!, /^gw-1\|\d+$/);
      const pttl = await raw.pttl(key);
      assert.ok(pttl > 25_000 && pttl <= 30_000, `key TTL ${pttl}`);
      await reg.remove("gw-1", [
        { userId: u, deviceId: "a" },
        { userId: u, deviceId: "b" },
      ]);
      assert.equal(await raw.exists(key), 0, "the last removal deletes the key");
    });

    it("one hash per conversation, field gatewayId → deadline, key TTL as a backstop; expired fields deleted lazily", async () => {
      let now = 1_800_000_000_000;
      const timed = new RedisConnectionRegistry(await openRedis(redisUrl), { prefix, ttlMs: 30_000, clock: () => now });
      try {
        const c = randomUuid();
        await timed.addTopics("gw-old", [c]);
        now += 20_000;
        await timed.addTopics("gw-new", [c]);
        const key = `${prefix}topic:${c}`;
        assert.deepEqual(await keysUnder(raw, key), [key]);
        assert.deepEqual(await raw.hgetall(key), { "gw-old": String(now - 20_000 + 30_000), "gw-new": String(now + 30_000) });
        const pttl = await raw.pttl(key);
        assert.ok(pttl > 25_000 && pttl <= 30_000, `key TTL ${pttl}`);
        now += 15_000;
        assert.deepEqual((await timed.lookupTopics([c])).get(c), ["gw-new"]);
        await eventually("expired field deleted", async () => !(await raw.hexists(key, "gw-old")));
        assert.equal(await raw.hexists(key, "gw-new"), 1);
        await timed.removeTopics("gw-new", [c]);
        assert.equal(await raw.exists(key), 0, "the last removal deletes the key");
      } finally {
        await timed.close();
      }
    });

    it("lookup deletes expired entries lazily, and only those", async () => {
      let now = 1_800_000_000_000;
      const timed = new RedisConnectionRegistry(await openRedis(redisUrl), { prefix, ttlMs: 1000, clock: () => now });
      try {
        const u = randomUuid();
        await timed.add("gw-old", [{ userId: u, deviceId: "a" }]);
        now += 500;
        await timed.add("gw-new", [{ userId: u, deviceId: "b" }]);
        now += 600;
        assert.deepEqual((await timed.lookup([u])).get(u), ["gw-new"]);
        const key = `${prefix}conn:${u}`;
        await eventually("expired field deleted", async () => !(await raw.hexists(key, "a")));
        assert.equal(await raw.hexists(key, "b"), 1);
      } finally {
        await timed.close();
      }
    });
  });

  describe("RedisConnectionRegistry: Redis down and back (throwaway server)", () => {
    let server: ThrowawayRedis;
    let reg: RedisConnectionRegistry;
    before(async () => {
      server = await ThrowawayRedis.start();
      reg = new RedisConnectionRegistry(await openRedis(server.url, { commandTimeoutMs: 1000 }), { prefix });
    });
    after(async () => {
      await reg.close();
      await server.stop();
    });

    it("calls reject fast with Unavailable while the server is down, and work again once it is back", async () => {
      const u = randomUuid();
      await reg.add("gw-1", [{ userId: u, deviceId: "d" }]);
      assert.deepEqual((await reg.lookup([u])).get(u), ["gw-1"]);

      await server.stop();
      const unavailable = (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable;
      for (const call of [
        () => reg.add("gw-1", [{ userId: u, deviceId: "d2" }]),
        () => reg.lookup([u]),
        () => reg.refresh("gw-1", [{ userId: u, deviceId: "d" }]),
        () => reg.remove("gw-1", [{ userId: u, deviceId: "d" }]),
        () => reg.removeUsers("gw-1", [u]),
        () => reg.addTopics("gw-1", [u]),
        () => reg.removeTopics("gw-1", [u]),
        () => reg.lookupTopics([u]),
      ]) {
        const t = Date.now();
        await assert.rejects(call(), unavailable);
        assert.ok(Date.now() - t < 1500, "fails fast");
      }

      await server.start(); // empty: no persistence
      await eventually("registry usable again", async () => {
        await reg.refresh("gw-1", [{ userId: u, deviceId: "d" }]);
        return true;
      });
      assert.deepEqual((await reg.lookup([u])).get(u), ["gw-1"], "the gateway's refresh wrote its entries back");
    });
  });
}
