import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomUuid } from "../../ids.js";
import type { ConnectionRegistry } from "../connection-registry.js";

export interface RegistryFactoryOptions {
  ttlMs: number;
  /** The clock the adapter must decide expiry by: the suite moves it. */
  clock: () => number;
}

const sorted = (xs: readonly string[] | undefined) => (xs ? [...xs].sort() : xs);

/** The contract of every ConnectionRegistry adapter. */
export function describeConnectionRegistry(name: string, open: (o: RegistryFactoryOptions) => Promise<ConnectionRegistry>) {
  describe(`ConnectionRegistry contract: ${name}`, () => {
    const ttlMs = 60_000;
    let now = 1_800_000_000_000;
    let reg: ConnectionRegistry;
    before(async () => {
      reg = await open({ ttlMs, clock: () => now });
    });
    after(() => reg.close());

    const gatewaysOf = async (userId: string) => sorted((await reg.lookup([userId])).get(userId));

    it("add/lookup: a user's devices on several gateways, each gateway listed once", async () => {
      const [u, v] = [randomUuid(), randomUuid()];
      await reg.add("gw-1", [
        { userId: u, deviceId: "phone" },
        { userId: u, deviceId: "laptop" },
        { userId: v, deviceId: "phone" },
      ]);
      await reg.add("gw-2", [{ userId: u, deviceId: "tablet" }]);
      const found = await reg.lookup([u, v]);
      assert.deepEqual(sorted(found.get(u)), ["gw-1", "gw-2"]);
      assert.deepEqual(found.get(v), ["gw-1"]);
      assert.equal(found.size, 2);
    });

    it("lookup of many users in one call: unknown users are absent; duplicates and an empty list are fine", async () => {
      const users = Array.from({ length: 50 }, () => randomUuid());
      await reg.add(
        "gw-many",
        users.filter((_, i) => i % 2 === 0).map((userId) => ({ userId, deviceId: "d" })),
      );
      const found = await reg.lookup([...users, users[0]!, randomUuid()]);
      assert.equal(found.size, 25);
      users.forEach((u, i) => assert.deepEqual(found.get(u), i % 2 === 0 ? ["gw-many"] : undefined));
      assert.equal((await reg.lookup([])).size, 0);
      await reg.add("gw-many", []);
      await reg.remove("gw-many", []);
      await reg.removeUsers("gw-many", []);
      await reg.refresh("gw-many", []);
    });

    it("lookupDevices: where each live device is; expired devices and unknown users are left out", async () => {
      const [u, v] = [randomUuid(), randomUuid()];
      await reg.add("gw-1", [
        { userId: u, deviceId: "phone" },
        { userId: u, deviceId: "laptop" },
      ]);
      await reg.add("gw-2", [{ userId: u, deviceId: "tablet" }]);
      const byDevice = (list: { deviceId: string; gatewayId: string }[] | undefined) =>
        [...(list ?? [])].sort((a, b) => a.deviceId.localeCompare(b.deviceId)).map((d) => `${d.deviceId}@${d.gatewayId}`);
      const found = await reg.lookupDevices([u, v, u]);
      assert.deepEqual(byDevice(found.get(u)), ["laptop@gw-1", "phone@gw-1", "tablet@gw-2"]);
      assert.equal(found.has(v), false);
      now += ttlMs / 2;
      await reg.refresh("gw-2", [{ userId: u, deviceId: "tablet" }]);
      now += ttlMs / 2 + 1;
      assert.deepEqual(byDevice((await reg.lookupDevices([u])).get(u)), ["tablet@gw-2"], "gw-1's devices expired");
    });

    it("adding a device on another gateway moves it there", async () => {
      const u = randomUuid();
      await reg.add("gw-1", [{ userId: u, deviceId: "d" }]);
      await reg.add("gw-2", [{ userId: u, deviceId: "d" }]);
      assert.deepEqual(await gatewaysOf(u), ["gw-2"]);
    });

    it("remove deletes an entry only while it still points at that gateway", async () => {
      const u = randomUuid();
      await reg.add("gw-1", [
        { userId: u, deviceId: "a" },
        { userId: u, deviceId: "b" },
      ]);
      await reg.add("gw-2", [{ userId: u, deviceId: "b" }]); // b reconnected to gw-2
      await reg.remove("gw-1", [
        { userId: u, deviceId: "b" }, // gw-1's late close of b: gw-2 owns it now
        { userId: u, deviceId: "never-there" },
      ]);
      assert.deepEqual(await gatewaysOf(u), ["gw-1", "gw-2"]);
      await reg.remove("gw-1", [{ userId: u, deviceId: "a" }]);
      assert.deepEqual(await gatewaysOf(u), ["gw-2"]);
      await reg.remove("gw-2", [{ userId: u, deviceId: "b" }]);
      assert.equal(await gatewaysOf(u), undefined);
    });

    it("removeUsers drops every entry of those users that points at the gateway, and nothing else", async () => {
      const [u, v, w] = [randomUuid(), randomUuid(), randomUuid()];
      await reg.add("gw-dead", [
        { userId: u, deviceId: "1" },
        { userId: u, deviceId: "2" },
        { userId: v, deviceId: "1" },
        { userId: w, deviceId: "1" },
      ]);
      await reg.add("gw-live", [{ userId: u, deviceId: "3" }]);
      await reg.removeUsers("gw-dead", [u, v, randomUuid()]);
      const found = await reg.lookup([u, v, w]);
      assert.deepEqual(found.get(u), ["gw-live"]);
      assert.equal(found.has(v), false);
      assert.deepEqual(found.get(w), ["gw-dead"], "users not named are left alone");
    });

    it("entries expire once the TTL runs out without a refresh", async () => {
      const u = randomUuid();
      const t0 = now;
      await reg.add("gw-dying", [{ userId: u, deviceId: "d" }]);
      now = t0 + ttlMs - 1;
      assert.deepEqual(await gatewaysOf(u), ["gw-dying"]);
      now = t0 + ttlMs;
      assert.equal(await gatewaysOf(u), undefined);
      now = t0 + ttlMs + 1;
      assert.equal(await gatewaysOf(u), undefined, "and stay gone");
    });

    it("an expired entry of one gateway does not hide the live entries of another", async () => {
      const u = randomUuid();
      const t0 = now;
      await reg.add("gw-old", [{ userId: u, deviceId: "phone" }]);
      now = t0 + ttlMs / 2;
      await reg.add("gw-new", [{ userId: u, deviceId: "laptop" }]);
      now = t0 + ttlMs + 1;
      assert.deepEqual(await gatewaysOf(u), ["gw-new"]);
      now = t0 + ttlMs / 2 + ttlMs;
      assert.equal(await gatewaysOf(u), undefined);
    });

    it("refresh keeps a gateway's entries alive for another TTL", async () => {
      const [u, v] = [randomUuid(), randomUuid()];
      const t0 = now;
      await reg.add("gw-1", [
        { userId: u, deviceId: "d" },
        { userId: v, deviceId: "d" },
      ]);
      now = t0 + ttlMs - 10;
      await reg.refresh("gw-1", [{ userId: u, deviceId: "d" }]);
      now = t0 + ttlMs + 1;
      const found = await reg.lookup([u, v]);
      assert.deepEqual(found.get(u), ["gw-1"]);
      assert.equal(found.has(v), false, "only the refreshed entry lives on");
      now = t0 + 2 * ttlMs - 11;
      assert.deepEqual(await gatewaysOf(u), ["gw-1"]);
      now = t0 + 2 * ttlMs - 10;
      assert.equal(await gatewaysOf(u), undefined);
    });

    it("refresh writes back missing or expired entries, and leaves a live entry of another gateway alone", async () => {
      const [lost, expired, moved, movedDead] = [randomUuid(), randomUuid(), randomUuid(), randomUuid()];
      const t0 = now;
      await reg.add("gw-1", [
        { userId: expired, deviceId: "d" },
        { userId: moved, deviceId: "d" },
        { userId: movedDead, deviceId: "d" },
      ]);
      await reg.add("gw-2", [
        { userId: moved, deviceId: "d" },
        { userId: movedDead, deviceId: "d" },
      ]);
      now = t0 + 10;
      await reg.refresh("gw-2", [{ userId: moved, deviceId: "d" }]); // gw-2 lives on; the other entry of gw-2 dies
      now = t0 + ttlMs + 5;
      const all = [lost, expired, moved, movedDead].map((userId) => ({ userId, deviceId: "d" }));
      await reg.refresh("gw-1", all);
      const found = await reg.lookup([lost, expired, moved, movedDead]);
      assert.deepEqual(found.get(lost), ["gw-1"], "missing: written again");
      assert.deepEqual(found.get(expired), ["gw-1"], "expired: written again");
      assert.deepEqual(found.get(moved), ["gw-2"], "owned by a live gateway: left alone");
      assert.deepEqual(found.get(movedDead), ["gw-1"], "owned by a dead gateway: taken back");
    });

    it("refresh and remove: a refreshed entry is still removed by its gateway", async () => {
      const u = randomUuid();
      await reg.add("gw-1", [{ userId: u, deviceId: "d" }]);
      await reg.refresh("gw-1", [{ userId: u, deviceId: "d" }]);
      await reg.remove("gw-1", [{ userId: u, deviceId: "d" }]);
      assert.equal(await gatewaysOf(u), undefined);
    });

    const topicGateways = async (conversationId: string) => sorted((await reg.lookupTopics([conversationId])).get(conversationId));

    it("addTopics/lookupTopics: the gateways holding subscribers of each conversation, each once", async () => {
      const [c1, c2, c3] = [randomUuid(), randomUuid(), randomUuid()];
      await reg.addTopics("gw-1", [c1, c2, c1]);
      await reg.addTopics("gw-2", [c1]);
      await reg.addTopics("gw-3", [c3]);
      const found = await reg.lookupTopics([c1, c2, c3]);
      assert.deepEqual(sorted(found.get(c1)), ["gw-1", "gw-2"]);
      assert.deepEqual(found.get(c2), ["gw-1"]);
      assert.deepEqual(found.get(c3), ["gw-3"]);
      assert.equal(found.size, 3);
      await reg.addTopics("gw-1", [c1]); // again: still listed once
      assert.deepEqual(await topicGateways(c1), ["gw-1", "gw-2"]);
    });

    it("lookupTopics of many conversations in one call: unknown ones are absent; duplicates and empty lists are fine", async () => {
      const ids = Array.from({ length: 50 }, () => randomUuid());
      await reg.addTopics("gw-many", ids.filter((_, i) => i % 3 === 0));
      await reg.addTopics("gw-other", ids.filter((_, i) => i % 3 === 1));
      const found = await reg.lookupTopics([...ids, ids[0]!, randomUuid()]);
      assert.equal(found.size, 34);
      ids.forEach((id, i) => assert.deepEqual(found.get(id), i % 3 === 0 ? ["gw-many"] : i % 3 === 1 ? ["gw-other"] : undefined));
      assert.equal((await reg.lookupTopics([])).size, 0);
      await reg.addTopics("gw-many", []);
      await reg.removeTopics("gw-many", []);
    });

    it("removeTopics drops only that gateway's entries of those conversations", async () => {
      const [c1, c2, c3] = [randomUuid(), randomUuid(), randomUuid()];
      await reg.addTopics("gw-1", [c1, c2, c3]);
      await reg.addTopics("gw-2", [c1, c2]);
      await reg.removeTopics("gw-1", [c1, c2, randomUuid()]);
      const found = await reg.lookupTopics([c1, c2, c3]);
      assert.deepEqual(found.get(c1), ["gw-2"]);
      assert.deepEqual(found.get(c2), ["gw-2"]);
      assert.deepEqual(found.get(c3), ["gw-1"], "conversations not named are left alone");
      await reg.removeTopics("gw-2", [c1]);
      assert.equal(await topicGateways(c1), undefined);
      await reg.removeTopics("gw-3", [c2]); // a gateway that never held it
      assert.deepEqual(await topicGateways(c2), ["gw-2"]);
    });

    it("topic entries expire once the TTL runs out; re-adding extends them, per gateway", async () => {
      const c = randomUuid();
      const t0 = now;
      await reg.addTopics("gw-1", [c]);
      await reg.addTopics("gw-2", [c]);
      now = t0 + ttlMs - 10;
      await reg.addTopics("gw-1", [c]); // gw-1's periodic refresh
      now = t0 + ttlMs - 1;
      assert.deepEqual(await topicGateways(c), ["gw-1", "gw-2"]);
      now = t0 + ttlMs;
      assert.deepEqual(await topicGateways(c), ["gw-1"], "gw-2 stopped refreshing");
      now = t0 + 2 * ttlMs - 11;
      assert.deepEqual(await topicGateways(c), ["gw-1"]);
      now = t0 + 2 * ttlMs - 10;
      assert.equal(await topicGateways(c), undefined);
      await reg.addTopics("gw-2", [c]); // written again after expiry
      assert.deepEqual(await topicGateways(c), ["gw-2"]);
    });

    it("the conversation index and the device entries do not mix", async () => {
      const id = randomUuid();
      await reg.addTopics("gw-topic", [id]);
      assert.equal(await gatewaysOf(id), undefined, "a conversation is no user");
      await reg.add("gw-device", [{ userId: id, deviceId: "d" }]);
      assert.deepEqual(await topicGateways(id), ["gw-topic"]);
      await reg.removeUsers("gw-topic", [id]);
      await reg.removeTopics("gw-device", [id]);
      assert.deepEqual(await topicGateways(id), ["gw-topic"]);
      assert.deepEqual(await gatewaysOf(id), ["gw-device"]);
      await reg.removeTopics("gw-topic", [id]);
      assert.equal(await topicGateways(id), undefined);
      assert.deepEqual(await gatewaysOf(id), ["gw-device"]);
    });

    it("topic gateway ids with unusual characters round-trip", async () => {
      const c = randomUuid();
      const gw = "gw|eu-west:1/ä";
      await reg.addTopics(gw, [c]);
      assert.deepEqual(await topicGateways(c), [gw]);
      await reg.removeTopics(gw, [c]);
      assert.equal(await topicGateways(c), undefined);
    });

    it("gateway ids with unusual characters round-trip", async () => {
      const u = randomUuid();
      const gw = "gw|eu-west:1/ä";
      await reg.add(gw, [{ userId: u, deviceId: "d|1" }]);
      assert.deepEqual(await gatewaysOf(u), [gw]);
      await reg.remove(gw, [{ userId: u, deviceId: "d|1" }]);
      assert.equal(await gatewaysOf(u), undefined);
    });
  });
}
