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
  });
}
