import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomUuid } from "../../../lib/ids.js";
import type { Presence, PresenceStore, PresenceTiming } from "../src/presence-store.js";

export const CONTRACT_TIMING: PresenceTiming = { ttlMs: 60_000, dampMs: 1000 };

/**
 * The contract of every PresenceStore adapter. `open` builds a store with the given
 * timing; stores opened by one factory share their backend (a Redis prefix), like
 * several presence instances do.
 */
export function describePresenceStore(name: string, open: (timing: PresenceTiming) => Promise<PresenceStore>) {
  describe(`PresenceStore contract: ${name}`, () => {
    const { ttlMs, dampMs } = CONTRACT_TIMING;
    let store: PresenceStore;
    before(async () => {
      store = await open(CONTRACT_TIMING);
    });
    after(() => store.close());
    // Each test has its own time line far from the others (the due set is shared).
    let base = 1_800_000_000_000;
    const epoch = () => (base += 10_000_000);

    /** The changes a sweep at `at` publishes for `users` (other tests' users are ignored). */
    async function sweep(at: number, users: readonly string[]): Promise<Presence[]> {
      return (await store.sweep(at, 10_000)).filter((p) => users.includes(p.userId));
    }
    const state = async (u: string, at: number) => (await store.get([u], at))[0]!;

    it("says offline with no last-seen for an unknown user", async () => {
      const u = randomUuid();
      assert.deepEqual(await store.get([u], epoch()), [{ userId: u, state: "offline", lastSeenMs: 0 }]);
    });

    it("publishes online once it held for the damping window; get answers the published state", async () => {
      const t0 = epoch();
      const u = randomUuid();
      assert.deepEqual(await store.report("gw-1", [{ userId: u, state: "online" }], [], t0), [], "damped: nothing at once");
      assert.equal((await state(u, t0)).state, "offline", "not published yet");
      assert.deepEqual(await sweep(t0 + dampMs - 1, [u]), []);
      assert.deepEqual(await sweep(t0 + dampMs, [u]), [{ userId: u, state: "online", lastSeenMs: t0 + dampMs }]);
      assert.deepEqual(await state(u, t0 + dampMs + 5), { userId: u, state: "online", lastSeenMs: t0 + dampMs + 5 });
      assert.deepEqual(await sweep(t0 + 3 * dampMs, [u]), [], "published once");
    });

    it("online → away → offline after the TTL, with last seen = the last report", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t0);
      assert.deepEqual((await sweep(t0 + dampMs, [u])).map((p) => p.state), ["online"]);
      const t1 = t0 + 5000;
      await store.report("gw-1", [{ userId: u, state: "away" }], [], t1);
      assert.deepEqual((await sweep(t1 + dampMs, [u])).map((p) => p.state), ["away"]);
      assert.equal((await state(u, t1 + dampMs)).state, "away");
      // The gateway stops reporting (it died): the entry expires at t1 + ttl.
      assert.deepEqual(await sweep(t1 + ttlMs - 1, [u]), [], "still away before the TTL");
      assert.deepEqual(await sweep(t1 + ttlMs + dampMs, [u]), [{ userId: u, state: "offline", lastSeenMs: t1 }]);
      assert.deepEqual(await state(u, t1 + ttlMs + 2 * dampMs), { userId: u, state: "offline", lastSeenMs: t1 });
    });

    it("a user with several devices shows their most active state; offline once the last gateway lets go", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "away" }], [], t0);
      await store.report("gw-2", [{ userId: u, state: "online" }], [], t0);
      assert.deepEqual((await sweep(t0 + dampMs, [u])).map((p) => p.state), ["online"]);
      await store.report("gw-2", [], [u], t0 + 2000);
      assert.deepEqual((await sweep(t0 + 2000 + dampMs, [u])).map((p) => p.state), ["away"], "gw-1's device is away");
      await store.report("gw-1", [], [u], t0 + 5000);
      assert.deepEqual(await sweep(t0 + 5000 + dampMs, [u]), [{ userId: u, state: "offline", lastSeenMs: t0 + 5000 }]);
    });

    it("damps flapping: online → offline → online within the window publishes nothing", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t0);
      await sweep(t0 + dampMs, [u]);
      const t1 = t0 + 10_000;
      await store.report("gw-1", [], [u], t1);
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t1 + dampMs / 2);
      assert.deepEqual(await sweep(t1 + 3 * dampMs, [u]), [], "nothing published");
      assert.equal((await state(u, t1 + 3 * dampMs)).state, "online");
      // A change that holds the whole window is published; the window restarts with each change.
      await store.report("gw-1", [{ userId: u, state: "away" }], [], t1 + 10_000);
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t1 + 10_000 + dampMs / 2);
      await store.report("gw-1", [{ userId: u, state: "away" }], [], t1 + 10_000 + dampMs - 1);
      assert.deepEqual(await sweep(t1 + 10_000 + dampMs, [u]), [], "the last change has not held yet");
      assert.deepEqual((await sweep(t1 + 10_000 + 2 * dampMs - 1, [u])).map((p) => p.state), ["away"]);
    });

    it("a gateway's newer report keeps the user online past the first report's TTL", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t0);
      assert.deepEqual((await sweep(t0 + dampMs, [u])).map((p) => p.state), ["online"]);
      assert.deepEqual(await store.report("gw-1", [{ userId: u, state: "online" }], [], t0 + ttlMs / 2), []);
      assert.deepEqual(await sweep(t0 + ttlMs + 1, [u]), []);
      assert.equal((await state(u, t0 + ttlMs + 1)).state, "online");
      assert.deepEqual(await sweep(t0 + ttlMs / 2 + ttlMs + dampMs, [u]), [{ userId: u, state: "offline", lastSeenMs: t0 + ttlMs / 2 }]);
    });

    it("an offline report from a gateway that did not hold the user changes nothing", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t0);
      await store.report("gw-2", [], [u], t0 + 10);
      assert.deepEqual((await sweep(t0 + dampMs + 10, [u])).map((p) => p.state), ["online"]);
      const never = randomUuid();
      assert.deepEqual(await store.report("gw-1", [], [never], t0), []);
      assert.deepEqual(await store.get([never], t0), [{ userId: never, state: "offline", lastSeenMs: 0 }]);
      assert.deepEqual(await sweep(t0 + ttlMs * 3, [never]), []);
    });

    it("one report for many users is one round trip; get answers many users at once, in the order asked", async () => {
      const t0 = epoch();
      const users = Array.from({ length: 40 }, () => randomUuid());
      const on = users.filter((_, i) => i % 2 === 0);
      const trips = store.stats.roundTrips;
      const commands = store.stats.commands;
      await store.report("gw-batch", on.map((userId) => ({ userId, state: "online" as const })), [], t0);
      assert.equal(store.stats.roundTrips - trips, 1);
      assert.equal(store.stats.commands - commands, on.length);
      assert.equal((await sweep(t0 + dampMs, users)).length, on.length);
      const asked = [...users].reverse();
      const got = await store.get(asked, t0 + dampMs);
      assert.deepEqual(got.map((p) => p.userId), asked);
      for (const p of got) assert.equal(p.state, on.includes(p.userId) ? "online" : "offline");
      assert.deepEqual(await store.get([], t0), []);
      assert.deepEqual(await store.report("gw-batch", [], [], t0), []);
    });

    it("a sweep that is late: the next report publishes the change that held long enough", async () => {
      const t0 = epoch();
      const u = randomUuid();
      await store.report("gw-1", [{ userId: u, state: "online" }], [], t0);
      assert.deepEqual(await store.report("gw-1", [{ userId: u, state: "online" }], [], t0 + 2 * dampMs), [
        { userId: u, state: "online", lastSeenMs: t0 + 2 * dampMs },
      ]);
      assert.deepEqual(await sweep(t0 + 3 * dampMs, [u]), [], "published once");
    });

    it("with no damping window a report publishes at once", async () => {
      const s = await open({ ttlMs, dampMs: 0 });
      try {
        const t0 = epoch();
        const u = randomUuid();
        assert.deepEqual(await s.report("gw-1", [{ userId: u, state: "online" }], [], t0), [{ userId: u, state: "online", lastSeenMs: t0 }]);
        assert.deepEqual(await s.report("gw-1", [{ userId: u, state: "online" }], [], t0 + 1), [], "no change, nothing");
        assert.deepEqual(await s.report("gw-1", [], [u], t0 + 2), [{ userId: u, state: "offline", lastSeenMs: t0 + 2 }]);
      } finally {
        await s.close();
      }
    });
  });
}
