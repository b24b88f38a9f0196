import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { pino } from "pino";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { StaticDiscovery } from "../discovery/discovery-static.js";
import { createClient, dialGrpc, type Routes } from "../rpc.js";
import { opsConfig, startServiceProcess, type ServiceProcess } from "../service-main.js";
import { until } from "../testing/wait.js";

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((res) => (resolve = res));
  return { promise, resolve };
}

/** A pino logger whose lines the test reads (and waits for). */
function capturedLogger() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n")) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const logger = pino({ level: "info" }, stream);
  const line = async (msg: string) => {
    await until(`log "${msg}"`, () => lines.some((l) => l.msg === msg));
    return lines.find((l) => l.msg === msg)!;
  };
  return { logger, lines, line };
}

/** The events of one run, in order (start, check, close, ...). */
function fixture() {
  const events: string[] = [];
  const gate = { started: deferred(), release: deferred(), entered: deferred() };
  let checkFails: Error | undefined;
  const routes: Routes = (router) =>
    router.service(GroupsService, {
      async listPushCandidates(req) {
        if (req.conversationId === "block") {
          gate.entered.resolve();
          await gate.release.promise;
        }
        events.push(`rpc ${req.conversationId}`);
        return { candidates: req.userIds.map((userId) => ({ userId })) };
      },
    });
  const startGate = deferred();
  const p: ServiceProcess = {
    kind: "groups",
    host: "127.0.0.1",
    port: 0,
    logLevel: "silent",
    services: [GroupsService],
    async start() {
      events.push("start");
      await startGate.promise;
      return {
        routes,
        checks: [
          {
            name: "postgres",
            check: async () => {
              if (checkFails) throw checkFails;
            },
          },
        ],
        close: async () => {
          events.push("context closed");
        },
      };
    },
  };
  return {
    p,
    events,
    gate,
    startGate,
    setCheck: (err: Error | undefined) => (checkFails = err),
  };
}

/** Static discovery as a process discovery (close, and a ping: the etcd check). */
function discovery() {
  const pings = { n: 0 };
  const d = Object.assign(new StaticDiscovery(), {
    close: async () => {},
    ping: async () => {
      pings.n++;
    },
  });
  return { d, pings };
}

describe("startServiceProcess", { timeout: 30_000 }, () => {
  it("ops port first (logged; starting = 503), then readiness from the context's checks and etcd; gRPC health follows it", async () => {
    const f = fixture();
    const { d, pings } = discovery();
    const log = capturedLogger();
    const env = { PARLEY_INSTANCE_ID: "groups-t1", PARLEY_READINESS_CACHE_MS: "0" };
    const starting = startServiceProcess(f.p, env, { logger: log.logger, discovery: d });
    const opsLine = await log.line("ops server listening");
    const opsUrl = String(opsLine.url);
    // While the context is being built: alive, not ready.
    assert.equal((await fetch(`${opsUrl}/healthz`)).status, 200);
    const early = await fetch(`${opsUrl}/readyz`);
    assert.equal(early.status, 503);
    assert.deepEqual(((await early.json()) as { failing: string[] }).failing, ["starting"]);
    f.startGate.resolve();
    const s = await starting;
    try {
      assert.equal(s.ops.url, opsUrl);
      assert.equal(d.resolve("groups", "groups-t1")?.url, s.server.url, "registered in discovery");
      const ready = await fetch(`${opsUrl}/readyz`);
      assert.equal(ready.status, 200);
      const body = (await ready.json()) as { checks: { name: string }[] };
      assert.deepEqual(body.checks.map((c) => c.name), ["postgres", "etcd"]);
      assert.ok(pings.n >= 1, "etcd pinged");

      const transport = dialGrpc(s.server.url);
      try {
        const health = createClient(Health, transport);
        assert.equal((await health.check({ service: "" })).status, ServingStatus.SERVING);
        f.setCheck(new Error("the database is gone"));
        const bad = await fetch(`${opsUrl}/readyz`);
        assert.equal(bad.status, 503);
        assert.deepEqual(((await bad.json()) as { failing: string[] }).failing, ["postgres"]);
        assert.equal((await health.check({ service: "" })).status, ServingStatus.NOT_SERVING);
        assert.equal((await health.check({ service: GroupsService.typeName })).status, ServingStatus.NOT_SERVING);
        f.setCheck(undefined);
        assert.equal((await fetch(`${opsUrl}/readyz`)).status, 200);
        assert.equal((await health.check({ service: GroupsService.typeName })).status, ServingStatus.SERVING);
      } finally {
        transport.close();
      }
    } finally {
      await s.stop();
    }
  });

  it("stop(): not ready and out of discovery first, finishes the RPC in flight, then closes the context and the ops port", async () => {
    const f = fixture();
    f.startGate.resolve();
    const { d } = discovery();
    const s = await startServiceProcess(f.p, { PARLEY_INSTANCE_ID: "groups-t2", PARLEY_READINESS_CACHE_MS: "0" }, {
      logger: capturedLogger().logger,
      discovery: d,
    });
    const transport = dialGrpc(s.server.url);
    try {
      const client = createClient(GroupsService, transport);
      const call = client.listPushCandidates({ conversationId: "block", userIds: ["a", "b"] });
      await f.gate.entered.promise;
      const unlisted = new Promise<void>((resolve) => {
        const stopWatching = d.watch("groups", () => {
          if (!d.resolve("groups", "groups-t2")) {
            f.events.push("deregistered");
            stopWatching();
            resolve();
          }
        });
      });
      let stopped = false;
      const stopping = s.stop().then(() => {
        stopped = true;
        f.events.push("stopped");
      });
      await unlisted;
      // Draining: alive, not ready, and the call still running.
      const readyz = await fetch(`${s.ops.url}/readyz`);
      assert.equal(readyz.status, 503);
      assert.equal(((await readyz.json()) as { status: string }).status, "draining");
      assert.equal((await fetch(`${s.ops.url}/healthz`)).status, 200, "liveness holds while draining");
      assert.equal(stopped, false, "stop() waits for the call in flight");
      assert.equal(s.server.health.get(""), ServingStatus.NOT_SERVING);
      f.gate.release.resolve();
      assert.equal((await call).candidates.length, 2, "the call in flight completed");
      await stopping;
      assert.deepEqual(f.events, ["start", "deregistered", "rpc block", "context closed", "stopped"]);
      await assert.rejects(fetch(`${s.ops.url}/healthz`), "the ops port is closed");
      await s.stop(); // idempotent
    } finally {
      transport.close();
    }
  });

  it("a failing start closes the ops port and rethrows", async () => {
    const f = fixture();
    f.p.start = async () => {
      throw new Error("no database");
    };
    const log = capturedLogger();
    const starting = startServiceProcess(f.p, {}, { logger: log.logger, discovery: discovery().d });
    await assert.rejects(starting, /no database/);
    const url = String((await log.line("ops server listening")).url);
    await assert.rejects(fetch(`${url}/healthz`));
  });

  it("opsConfig: defaults and the ops port", () => {
    assert.deepEqual(opsConfig({}), {
      opsPort: 0,
      readiness: { timeoutMs: 1000, cacheMs: 1000, intervalMs: 5000 },
      rpcDrainMs: 5000,
      deregisterWaitMs: 2000,
    });
    assert.equal(opsConfig({ PARLEY_OPS_PORT: "9464" }).opsPort, 9464);
    assert.throws(() => opsConfig({ PARLEY_OPS_PORT: "70000" }), /PARLEY_OPS_PORT/);
  });
});
