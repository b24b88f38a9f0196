import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { realBackend } from "../../../lib/testing/backends.js";
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

const backends = {
  postgres: realBackend("postgres"),
  redis: realBackend("redis"),
  etcd: realBackend("etcd"),
  cassandra: realBackend("cassandra"),
};
const configured = Object.values(backends).every((v) => v !== undefined);

if (configured) {
  describe("cluster on the real backends: 2 gateways, 2 routers, 2 message stores", () => {
    let cluster: Cluster;
    before(async () => {
      cluster = await startCluster({
        backends: {
          postgresUrl: backends.postgres!,
          redisUrl: backends.redis!,
          etcdUrl: backends.etcd!,
          cassandra: backends.cassandra!,
        },
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
  });
}
