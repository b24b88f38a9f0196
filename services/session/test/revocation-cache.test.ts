import assert from "node:assert/strict";
import { test } from "node:test";
import { RevocationCache } from "../src/revocation-cache.js";

function setup(opts: { maxEntries?: number; activeTtlMs?: number } = {}) {
  const clock = { t: 1_000, now() { return this.t; } };
  const revoked = new Set<string>();
  const loads: string[] = [];
  let gate: Promise<void> = Promise.resolve();
  const cache = new RevocationCache(
    async (id) => {
      loads.push(id);
      const answer = revoked.has(id);
      await gate;
      return answer;
    },
    clock,
    opts,
  );
  return {
    cache, clock, revoked, loads,
    hold() {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => { release(); gate = Promise.resolve(); };
    },
  };
}

test("a miss reads the store once, however many ask at the same time", async () => {
  const { cache, loads, hold } = setup();
  const release = hold();
  const answers = Promise.all([cache.isRevoked("s1"), cache.isRevoked("s1"), cache.isRevoked("s1")]);
  release();
  assert.deepEqual(await answers, [false, false, false]);
  assert.deepEqual(await cache.isRevoked("s1"), false);
  assert.deepEqual(loads, ["s1"]);
});

test("own revocations apply at once, also over a read in flight", async () => {
  const { cache, loads, hold } = setup();
  assert.equal(await cache.isRevoked("s1"), false);
  cache.markRevoked("s1");
  assert.equal(await cache.isRevoked("s1"), true);

  const release = hold();
  const inFlight = cache.isRevoked("s2"); // the store still says active
  cache.markRevoked("s2");
  release();
  assert.equal(await inFlight, true);
  assert.equal(await cache.isRevoked("s2"), true);
  cache.markActive("s2"); // revocation is final
  assert.equal(await cache.isRevoked("s2"), true);
  assert.deepEqual(loads, ["s1", "s2"]);
});

test("active answers are re-read after their TTL; revoked ones are not", async () => {
  const { cache, clock, revoked, loads } = setup({ activeTtlMs: 100 });
  assert.equal(await cache.isRevoked("s1"), false);
  revoked.add("s1"); // revoked elsewhere
  clock.t += 99;
  assert.equal(await cache.isRevoked("s1"), false);
  clock.t += 1;
  assert.equal(await cache.isRevoked("s1"), true);
  clock.t += 10_000;
  assert.equal(await cache.isRevoked("s1"), true);
  assert.deepEqual(loads, ["s1", "s1"]);
});

test("holds at most maxEntries, forgetting the least recently used", async () => {
  const { cache, loads } = setup({ maxEntries: 2 });
  await cache.isRevoked("a");
  await cache.isRevoked("b");
  await cache.isRevoked("a"); // a is now the most recent
  await cache.isRevoked("c"); // evicts b
  assert.equal(cache.size, 2);
  await cache.isRevoked("a");
  await cache.isRevoked("b");
  assert.deepEqual(loads, ["a", "b", "c", "b"]);
});

test("a failed read is not cached", async () => {
  let fail = true;
  const cache = new RevocationCache(async () => {
    if (fail) throw new Error("db down");
    return false;
  }, { now: () => 0 });
  await assert.rejects(cache.isRevoked("s"), /db down/);
  fail = false;
  assert.equal(await cache.isRevoked("s"), false);
});
