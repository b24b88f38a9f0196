import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ClientFrameSchema, ErrorCode, ServerFrameSchema, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";
import { SendResponseSchema, type SendRequestSchema } from "../../gen/parley/router/v1/router_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { fakeAccessToken } from "../../lib/testing/tokens.js";
import { Readiness } from "../../lib/readiness.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { until } from "../../lib/testing/wait.js";
import { FrameClient } from "../../tools/e2e/harness.js";
import { loadConfig } from "../src/config.js";
import { Connection, type SocketPort } from "../src/core/connection.js";
import { drainConfig, drainGateway, drainPlan, type DrainTarget } from "../src/core/drain.js";
import { decodeClientFrame } from "../src/core/frames.js";
import { GatewayCore } from "../src/core/gateway-core.js";
import { CloseCode } from "../src/core/protocol.js";
import { startPublicServer } from "../src/uws/server.js";
import { fakeGroups, fakeSession } from "./fakes.js";

const logger = createLogger("drain-test", "silent");

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((res) => (resolve = res));
  return { promise, resolve };
}

/** A socket that records writes and closes, in one list (their order matters here). */
class FakeSocket implements SocketPort {
  readonly log: ({ write: ServerFrame } | { close: number; atMs: number })[] = [];
  onClose: (() => void) | undefined;
  send(data: Uint8Array | string): boolean {
    assert.ok(typeof data !== "string", "binary frames");
    this.log.push({ write: fromBinary(ServerFrameSchema, data) });
    return true;
  }
  cork(fn: () => void): void {
    fn();
  }
  close(code: number): void {
    this.log.push({ close: code, atMs: performance.now() });
    this.onClose?.();
  }
  subscribe(): void {}
  unsubscribe(): void {}
  publish(): void {}
  get closes(): number[] {
    return this.log.flatMap((e) => ("close" in e ? [e.close] : []));
  }
  get frames(): ServerFrame[] {
    return this.log.flatMap((e) => ("write" in e ? [e.write] : []));
  }
}

describe("drainPlan and drainConfig", () => {
  it("spreads the closes evenly: one batch per tick at most, never more batches than connections", () => {
    assert.deepEqual(drainPlan(200, 5000), { batches: 50, intervalMs: 100 });
    assert.deepEqual(drainPlan(3, 5000), { batches: 3, intervalMs: 5000 / 3 });
    assert.deepEqual(drainPlan(1000, 0), { batches: 1, intervalMs: 0 });
    assert.deepEqual(drainPlan(0, 5000), { batches: 1, intervalMs: 0 });
    assert.deepEqual(drainPlan(10, 50), { batches: 1, intervalMs: 0 }, "shorter than a tick: at once");
  });

  it("drainConfig: 5 s spread and a deadline 10 s later by default; the deadline must come after the spread", () => {
    assert.deepEqual(drainConfig({}), { drainMs: 5000, deadlineMs: 15_000 });
    assert.deepEqual(drainConfig({ PARLEY_GATEWAY_DRAIN_MS: "0" }), { drainMs: 0, deadlineMs: 10_000 });
    assert.deepEqual(drainConfig({ PARLEY_GATEWAY_DRAIN_MS: "2000", PARLEY_GATEWAY_DRAIN_DEADLINE_MS: "4000" }), { drainMs: 2000, deadlineMs: 4000 });
    assert.throws(() => drainConfig({ PARLEY_GATEWAY_DRAIN_MS: "5000", PARLEY_GATEWAY_DRAIN_DEADLINE_MS: "5000" }), /DEADLINE/);
  });
});

