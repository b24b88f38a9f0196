import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ownerOf } from "../../../lib/balancer.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { ThrowawayRedis } from "../../../lib/testing/redis.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient } from "../harness.js";

const PASSWORD = "correct horse battery";
const N = 1000;
/** Sends kept in flight per client (the gateway allows 256). */
const WINDOW = 128;

/** Sends `n` messages keeping at most WINDOW unacknowledged; resolves with the acked seqs. */
async function sendAll(c: FrameClient, conversationId: string, prefix: string, n: number): Promise<number[]> {
  const acked: number[] = [];
  let sent = 0;
  const inFlight = () => sent - c.frames.filter((f) => f.kind.case === "ack" || f.kind.case === "error").length;
  while (sent < n) {
    await c.signal.until("window space", () => inFlight() < WINDOW, 30_000);
    const i = sent++;
    c.send({ ref: i + 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: `${prefix} ${i}` } } });
  }
  await c.signal.until(`${prefix}: all acks`, () => inFlight() === 0, 60_000);
  for (const f of c.frames) {
    if (f.kind.case === "error") assert.fail(`send failed: ${f.kind.value.message}`);
    if (f.kind.case === "ack") acked.push(Number(f.kind.value.seq));
  }
  return acked;
}


/**
 * Sends `n` messages like a careful client: a retryable error (a backend went away)
 * is answered by resending the same frame (same client_msg_id) after a pause.
 * Resolves with every acknowledged message: client_msg_id → seq.
 */
async function sendResilient(c: FrameClient, conversationId: string, prefix: string, n: number): Promise<Map<string, number>> {
  const ids = Array.from({ length: n }, () => randomUUID());
  const acked = new Map<string, number>();
  const seen = new Set<object>();
  let next = 0;
  let inFlight = 0;
  const send = (i: number) => {
    inFlight++;
    c.send({ ref: i + 1, kind: { case: "send", value: { clientMsgId: ids[i]!, conversationId, body: `${prefix} ${i}` } } });
  };
  while (acked.size < n) {
    while (next < n && inFlight < WINDOW) send(next++);
    await c.signal.until("an answer", () => c.frames.some((f) => !seen.has(f) && (f.kind.case === "ack" || f.kind.case === "error")), 60_000);
    for (const f of c.frames) {
      if (seen.has(f)) continue;
      seen.add(f);
      if (f.kind.case === "ack") {
        inFlight--;
        acked.set(f.kind.value.clientMsgId, Number(f.kind.value.seq));
      } else if (f.kind.case === "error") {
        inFlight--;
        assert.ok(f.kind.value.retryable, `non-retryable error: ${f.kind.value.message}`);
        const i = f.ref - 1;
        setTimeout(() => send(i), 250);
      }
    }
  }
  return acked;
}

const backends = realClusterBackends();

