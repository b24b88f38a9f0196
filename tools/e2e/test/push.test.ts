import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { PushPlatform } from "../../../gen/parley/client/v1/notification_service_pb.js";
import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { dialGrpc } from "../../../lib/rpc.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { until } from "../../../lib/testing/wait.js";
import { FakeWebhookReceiver, type AcceptedPush } from "../../../services/notify/test/providers/webhook-fake.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, newDevice, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();
const SECRET = "push-e2e-secret-of-at-least-32-bytes!";
/** Pushes wait this long for a delivery or read (and collapse what comes meanwhile). */
const DELAY_MS = 1500;
/** A claimed job or task comes back this long after its notify process died. */
const LEASE_MS = 3000;

if (backends) {
  describe("push notifications on the cluster (real backends, 2 gateways, webhook provider)", { timeout: 120_000 }, () => {
    let cluster: Cluster;
    let receiver: FakeWebhookReceiver;
    let alice: Account;
    let bob: Account;
    let carol: Account;
    let dave: Account;
    let url: string;
    let ref = 1;

    before(async () => {
      receiver = await FakeWebhookReceiver.start({ secret: SECRET, devices: ["bob-phone", "carol-phone", "dave-phone"] });
      cluster = await startCluster({
        backends,
        extraEnv: {
          ...CHEAP_PASSWORD_HASHING,
          PARLEY_NOTIFY_DELAY_MS: String(DELAY_MS),
          PARLEY_NOTIFY_LEASE_MS: String(LEASE_MS),
          PARLEY_NOTIFY_POLL_MS: "100",
          PARLEY_NOTIFY_RETRY_BASE_MS: "100",
          PARLEY_WEBHOOK_URL: receiver.url,
          PARLEY_WEBHOOK_SECRET: SECRET,
          PARLEY_READ_CURSOR_INTERVAL_MS: "50",
        },
      });
      url = cluster.gatewayUrls()[0]!;
      [alice, bob, carol, dave] = (await signUpMany(url, 4, "push")) as [Account, Account, Account, Account];
      for (const [who, token] of [
        [bob, "bob-phone"],
        [carol, "carol-phone"],
        [dave, "dave-phone"],
      ] as const) {
        const res = await api(url, who.token).notifications.registerPushDevice({ platform: PushPlatform.WEBHOOK, token, label: "phone" });
        assert.equal(res.created, true);
      }
    });
    after(async () => {
      await cluster?.stop();
      await receiver?.close();
    });

    /** Pushes of one conversation received since `mark` (an index into the receiver's list; 1:1 ids repeat across tests). */
    const pushesFor = (conversationId: string, mark = 0): AcceptedPush[] =>
      receiver.accepted.slice(mark).filter((p) => p.payload.data.conversation_id === conversationId);
    const direct = async (from: Account, to: Account): Promise<string> => {
      const { conversation } = await api(url, from.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: to.userId } });
      return conversation!.conversationId;
    };
    const wsUrl = (gw: number) => `${cluster.discovery.list("gateway")[gw]!.publicUrl!.replace(/^http/, "ws")}/ws`;
    const device = async (who: Account, gw = 0) => FrameClient.connect(wsUrl(gw), await newDevice(url, who));
    const send = async (c: FrameClient, conversationId: string, body: string): Promise<bigint> => {
      const r = ref++;
      c.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } });
      const f = await c.waitFor(`ack ${body}`, (x) => x.ref === r);
      assert.equal(f.kind.case, "ack", f.kind.case === "error" ? f.kind.value.message : "");
      return f.kind.case === "ack" ? f.kind.value.seq : 0n;
    };
    /**
     * Every push due before now has been sent: a message to Dave (offline) in a fresh
     * conversation is pushed after them (jobs are taken in due order), so waiting for it
     * is waiting for them.
     */
    const barrier = async (sender: FrameClient, from: Account) => {
      const id = await direct(from, dave);
      const before = pushesFor(id).length;
      await send(sender, id, `barrier ${randomUUID()}`);
      await until("the barrier's push", () => pushesFor(id).length === before + 1, 20_000);
    };
    const messagesReceivedByNotify = async (): Promise<bigint> => {
      const transport = dialGrpc(cluster.discovery.list("notify")[0]!.url);
      try {
        return (await createClient(NotifyService, transport).getStats({})).messagesReceived;
      } finally {
        transport.close();
      }
    };

    it("Bob offline: Alice's message gives exactly one push, with sender, text and ids", async () => {
      const a = await device(alice);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, bob);
        const seq = await send(a, id, "are you there?");
        await until("Bob's push", () => pushesFor(id, mark).length === 1, 20_000);
        const [p] = pushesFor(id, mark);
        assert.equal(p!.payload.device, "bob-phone");
        assert.equal(p!.payload.title, alice.username);
        assert.equal(p!.payload.body, "are you there?");
        assert.equal(p!.payload.collapse_key, id);
        assert.equal(p!.payload.data.seq, String(seq));
        assert.equal(receiver.rejected.length, 0, JSON.stringify(receiver.rejected));
        await barrier(a, alice);
        assert.equal(pushesFor(id, mark).length, 1, "exactly one push");
      } finally {
        await a.close();
      }
    });

    it("Bob reads on another device within the delay: no push", async () => {
      const a = await device(alice);
      const b = await device(bob, 1);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, bob);
        const seq = await send(a, id, "read me");
        await b.waitFor("the message on Bob's laptop", (f) => f.kind.case === "message" && f.kind.value.conversationId === id);
        b.send({ ref: 0, kind: { case: "receipt", value: { conversationId: id, deliveredSeq: seq, readSeq: seq } } });
        await barrier(a, alice);
        assert.equal(pushesFor(id, mark).length, 0, "no push after a read");
      } finally {
        await a.close();
        await b.close();
      }
    });

    it("a burst of 10 messages gives one collapsed push", async () => {
      const a = await device(alice);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, carol);
        for (let i = 1; i <= 10; i++) await send(a, id, `burst ${i}`);
        await until("Carol's push", () => pushesFor(id, mark).length === 1, 20_000);
        const [p] = pushesFor(id, mark);
        assert.equal(p!.payload.data.count, "10");
        assert.match(p!.payload.body, /burst 10/);
        await barrier(a, alice);
        assert.equal(pushesFor(id, mark).length, 1, "one push for the burst");
      } finally {
        await a.close();
      }
    });

    it("a group: the offline member gets one push titled with the group; the member who received it does not", async () => {
      const a = await device(alice);
      const b = await device(bob);
      const mark = receiver.accepted.length;
      try {
        const { conversation } = await api(url, alice.token).groups.createGroup({ name: "Hikers", memberIds: [bob.userId, carol.userId] });
        const id = conversation!.conversationId;
        const seq = await send(a, id, "summit at noon");
        await b.waitFor("the group message on Bob's phone", (f) => f.kind.case === "message" && f.kind.value.conversationId === id);
        b.send({ ref: 0, kind: { case: "receipt", value: { conversationId: id, deliveredSeq: seq, readSeq: 0n } } });
        await until("Carol's push", () => pushesFor(id, mark).length === 1, 20_000);
        const [p] = pushesFor(id, mark);
        assert.equal(p!.payload.device, "carol-phone");
        assert.match(p!.payload.title, /Hikers/);
        await barrier(a, alice);
        assert.deepEqual(pushesFor(id, mark).map((x) => x.payload.device), ["carol-phone"]);
      } finally {
        await a.close();
        await b.close();
      }
    });

    it("an unknown device (410 Gone) is removed", async () => {
      const gone = await api(url, carol.token).notifications.registerPushDevice({ platform: PushPlatform.WEBHOOK, token: "carol-old-tablet" });
      const a = await device(alice);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, carol);
        await send(a, id, "to both of Carol's devices");
        await until("Carol's phone push", () => pushesFor(id, mark).some((p) => p.payload.device === "carol-phone"), 20_000);
        // The removal follows the 410 answer; poll the API (each call a round trip) until it shows.
        let devices: string[] = [];
        const deadline = Date.now() + 20_000;
        while (Date.now() < deadline) {
          devices = (await api(url, carol.token).notifications.listPushDevices({})).devices.map((d) => d.pushDeviceId);
          if (!devices.includes(gone.device!.pushDeviceId)) break;
        }
        assert.ok(!devices.includes(gone.device!.pushDeviceId), "the device the receiver does not know is removed");
      } finally {
        await a.close();
      }
    });

    it("notify killed with kill -9 while a job waits: after a restart it is pushed once", async () => {
      const a = await device(alice);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, bob);
        const received = await messagesReceivedByNotify();
        await send(a, id, "survive the crash");
        // The job is durable once notify counted the message (MessagesStored answers after the commit).
        const deadline = Date.now() + 10_000;
        while ((await messagesReceivedByNotify()) === received) {
          assert.ok(Date.now() < deadline, "notify never got the message");
        }
        const victim = cluster.processes.find((p) => p.kind === "notify" && p.exitCode === undefined)!;
        await victim.kill();
        await cluster.spawn("notify", cluster.processes.filter((p) => p.kind === "notify").length);
        await until("the push after the restart", () => pushesFor(id, mark).length === 1, 30_000);
        await barrier(a, alice);
        assert.equal(pushesFor(id, mark).length, 1, "pushed once");
      } finally {
        await a.close();
      }
    });

    it("notify killed with kill -9 in the middle of a send: resent after the lease with the same push id", async () => {
      const a = await device(alice);
      const mark = receiver.accepted.length;
      try {
        const id = await direct(alice, carol);
        receiver.script({ kind: "stall" });
        const stalled = new Promise<void>((resolve) => receiver.events.once("request", () => resolve()));
        await send(a, id, "in flight");
        await stalled;
        const victim = cluster.processes.find((p) => p.kind === "notify" && p.exitCode === undefined)!;
        await victim.kill();
        await cluster.spawn("notify", cluster.processes.filter((p) => p.kind === "notify").length);
        await until("the resend", () => pushesFor(id, mark).length >= 1, 30_000);
        await barrier(a, alice);
        const ids = new Set(pushesFor(id, mark).map((p) => p.payload.data.push_id));
        assert.equal(ids.size, 1, "one push id: the device shows it once");
      } finally {
        await a.close();
      }
    });
  });
}