describe("drainGateway: sequencing (fake core)", () => {
  /** A core of `n` idle connections that records what happens, in order. */
  function fakeCore(n: number) {
    const events: string[] = [];
    const sockets: FakeSocket[] = [];
    const conns = Array.from({ length: n }, (_, i) => {
      const c = new Connection({ userId: `u${i}`, deviceId: `d${i}`, sessionId: `s${i}` }, "binary", 10, 0);
      const s = new FakeSocket();
      s.onClose = () => {
        c.closed = true;
        events.push(`close ${i}`);
      };
      c.socket = s;
      sockets.push(s);
      return c;
    });
    const core: DrainTarget = {
      stopAccepting: () => void events.push("stopAccepting"),
      openConnections: () => conns.filter((c) => !c.closed),
      drain: async () => void events.push("core.drain"),
    };
    return { core, events, sockets };
  }

  it("not ready and refusing first, then out of discovery, then the closes in spaced batches, then the core's drain", async () => {
    const f = fakeCore(9);
    const deregistered = deferred();
    const started = performance.now();
    const result = drainGateway(
      {
        core: f.core,
        notReady: () => void f.events.push("notReady"),
        deregister: async () => {
          f.events.push("deregister");
          await deregistered.promise;
          f.events.push("deregistered");
        },
        logger,
      },
      { spreadMs: 300, deadlineMs: 5000, tickMs: 100 },
    );
    await until("deregistration started", () => f.events.includes("deregister"));
    assert.deepEqual(f.events, ["notReady", "stopAccepting", "deregister"], "nobody is closed before the gateway left discovery");
    deregistered.resolve();
    const r = await result;
    assert.deepEqual(f.events.slice(0, 4), ["notReady", "stopAccepting", "deregister", "deregistered"]);
    assert.deepEqual(f.events.slice(4, 13).sort(), Array.from({ length: 9 }, (_, i) => `close ${i}`).sort());
    assert.equal(f.events[13], "core.drain");
    assert.deepEqual({ connections: r.connections, closed: r.closed, cut: r.cut, batches: r.batches }, { connections: 9, closed: 9, cut: 0, batches: 3 });
    for (const s of f.sockets) assert.deepEqual(s.closes, [CloseCode.DRAINING]);
    // Three batches of three, 100 ms apart (timers never fire early by more than a millisecond).
    const times = f.sockets.map((s) => (s.log[0] as { atMs: number }).atMs - started).sort((a, b) => a - b);
    const batches = [times.slice(0, 3), times.slice(3, 6), times.slice(6, 9)];
    assert.ok(batches[1]![0]! - batches[0]![2]! >= 95, `second batch ${Math.round(batches[1]![0]!)} ms, first ${Math.round(batches[0]![2]!)} ms`);
    assert.ok(batches[2]![0]! - batches[1]![2]! >= 95, `third batch ${Math.round(batches[2]![0]!)} ms, second ${Math.round(batches[1]![2]!)} ms`);
    assert.ok(batches[0]![2]! - batches[0]![0]! < 50, "a batch closes together");
  });

  it("a failing deregistration is logged and the drain goes on", async () => {
    const f = fakeCore(2);
    const r = await drainGateway(
      { core: f.core, notReady: () => {}, deregister: () => Promise.reject(new Error("etcd down")), logger },
      { spreadMs: 0, deadlineMs: 5000 },
    );
    assert.equal(r.closed, 2);
    assert.equal(f.events.at(-1), "core.drain");
  });

  it("a deregistration that hangs is bounded by the deadline", async () => {
    const f = fakeCore(1);
    const r = await drainGateway(
      { core: f.core, notReady: () => {}, deregister: () => new Promise<void>(() => {}), logger },
      { spreadMs: 0, deadlineMs: 100 },
    );
    assert.ok(r.elapsedMs >= 95 && r.elapsedMs < 2000, `took ${r.elapsedMs} ms`);
    assert.equal(f.events.at(-1), "core.drain", "the core's drain still runs (it cuts what is left)");
  });
});

/** A real GatewayCore over fakes: a router whose answers the test releases, a memory registry. */
function coreHarness(env: Record<string, string> = {}) {
  const cfg = { ...loadConfig({ PARLEY_READ_CURSOR_INTERVAL_MS: "0", PARLEY_GATEWAY_PORT: "0", ...env }), id: "gw-drain" };
  const registry = new MemoryConnectionRegistry();
  const sends: { req: MessageInitShape<typeof SendRequestSchema>; release: () => void }[] = [];
  let seq = 0;
  const groups = fakeGroups();
  const session = fakeSession();
  const core = new GatewayCore(cfg, {
    session,
    // Held until the test releases it (or, with autoAck, answered at once).
    send: async (req) => {
      const gate = deferred();
      sends.push({ req, release: gate.resolve });
      if (!harness.autoAck) await gate.promise;
      return create(SendResponseSchema, {
        conversationId: req.conversationId,
        seq: BigInt(++seq),
        messageId: `m${seq}`,
        sentAt: timestampFromMs(Date.now()),
      });
    },
    presence: undefined,
    groups,
    registry,
    clock: Date.now,
    logger,
  });
  const harness = { core, cfg, registry, sends, autoAck: false };
  return harness;
}