if (backends) {
  describe("cluster on the real backends: 2 gateways, 2 routers, 2 message stores", () => {
    let cluster: Cluster;
    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: { PARLEY_FRAMES_PER_SECOND: "100000", PARLEY_FRAME_BURST: "100000" },
      });
    });
    after(async () => {
      await cluster?.stop();
    });

    it(`assigns users to different gateways and carries ${N} messages each way, live, in order, stored in Cassandra`, async () => {
      const [gw] = cluster.gatewayUrls();
      const a = await api(gw!).auth.signUp({ username: `a-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const b = await api(gw!).auth.signUp({ username: `b-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const aTok = a.tokens!.accessToken;
      const bTok = b.tokens!.accessToken;

      const aGw = await api(gw!, aTok).auth.assignGateway({});
      const ca = await FrameClient.connect(aGw.wsUrl, aTok);
      // The assignment is by load: once A's gateway reports its connection, B goes elsewhere.
      await new Promise<void>((resolve) => {
        const check = () => (cluster.discovery.resolve("gateway", aGw.gatewayId)?.load ?? 0) >= 1;
        if (check()) return resolve();
        const stop = cluster.discovery.watch("gateway", () => {
          if (check()) {
            stop();
            resolve();
          }
        });
      });
      const bGw = await api(gw!, bTok).auth.assignGateway({});
      assert.notEqual(bGw.gatewayId, aGw.gatewayId, "the second user goes to the less loaded gateway");
      const cb = await FrameClient.connect(bGw.wsUrl, bTok, { encoding: "json" });
      try {
        const { conversation } = await api(gw!, aTok).chat.openDirectConversation({
          peer: { case: "peerUserId", value: b.user!.userId },
        });
        const conv = conversation!.conversationId;
        const [aAcks, bAcks] = await Promise.all([sendAll(ca, conv, "a→b", N), sendAll(cb, conv, "b→a", N)]);
        assert.deepEqual(
          [...aAcks, ...bAcks].sort((x, y) => x - y),
          Array.from({ length: 2 * N }, (_, i) => i + 1),
          "every seq 1..2N assigned exactly once",
        );
        const received = (c: FrameClient) =>
          c.frames.flatMap((f) => (f.kind.case === "message" && f.kind.value.conversationId === conv ? [f.kind.value] : []));
        await ca.signal.until("B's messages live at A", () => received(ca).length >= N, 60_000);
        await cb.signal.until("A's messages live at B", () => received(cb).length >= N, 60_000);
        for (const [c, prefix] of [
          [ca, "b→a"],
          [cb, "a→b"],
        ] as const) {
          const got = received(c);
          assert.equal(got.length, N, "no duplicates");
          const seqs = got.map((m) => Number(m.seq));
          assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "in sequence order");
          assert.deepEqual(
            got.map((m) => m.body),
            Array.from({ length: N }, (_, i) => `${prefix} ${i}`),
          );
        }
        // History (Cassandra), newest first, complete.
        const seen: number[] = [];
        let before = 0n;
        for (;;) {
          const page = await api(gw!, aTok).chat.getHistory({ conversationId: conv, beforeSeq: before, limit: 200 });
          seen.push(...page.messages.map((m) => Number(m.seq)));
          if (page.nextBeforeSeq === 0n) break;
          before = page.nextBeforeSeq;
        }
        assert.deepEqual(
          seen,
          Array.from({ length: 2 * N }, (_, i) => 2 * N - i),
        );
      } finally {
        await ca.close();
        await cb.close();
      }
    });

    it("survives kill -9 of a gateway while messages flow: its client is reassigned, catches up from history, and nothing is lost or duplicated", async () => {
      const gateways = cluster.discovery.list("gateway");
      assert.equal(gateways.length, 2);
      const [gwS, gwR] = gateways as [(typeof gateways)[0], (typeof gateways)[0]];
      const s = await api(gwS.publicUrl!).auth.signUp({ username: `s-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const r = await api(gwS.publicUrl!).auth.signUp({ username: `r-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const sTok = s.tokens!.accessToken;
      const rTok = r.tokens!.accessToken;
      const { conversation } = await api(gwS.publicUrl!, sTok).chat.openDirectConversation({
        peer: { case: "peerUserId", value: r.user!.userId },
      });
      const conv = conversation!.conversationId;
      const sender = await FrameClient.connect(`${gwS.publicUrl!.replace(/^http/, "ws")}/ws`, sTok);
      let receiver = await FrameClient.connect(`${gwR.publicUrl!.replace(/^http/, "ws")}/ws`, rTok);
      const live = new Map<number, string>();
      const record = (c: FrameClient) => {
        for (const f of c.frames) if (f.kind.case === "message" && f.kind.value.conversationId === conv) {
          const seq = Number(f.kind.value.seq);
          assert.ok(!live.has(seq) || live.get(seq) === f.kind.value.body, "a seq never carries two bodies");
          live.set(seq, f.kind.value.body);
        }
      };
      const total = 300;
      const sending = sendAll(sender, conv, "flow", total);
      // Kill the receiver's gateway once traffic is flowing.
      await receiver.signal.until("some live messages", () => receiver.frames.filter((f) => f.kind.case === "message").length >= 20, 30_000);
      const victim = cluster.processes.find((p) => p.name === gwR.id)!;
      await victim.kill();
      await receiver.waitForClose(15_000);
      record(receiver);
      const lastSeen = Math.max(...live.keys());

      // Reconnect: ask for a gateway until a live one is named (the dead one's lease runs out).
      let assigned = "";
      for (let attempt = 0; ; attempt++) {
        const a = await api(gwS.publicUrl!, rTok).auth.assignGateway({});
        try {
          receiver = await FrameClient.connect(a.wsUrl, rTok);
          assigned = a.gatewayId;
          break;
        } catch (err) {
          if (attempt > 40) throw err;
          // Wait for discovery to change (the dead gateway's lease expiring), at most 5 s.
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, 5000);
            const stop = cluster.discovery.watch("gateway", done);
            function done() {
              clearTimeout(timer);
              stop();
              resolve();
            }
          });
        }
      }
      assert.equal(assigned, gwS.id, "reassigned to the surviving gateway");
      const acked = await sending;
      // Catch up from history: everything after the last live sequence number.
      let before = 0n;
      const fromHistory = new Map<number, string>();
      for (;;) {
        const page = await api(gwS.publicUrl!, rTok).chat.getHistory({ conversationId: conv, beforeSeq: before, limit: 200 });
        for (const m of page.messages) if (Number(m.seq) > lastSeen) fromHistory.set(Number(m.seq), m.body);
        if (page.nextBeforeSeq === 0n || Number(page.nextBeforeSeq) <= lastSeen) break;
        before = page.nextBeforeSeq;
      }
      record(receiver);
      const all = new Map([...fromHistory, ...live]);
      assert.deepEqual(
        [...all.keys()].sort((x, y) => x - y),
        [...acked].sort((x, y) => x - y),
        "every acknowledged message reached the receiver, live or from history",
      );
      assert.deepEqual(
        [...all.keys()].sort((x, y) => x - y).map((k) => all.get(k)),
        Array.from({ length: total }, (_, i) => `flow ${i}`),
        "in the order sent, each once",
      );
      await sender.close();
      await receiver.close();
    });

    for (const kind of ["messagestore", "router"] as const) {
      it(`survives kill -9 of the ${kind} that owns a conversation mid-stream: no seq twice, every acknowledged message stored once`, async () => {
        const [gw] = cluster.gatewayUrls();
        const u = await api(gw!).auth.signUp({ username: `k-${randomUUID().slice(0, 8)}`, password: PASSWORD });
        const v = await api(gw!).auth.signUp({ username: `v-${randomUUID().slice(0, 8)}`, password: PASSWORD });
        const tok = u.tokens!.accessToken;
        const { conversation } = await api(gw!, tok).chat.openDirectConversation({
          peer: { case: "peerUserId", value: v.user!.userId },
        });
        const conv = conversation!.conversationId;
        const owner = ownerOf(conv, cluster.discovery.list(kind))!;
        const c = await FrameClient.connect(`${gw!.replace(/^http/, "ws")}/ws`, tok);
        const total = 300;
        const sending = sendResilient(c, conv, kind, total);
        await c.signal.until("traffic", () => c.frames.filter((f) => f.kind.case === "ack").length >= 30, 30_000);
        await cluster.processes.find((p) => p.name === owner.id)!.kill();
        const acked = await sending;
        await c.close();
        assert.ok(
          c.frames.some((f) => f.kind.case === "error" && f.kind.value.retryable),
          "the kill interrupted the stream (sends were refused and resent)",
        );
        const seqs = [...acked.values()];
        assert.equal(acked.size, total);
        assert.equal(new Set(seqs).size, total, "no sequence number assigned twice");
        // History: every acknowledged message exactly once, under its acknowledged seq.
        const history = new Map<number, string>();
        let before = 0n;
        for (;;) {
          const page = await api(gw!, tok).chat.getHistory({ conversationId: conv, beforeSeq: before, limit: 200 });
          for (const m of page.messages) {
            assert.ok(!history.has(Number(m.seq)));
            history.set(Number(m.seq), m.clientMsgId);
          }
          if (page.nextBeforeSeq === 0n) break;
          before = page.nextBeforeSeq;
        }
        for (const [clientMsgId, seq] of acked) assert.equal(history.get(seq), clientMsgId, `seq ${seq} holds its message`);
        assert.equal(new Set(history.values()).size, history.size, "no message stored twice");
        // Bring the cluster back to full strength for the tests after this one.
        await cluster.spawn(kind, Number(owner.id.split("-").pop()) - 1);
      });
    }
  });

  describe("cluster with its Redis down and back (a throwaway redis-server)", () => {
    let redis: ThrowawayRedis;
    let cluster: Cluster;
    before(async () => {
      redis = await ThrowawayRedis.start();
      cluster = await startCluster({
        backends: { ...backends, redisUrl: redis.url },
        counts: { gateway: 2, router: 1, messagestore: 1 },
        // Gateways re-register their connections every 300 ms: after Redis comes back
        // empty, the registry is whole again within that.
        extraEnv: { PARLEY_REGISTRY_TTL_SECONDS: "2", PARLEY_REGISTRY_REFRESH_MS: "300" },
      });
    });
    after(async () => {
      await cluster?.stop();
      await redis?.stop();
    });

    it("keeps storing and acking while Redis is down, no process exits, and live delivery resumes by itself when it returns", async () => {
      const [g1, g2] = cluster.discovery.list("gateway");
      const ws = (g: typeof g1) => `${g!.publicUrl!.replace(/^http/, "ws")}/ws`;
      const a = await api(g1!.publicUrl!).auth.signUp({ username: `ra-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const b = await api(g1!.publicUrl!).auth.signUp({ username: `rb-${randomUUID().slice(0, 8)}`, password: PASSWORD });
      const aTok = a.tokens!.accessToken;
      const { conversation } = await api(g1!.publicUrl!, aTok).chat.openDirectConversation({ peer: { case: "peerUserId", value: b.user!.userId } });
      const conv = conversation!.conversationId;
      const ca = await FrameClient.connect(ws(g1), aTok);
      const cb = await FrameClient.connect(ws(g2), b.tokens!.accessToken);
      let ref = 0;
      const send = (body: string) =>
        ca.send({ ref: ++ref, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: conv, body } } });
      const acks = () => ca.frames.filter((f) => f.kind.case === "ack").length;
      const live = () => cb.frames.flatMap((f) => (f.kind.case === "message" ? [f.kind.value.body] : []));
      try {
        send("before");
        await cb.signal.until("live delivery with Redis up", () => live().includes("before"), 20_000);

        await redis.stop();
        send("during");
        await ca.signal.until("the ack of a message sent while Redis is down", () => acks() === 2, 20_000);
        assert.deepEqual(ca.frames.filter((f) => f.kind.case === "error"), [], "sending needs no Redis");

        await redis.start(); // empty: every registry entry is gone
        let n = 0;
        const deadline = Date.now() + 20_000;
        while (!live().some((body) => body.startsWith("after"))) {
          assert.ok(Date.now() < deadline, "live delivery did not resume within 20 s of Redis coming back");
          send(`after ${n++}`);
          await cb.signal.until("a live message", () => live().some((body) => body.startsWith("after")), 500).catch(() => {});
        }
        for (const p of cluster.processes) assert.equal(p.exitCode, undefined, `${p.name} is still running`);

        // Nothing acknowledged is missing: history holds every message, in order, once.
        await ca.signal.until("all acks", () => acks() === 2 + n, 20_000);
        const page = await api(g1!.publicUrl!, aTok).chat.getHistory({ conversationId: conv, limit: 200 });
        const bodies = page.messages.map((m) => m.body).reverse();
        assert.deepEqual(bodies, ["before", "during", ...Array.from({ length: n }, (_, i) => `after ${i}`)]);
        assert.deepEqual(page.messages.map((m) => Number(m.seq)).reverse(), Array.from({ length: n + 2 }, (_, i) => i + 1));
      } finally {
        await ca.close();
        await cb.close();
      }
    });
  });
}
