import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ErrorCode, type ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, newDevice, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();

type Receipt = Extract<ServerFrame["kind"], { case: "receipt" }>["value"];

function receiptsOf(c: FrameClient, conversationId: string): Receipt[] {
  return c.frames.flatMap((f) => (f.kind.case === "receipt" && f.kind.value.conversationId === conversationId ? [f.kind.value] : []));
}

if (backends) {
  describe("receipts and multi-device sync on the cluster (real backends, 2 gateways)", () => {
    let cluster: Cluster;
    let alice: Account;
    let bob: Account;
    let carol: Account;
    let dave: Account;
    /** Two devices each for Alice and Bob (one per gateway), one for Carol and Dave. */
    const devices = new Map<string, FrameClient[]>();
    let ref = 1;

    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: {
          ...CHEAP_PASSWORD_HASHING,
          // Receipts are stored and told in batches this far apart.
          PARLEY_READ_CURSOR_INTERVAL_MS: "50",
        },
      });
      [alice, bob, carol, dave] = (await signUpMany(cluster.gatewayUrls()[0]!, 4, "receipts")) as [Account, Account, Account, Account];
      const gateways = cluster.discovery.list("gateway").map((g) => `${g.publicUrl!.replace(/^http/, "ws")}/ws`);
      const device = async (who: Account, gw: number) => FrameClient.connect(gateways[gw]!, await newDevice(cluster.gatewayUrls()[0]!, who));
      for (const [who, n] of [
        [alice, 2],
        [bob, 2],
        [carol, 1],
        [dave, 1],
      ] as const) {
        const list: FrameClient[] = [];
        for (let i = 0; i < n; i++) list.push(await device(who, i % 2));
        devices.set(who.userId, list);
      }
    });
    after(async () => {
      for (const list of devices.values()) for (const c of list) await c.close();
      await cluster?.stop();
    });

    const dev = (who: Account, i = 0) => devices.get(who.userId)![i]!;
    const send = async (c: FrameClient, conversationId: string, body: string): Promise<bigint> => {
      const r = ref++;
      c.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } });
      const f = await c.waitFor(`ack ${body}`, (x) => x.ref === r);
      assert.equal(f.kind.case, "ack", f.kind.case === "error" ? f.kind.value.message : "");
      return f.kind.case === "ack" ? f.kind.value.seq : 0n;
    };
    const receipt = (c: FrameClient, conversationId: string, deliveredSeq: bigint, readSeq: bigint, r = 0) =>
      c.send({ ref: r, kind: { case: "receipt", value: { conversationId, deliveredSeq, readSeq } } });

    it("1:1: delivered and read reach the sender's devices; the reader's other device clears unread", async () => {
      const { conversation } = await api(cluster.gatewayUrls()[0]!, alice.token).chat.openDirectConversation({
        peer: { case: "peerUserId", value: bob.userId },
      });
      const id = conversation!.conversationId;
      let last = 0n;
      for (let i = 1; i <= 3; i++) last = await send(dev(alice), id, `m${i}`);
      await dev(bob, 1).waitFor("m3 on bob's second device", (f) => f.kind.case === "message" && f.kind.value.seq === last);

      receipt(dev(bob), id, last, 0n);
      for (const c of [dev(alice, 0), dev(alice, 1)]) {
        await c.waitFor("delivered", (f) => f.kind.case === "receipt" && f.kind.value.conversationId === id && f.kind.value.deliveredSeq === last);
      }
      receipt(dev(bob), id, 0n, 2n);
      for (const c of [dev(alice, 0), dev(alice, 1), dev(bob, 1)]) {
        const f = await c.waitFor("read 2", (x) => x.kind.case === "receipt" && x.kind.value.conversationId === id && x.kind.value.readSeq === 2n);
        assert.equal(f.kind.case === "receipt" && f.kind.value.userId, bob.userId);
      }
      assert.equal(receiptsOf(dev(bob, 0), id).length, 0, "the reporting device is not told its own receipt");
      // Bob's unread count follows the read position, whichever device read.
      const listed = await api(cluster.gatewayUrls()[1]!, bob.token).chat.listConversations({});
      const c = listed.conversations.find((x) => x.conversationId === id)!;
      assert.equal(c.readSeq, 2n);
      assert.equal(c.unreadCount, 1n);

      // Backwards and beyond the newest message: ignored and cut, nothing else changes.
      receipt(dev(bob), id, 0n, 1n);
      receipt(dev(bob), id, 0n, 99n);
      const cut = await dev(alice).waitFor("read cut to the newest", (x) => x.kind.case === "receipt" && x.kind.value.conversationId === id && x.kind.value.readSeq === last);
      assert.ok(cut);
      assert.deepEqual(
        receiptsOf(dev(alice), id).map((r) => r.readSeq).filter((s) => s > 0n),
        [2n, last],
        "the cursor never went back or past the newest message",
      );
    });

    it("group: the sender hears who read; GetReceipts counts read by N of M and lists readers", async () => {
      const { conversation } = await api(cluster.gatewayUrls()[0]!, alice.token).groups.createGroup({
        name: "readers",
        memberIds: [bob.userId, carol.userId],
      });
      const id = conversation!.conversationId;
      const seq = await send(dev(alice), id, "did you read this?");
      await dev(carol).waitFor("the message", (f) => f.kind.case === "message" && f.kind.value.seq === seq);
      receipt(dev(carol), id, seq, seq);
      const f = await dev(alice).waitFor("carol's read", (x) => x.kind.case === "receipt" && x.kind.value.conversationId === id && x.kind.value.userId === carol.userId);
      assert.equal(f.kind.case === "receipt" && f.kind.value.readSeq, seq);
      const r = await api(cluster.gatewayUrls()[0]!, alice.token).chat.getReceipts({ conversationId: id, seq, includeReaders: true });
      assert.equal(r.memberCount, 3);
      // Alice's own send counts as read by her (the gateway advances a sender's cursor).
      assert.deepEqual([...r.readerIds].sort(), [alice.userId, carol.userId].sort());
      assert.equal(r.readCount, 2);
      assert.ok(r.deliveredCount >= 2);
      // Dave is not a member: no receipts for him, and his own are ignored.
      await assert.rejects(api(cluster.gatewayUrls()[0]!, dave.token).chat.getReceipts({ conversationId: id, seq }));
      receipt(dev(dave), id, seq, seq);
      receipt(dev(bob), id, 0n, seq); // a real one after Dave's, through the same path
      await dev(alice).waitFor("bob's read", (x) => x.kind.case === "receipt" && x.kind.value.conversationId === id && x.kind.value.userId === bob.userId);
      assert.equal(receiptsOf(dev(alice), id).filter((x) => x.userId === dave.userId).length, 0);
      const again = await api(cluster.gatewayUrls()[0]!, alice.token).chat.getReceipts({ conversationId: id, seq });
      assert.equal(again.readCount, 3);
    });

    it("a malformed receipt gets INVALID_ARGUMENT; the connection survives", async () => {
      receipt(dev(carol), "nope", 1n, 1n, 501);
      const f = await dev(carol).waitFor("error", (x) => x.ref === 501);
      assert.equal(f.kind.case === "error" && f.kind.value.code, ErrorCode.INVALID_ARGUMENT);
      dev(carol).send({ ref: 502, kind: { case: "ping", value: { nonce: 7n } } });
      await dev(carol).waitFor("pong", (x) => x.ref === 502);
    });
  });
}
