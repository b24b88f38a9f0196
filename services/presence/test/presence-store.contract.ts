import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomUuid } from "../../../lib/ids.js";
import type { PresenceStore } from "../src/presence-store.js";

/** The contract of every PresenceStore adapter; `ttlMs` is the TTL the factory configured. */
export function describePresenceStore(name: string, ttlMs: number, open: () => Promise<PresenceStore>) {
  describe(`PresenceStore contract: ${name}`, () => {
    let store: PresenceStore;
    before(async () => {
      store = await open();
    });
    after(() => store.close());
    const t0 = 1_800_000_000_000;

    it("says offline with no last-seen for an unknown user", async () => {
      const u = randomUuid();
      assert.deepEqual(await store.get([u], t0), [{ userId: u, state: "offline", lastSeenMs: 0 }]);
    });

    it("is online while a gateway reports the user, offline once its last gateway lets go", async () => {
      const u = randomUuid();
      await store.report("gw-1", [u], [], t0);
      await store.report("gw-2", [u], [], t0 + 10);
      assert.equal((await store.get([u], t0 + 20))[0]?.state, "online");
      await store.report("gw-1", [], [u], t0 + 30);
      assert.equal((await store.get([u], t0 + 40))[0]?.state, "online");
      await store.report("gw-2", [], [u], t0 + 50);
      assert.deepEqual(await store.get([u], t0 + 60), [{ userId: u, state: "offline", lastSeenMs: t0 + 50 }]);
    });

    it("expires a user whose gateway stops reporting once the TTL runs out", async () => {
      const u = randomUuid();
      await store.report("gw-dead", [u], [], t0);
      assert.equal((await store.get([u], t0 + ttlMs - 1))[0]?.state, "online");
      const later = await store.get([u], t0 + ttlMs + 1);
      assert.deepEqual(later, [{ userId: u, state: "offline", lastSeenMs: t0 }]);
    });

    it("one report for many users; get answers many users at once, in the order asked", async () => {
      const users = Array.from({ length: 40 }, () => randomUuid());
      const on = users.filter((_, i) => i % 2 === 0);
      await store.report("gw-batch", on, [], t0);
      const asked = [...users].reverse();
      const got = await store.get(asked, t0 + 5);
      assert.deepEqual(
        got.map((p) => p.userId),
        asked,
      );
      for (const p of got) {
        const isOn = on.includes(p.userId);
        assert.deepEqual(p, { userId: p.userId, state: isOn ? "online" : "offline", lastSeenMs: isOn ? t0 + 5 : 0 });
      }
      assert.deepEqual(await store.get([], t0), []);
      await store.report("gw-batch", [], [], t0);
    });

    it("an offline report from a gateway that did not hold the user changes nothing", async () => {
      const u = randomUuid();
      await store.report("gw-1", [u], [], t0);
      await store.report("gw-2", [], [u], t0 + 10);
      assert.equal((await store.get([u], t0 + 20))[0]?.state, "online");
      await store.report("gw-1", [], [u], t0 + 30);
      assert.deepEqual(await store.get([u], t0 + 40), [{ userId: u, state: "offline", lastSeenMs: t0 + 30 }]);
      const never = randomUuid();
      await store.report("gw-1", [], [never], t0);
      assert.deepEqual(await store.get([never], t0), [{ userId: never, state: "offline", lastSeenMs: 0 }]);
    });

    it("a gateway's newer report keeps the user online past the first report's TTL", async () => {
      const u = randomUuid();
      await store.report("gw-1", [u], [], t0);
      await store.report("gw-1", [u], [], t0 + ttlMs / 2);
      assert.equal((await store.get([u], t0 + ttlMs + 1))[0]?.state, "online");
      assert.deepEqual(await store.get([u], t0 + ttlMs / 2 + ttlMs), [{ userId: u, state: "offline", lastSeenMs: t0 + ttlMs / 2 }]);
    });
  });
}