function sendFrame(ref: number, clientMsgId = randomUUID()) {
  return toBinary(
    ClientFrameSchema,
    create(ClientFrameSchema, { ref, kind: { case: "send", value: { clientMsgId, conversationId: randomUUID(), body: `m${ref}` } } }),
  );
}

describe("drainGateway: sends in flight (real core, fake sockets)", () => {
  async function connected(h: ReturnType<typeof coreHarness>) {
    const conn = h.core.newConnection({ userId: randomUUID(), deviceId: randomUUID(), sessionId: "s" }, "binary");
    const socket = new FakeSocket();
    socket.onClose = () => h.core.close(conn);
    h.core.open(conn, socket);
    await until("hello", () => socket.frames.some((f) => f.kind.case === "hello"));
    return { conn, socket };
  }
  const frameIn = (h: ReturnType<typeof coreHarness>, conn: Connection, bytes: Uint8Array) =>
    h.core.onFrame(conn, decodeClientFrame(bytes.slice().buffer, true, h.cfg.maxFrameBytes));

  it("a connection is closed only after its sends in flight are acked; a send arriving meanwhile is refused with its client_msg_id", async () => {
    const h = coreHarness();
    const busy = await connected(h);
    const idle = await connected(h);
    frameIn(h, busy.conn, sendFrame(1));
    frameIn(h, busy.conn, sendFrame(2));
    await until("two sends at the router", () => h.sends.length === 2);
    const drained = drainGateway({ core: h.core, notReady: () => {}, deregister: async () => {}, logger }, { spreadMs: 0, deadlineMs: 10_000 });
    await until("the idle connection closed", () => idle.socket.closes.length === 1);
    assert.deepEqual(idle.socket.closes, [CloseCode.DRAINING]);
    assert.equal(h.core.accepting, false);
    assert.deepEqual(busy.socket.closes, [], "waits for its acks");
    const late = randomUUID();
    frameIn(h, busy.conn, sendFrame(3, late));
    const refused = busy.socket.frames.find((f) => f.ref === 3);
    assert.ok(refused?.kind.case === "error", "the late send is answered at once");
    assert.equal(refused.kind.value.code, ErrorCode.UNAVAILABLE);
    assert.equal(refused.kind.value.clientMsgId, late);
    assert.equal(refused.kind.value.retryable, true);
    assert.equal(h.sends.length, 2, "the late send never reached the router");
    h.sends[0]!.release();
    await until("first ack", () => busy.socket.frames.some((f) => f.ref === 1 && f.kind.case === "ack"));
    assert.deepEqual(busy.socket.closes, [], "one ack still missing");
    h.sends[1]!.release();
    const r = await drained;
    const kinds = busy.socket.log.map((e) => ("close" in e ? `close ${e.close}` : `${e.write.kind.case} ${e.write.ref}`));
    assert.deepEqual(kinds, ["hello 0", "error 3", "ack 1", "ack 2", "close 4012"], "closed after the last ack");
    assert.deepEqual({ closed: r.closed, cut: r.cut }, { closed: 2, cut: 0 });
    assert.equal(h.core.stats.connections, 0);
    assert.equal((await h.registry.lookup([busy.conn.principal.userId, idle.conn.principal.userId])).size, 0, "registry entries removed");
  });

  it("at the deadline a connection still waiting for an ack is cut (4012), and the drain ends", async () => {
    const h = coreHarness();
    const stuck = await connected(h);
    frameIn(h, stuck.conn, sendFrame(1));
    await until("send at the router", () => h.sends.length === 1);
    const r = await drainGateway({ core: h.core, notReady: () => {}, deregister: async () => {}, logger }, { spreadMs: 0, deadlineMs: 200 });
    assert.deepEqual({ closed: r.closed, cut: r.cut }, { closed: 0, cut: 1 });
    assert.ok(r.elapsedMs >= 190 && r.elapsedMs < 3000, `took ${r.elapsedMs} ms`);
    assert.deepEqual(stuck.socket.closes, [CloseCode.DRAINING]);
    assert.ok(!stuck.socket.frames.some((f) => f.kind.case === "ack"), "never acked: the client sends it again elsewhere");
    h.sends[0]!.release();
  });

  it("a socket opened after the drain began (authenticated before it) is closed with 4012 at once", async () => {
    const h = coreHarness();
    await drainGateway({ core: h.core, notReady: () => {}, deregister: async () => {}, logger }, { spreadMs: 0, deadlineMs: 1000 });
    const conn = h.core.newConnection({ userId: randomUUID(), deviceId: randomUUID(), sessionId: "s" }, "binary");
    const socket = new FakeSocket();
    h.core.open(conn, socket);
    assert.deepEqual(socket.closes, [CloseCode.DRAINING]);
    assert.equal(h.core.stats.connections, 0);
  });
});

