import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { StaticDiscovery } from "../discovery/discovery-static.js";
import { HealthRegistry, ServingStatus } from "../grpc-health.js";
import { MemoryConnectionRegistry } from "../registry/connection-registry-memory.js";
import {
  discoveryChecks,
  followReadiness,
  PROBE_ID,
  Readiness,
  readinessConfig,
  readinessHttp,
  registryCheck,
  untilDeregistered,
  type ReadinessCheck,
} from "../readiness.js";

/** A check whose outcome the test sets; counts its calls. */
function fake(name: string) {
  const state = { calls: 0, fail: undefined as Error | undefined, hang: false, release: undefined as (() => void) | undefined, signals: [] as AbortSignal[] };
  const check: ReadinessCheck = {
    name,
    check: (signal) => {
      state.calls++;
      state.signals.push(signal);
      if (state.hang) return new Promise<void>((resolve) => (state.release = resolve));
      return state.fail ? Promise.reject(state.fail) : Promise.resolve();
    },
  };
  return { check, state };
}

/** `p`, failing after `ms` (the timer also keeps the event loop alive while the test waits on unref'd timers). */
async function within<T>(what: string, p: Promise<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

describe("Readiness", () => {
  it("is not ready while starting, then ready while every check passes", async () => {
    const r = new Readiness({ cacheMs: 0 });
    const starting = await r.report();
    assert.deepEqual({ ready: starting.ready, state: starting.state, failing: starting.failing }, { ready: false, state: "starting", failing: ["starting"] });
    const a = fake("postgres");
    const b = fake("redis");
    r.begin([a.check, b.check]);
    const rep = await r.report();
    assert.equal(rep.ready, true);
    assert.equal(rep.state, "serving");
    assert.deepEqual(rep.failing, []);
    assert.deepEqual(rep.checks.map((c) => [c.name, c.ok]), [["postgres", true], ["redis", true]]);
    assert.equal(r.ready, true);
  });

  it("names the failing check and its error; the HTTP answer is 503 with that JSON body", async () => {
    const r = new Readiness({ cacheMs: 0 });
    const a = fake("postgres");
    const b = fake("redis");
    r.begin([a.check, b.check]);
    b.state.fail = new Error("ECONNREFUSED 127.0.0.1:6379");
    const rep = await r.report();
    assert.equal(rep.ready, false);
    assert.deepEqual(rep.failing, ["redis"]);
    assert.equal(rep.checks[1]!.error, "ECONNREFUSED 127.0.0.1:6379");
    const http = readinessHttp(rep);
    assert.equal(http.status, 503);
    const body = JSON.parse(http.body) as { status: string; failing: string[]; checks: { name: string; ok: boolean; error?: string }[] };
    assert.equal(body.status, "not ready");
    assert.deepEqual(body.failing, ["redis"]);
    assert.deepEqual(body.checks.map((c) => [c.name, c.ok]), [["postgres", true], ["redis", false]]);
    b.state.fail = undefined;
    assert.equal(readinessHttp(await r.report()).status, 200, "ready again once the backend answers");
  });

  it("a check that throws synchronously fails like one that rejects", async () => {
    const r = new Readiness({ cacheMs: 0 });
    r.begin([{ name: "broken", check: () => { throw new Error("boom"); } }]);
    const rep = await r.report();
    assert.deepEqual(rep.failing, ["broken"]);
    assert.equal(rep.checks[0]!.error, "boom");
  });

  it("a hanging check fails at its deadline (its signal aborted) and is not called again while it hangs", async () => {
    const r = new Readiness({ cacheMs: 0, timeoutMs: 50 });
    const ok = fake("postgres");
    const hung = fake("cassandra");
    hung.state.hang = true;
    r.begin([ok.check, hung.check]);
    const started = performance.now();
    const rep = await r.report();
    assert.ok(performance.now() - started >= 45, "waited for the deadline");
    assert.deepEqual(rep.failing, ["cassandra"]);
    assert.match(rep.checks[1]!.error ?? "", /no answer within 50 ms/);
    assert.equal(hung.state.signals[0]!.aborted, true, "the check's signal is aborted at the deadline");
    const again = await r.report();
    assert.deepEqual(again.failing, ["cassandra"]);
    assert.equal(hung.state.calls, 1, "the hung call is waited on, not repeated");
    assert.equal(ok.state.calls, 2);
    hung.state.hang = false;
    hung.state.release!();
    const back = await r.report();
    assert.equal(back.ready, true, "the late answer counts as an answer");
  });

  it("reuses a fresh report (probe storms hit the backends once) and shares one evaluation between concurrent callers", async () => {
    const clock = { now: 1000 };
    const r = new Readiness({ cacheMs: 1000, clock: () => clock.now });
    const a = fake("redis");
    r.begin([a.check]);
    const storm = await Promise.all(Array.from({ length: 50 }, () => r.report()));
    assert.ok(storm.every((x) => x === storm[0]), "one report for all");
    assert.equal(a.state.calls, 1);
    clock.now += 999;
    await r.report();
    assert.equal(a.state.calls, 1, "still fresh");
    clock.now += 1;
    await r.report();
    assert.equal(a.state.calls, 2, "stale: checked again");
  });

  it("draining: not ready for good, no check runs, listeners told once", async () => {
    const r = new Readiness({ cacheMs: 0 });
    const a = fake("redis");
    r.begin([a.check]);
    const seen: boolean[] = [];
    r.onChange((ready) => seen.push(ready));
    await r.report();
    r.drain();
    r.drain();
    const rep = await r.report();
    assert.deepEqual({ ready: rep.ready, state: rep.state, failing: rep.failing }, { ready: false, state: "draining", failing: ["draining"] });
    assert.equal(JSON.parse(readinessHttp(rep).body).status, "draining");
    r.begin([a.check]);
    assert.equal((await r.report()).state, "draining", "begin() after drain() changes nothing");
    assert.equal(a.state.calls, 1);
    assert.deepEqual(seen, [true, false]);
  });

  it("a drain that begins while checks run wins over their result", async () => {
    const r = new Readiness({ cacheMs: 0 });
    const a = fake("redis");
    a.state.hang = true;
    r.begin([a.check]);
    const pending = r.report();
    r.drain();
    a.state.release!();
    assert.equal((await pending).state, "draining");
    assert.equal(r.ready, false);
  });

  it("watch() re-checks in the background and gRPC health follows (followReadiness)", async () => {
    const r = new Readiness({ cacheMs: 0 });
    const a = fake("redis");
    r.begin([a.check]);
    await r.report();
    const health = new HealthRegistry(["parley.x.v1.XService"]);
    followReadiness(health, ["parley.x.v1.XService"], r);
    assert.equal(health.get(""), ServingStatus.SERVING);
    const changed = new Promise<boolean>((resolve) => r.onChange(resolve));
    a.state.fail = new Error("down");
    r.watch(20);
    try {
      assert.equal(await within("not ready", changed), false);
      assert.equal(health.get(""), ServingStatus.NOT_SERVING);
      assert.equal(health.get("parley.x.v1.XService"), ServingStatus.NOT_SERVING);
      const back = new Promise<boolean>((resolve) => r.onChange(resolve));
      a.state.fail = undefined;
      assert.equal(await within("ready again", back), true);
      assert.equal(health.get("parley.x.v1.XService"), ServingStatus.SERVING);
    } finally {
      r.close();
    }
  });

  it("readinessConfig: defaults and bounds", () => {
    assert.deepEqual(readinessConfig({}), { timeoutMs: 1000, cacheMs: 1000, intervalMs: 5000 });
    assert.deepEqual(readinessConfig({ PARLEY_READINESS_TIMEOUT_MS: "250", PARLEY_READINESS_CACHE_MS: "0" }).timeoutMs, 250);
    assert.throws(() => readinessConfig({ PARLEY_READINESS_TIMEOUT_MS: "5" }), /PARLEY_READINESS_TIMEOUT_MS/);
  });
});

describe("readiness checks", () => {
  it("registryCheck reads one probe id (one round trip) and reports the registry's failure", async () => {
    const registry = new MemoryConnectionRegistry();
    const looked: string[][] = [];
    const spy = {
      lookup: async (ids: readonly string[]) => {
        looked.push([...ids]);
        return registry.lookup(ids);
      },
    };
    await registryCheck("redis", spy).check(new AbortController().signal);
    assert.deepEqual(looked, [[PROBE_ID]]);
    const failing = registryCheck("redis", { lookup: () => Promise.reject(new Error("registry lookup: redis: Connection is closed.")) });
    const r = new Readiness({ cacheMs: 0 });
    r.begin([failing]);
    assert.deepEqual((await r.report()).failing, ["redis"]);
  });

  it("discoveryChecks: an etcd check when discovery can be pinged, none otherwise", async () => {
    assert.deepEqual(discoveryChecks(undefined), []);
    assert.deepEqual(discoveryChecks(new StaticDiscovery()), []);
    let pinged = 0;
    const etcd = Object.assign(new StaticDiscovery(), {
      ping(this: StaticDiscovery) {
        assert.ok(this instanceof StaticDiscovery, "called on the discovery");
        pinged++;
        return Promise.resolve();
      },
    });
    const checks = discoveryChecks(etcd);
    assert.deepEqual(checks.map((c) => c.name), ["etcd"]);
    await checks[0]!.check(new AbortController().signal);
    assert.equal(pinged, 1);
  });

  it("untilDeregistered resolves when the own entry leaves the view, or at its deadline", async () => {
    const d = new StaticDiscovery();
    const reg = await d.register({ kind: "router", id: "router-1", url: "http://127.0.0.1:1" });
    const gone = untilDeregistered(d, "router", "router-1", 5000);
    await reg.close();
    assert.equal(await gone, true);
    assert.equal(await untilDeregistered(d, "router", "router-1", 5000), true, "already gone");
    await d.register({ kind: "router", id: "router-2", url: "http://127.0.0.1:2" });
    const started = performance.now();
    assert.equal(await untilDeregistered(d, "router", "router-2", 30), false);
    assert.ok(performance.now() - started >= 25, "waited for the deadline");
  });
});