describe("drain over uWebSockets.js (real sockets)", { timeout: 30_000 }, () => {
  it("/healthz stays 200, /readyz and upgrades answer 503, every client gets 4012 over the spread, acks come before the close", async () => {
    const h = coreHarness({ PARLEY_FRAMES_PER_SECOND: "1000000", PARLEY_FRAME_BURST: "1000000" });
    h.autoAck = true;
    const readiness = new Readiness({ cacheMs: 0 });
    readiness.begin([{ name: "registry", check: () => h.registry.lookup([]) }]);
    const server = await startPublicServer(h.cfg, h.core, () => {}, logger, readiness);
    const base = `http://127.0.0.1:${server.port}`;
    const wsUrl = `ws://127.0.0.1:${server.port}/ws`;
    const clients: FrameClient[] = [];
    try {
      const ready = await fetch(`${base}/readyz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(((await ready.json()) as { checks: { name: string }[] }).checks.map((c) => c.name), ["registry"]);
      for (let i = 0; i < 12; i++) clients.push(await FrameClient.connect(wsUrl, fakeAccessToken(randomUUID(), randomUUID())));
      // One client sends while the drain runs (the last connected: closed in the last batch): every
      // send but one the client wrote as the close crossed it is acked or refused.
      const sender = clients.at(-1)!;
      let ref = 0;
      const answered = (r: number) => sender.frames.some((f) => f.ref === r && (f.kind.case === "ack" || f.kind.case === "error"));
      const pumping = (async () => {
        while (sender.closeCode === undefined) {
          const r = ++ref;
          sender.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: randomUUID(), body: "x" } } });
          await sender.signal.until(`answer to ${r}`, () => sender.closeCode !== undefined || answered(r), 10_000);
        }
      })();
      await sender.waitFor("a first ack", (f) => f.kind.case === "ack");

      const drained = drainGateway(
        { core: h.core, notReady: () => readiness.drain(), deregister: async () => {}, logger },
        { spreadMs: 600, deadlineMs: 10_000, tickMs: 100 },
      );
      const notReady = await fetch(`${base}/readyz`);
      assert.equal(notReady.status, 503);
      assert.deepEqual(((await notReady.json()) as { failing: string[] }).failing, ["draining"]);
      assert.equal((await fetch(`${base}/healthz`)).status, 200, "alive while draining");
      assert.equal(await FrameClient.upgradeStatus(wsUrl, ["parley.v1"], { authorization: `Bearer ${fakeAccessToken(randomUUID(), randomUUID())}` }), 503);

      const r = await drained;
      await pumping;
      assert.deepEqual({ closed: r.closed, cut: r.cut, batches: r.batches }, { closed: 12, cut: 0, batches: 6 });
      for (const c of clients) assert.equal(await c.waitForClose(), CloseCode.DRAINING);
      for (const c of clients) assert.match(c.closeReason, /reconnect to another gateway/);
      // Every send of the sender got its answer before the close (an ack, or UNAVAILABLE once its close began).
      for (let i = 1; i < ref; i++) assert.ok(answered(i), `send ${i} answered`);
      assert.ok(ref > 2, `the sender kept sending during the drain (${ref} sends) ${JSON.stringify(sender.frames.map((f) => [f.ref, f.kind.case, f.kind.case === "error" ? f.kind.value.message : ""]))}`);
      const errors = sender.frames.filter((f) => f.kind.case === "error");
      for (const e of errors) assert.ok(e.kind.case === "error" && e.kind.value.code === ErrorCode.UNAVAILABLE, "only drain refusals");
      assert.ok(sender.frames.filter((f) => f.kind.case === "ack").length >= 1);
    } finally {
      server.stopListening();
      await h.core.drain();
      await Promise.all(clients.map((c) => c.close()));
    }
  });
});
