import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, it } from "node:test";
import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { ServerFrameSchema } from "../../../gen/parley/client/v1/frames_pb.js";
import { DeliveryService, type DeliverRequest } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import { ConversationKind, GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { AppendResponseSchema, MessageSchema, MessageStoreService, type AppendRequest, type Message } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { ConversationKind as PushKind, NotifyService, type StoredMessages } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { createLogger } from "../../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../../lib/registry/connection-registry-memory.js";
import type { DeviceLocation } from "../../../lib/registry/connection-registry.js";
import { inProcess } from "../../../lib/rpc.js";
import { settleEach } from "../../../lib/batcher.js";
import { loadConfig } from "../src/config.js";
import { RouterContext } from "../src/context.js";
import { MembershipCache } from "../src/membership-cache.js";
import { routerRoutes } from "../src/routes.js";
import { until } from "../../../lib/testing/wait.js";

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** The memory registry, counting lookups, with an optional gate on the next lookup. */
class CountingRegistry extends MemoryConnectionRegistry {
  readonly lookups: string[][] = [];
  readonly topicLookups: string[][] = [];
  readonly removals: { gatewayId: string; userIds: string[] }[] = [];
  readonly topicRemovals: { gatewayId: string; topics: string[] }[] = [];
  lookupGate: Promise<void> | undefined;

  override async lookupDevices(userIds: readonly string[]): Promise<Map<string, DeviceLocation[]>> {
    this.lookups.push([...userIds]);
    const gate = this.lookupGate;
    this.lookupGate = undefined;
    if (gate) await gate;
    return super.lookupDevices(userIds);
  }

  override async lookupTopics(conversationIds: readonly string[]): Promise<Map<string, string[]>> {
    this.topicLookups.push([...conversationIds]);
    const gate = this.lookupGate;
    this.lookupGate = undefined;
    if (gate) await gate;
    return super.lookupTopics(conversationIds);
  }

  override async removeTopics(gatewayId: string, topics: readonly string[]): Promise<void> {
    this.topicRemovals.push({ gatewayId, topics: [...topics] });
    return super.removeTopics(gatewayId, topics);
  }

  override async removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void> {
    this.removals.push({ gatewayId, userIds: [...userIds] });
    return super.removeUsers(gatewayId, userIds);
  }

  async where(userId: string): Promise<string[]> {
    return (await super.lookup([userId])).get(userId) ?? [];
  }
}

/** A gateway's DeliveryService: records calls; each can be held, failed, or report absent users. */
class FakeGateway {
  readonly calls: DeliverRequest[] = [];
  inFlight = 0;
  maxInFlight = 0;
  hold: Promise<void> | undefined;
  fail = false;
  absent: string[] = [];
  absentTopics: string[] = [];

  async deliver(req: DeliverRequest) {
    this.calls.push(req);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      const hold = this.hold;
      this.hold = undefined;
      if (hold) await hold;
      if (this.fail) throw new ConnectError("gateway broken", Code.Unavailable);
      return { deliveredFrames: req.envelopes.length, absentUserIds: this.absent, absentTopics: this.absentTopics };
    } finally {
      this.inFlight--;
    }
  }

  /** Message bodies of each call, in order. */
  bodies(): string[][] {
    return this.calls.map((c) =>
      c.envelopes.map((e) => {
        const f = fromBinary(ServerFrameSchema, e.serverFrame);
        return f.kind.case === "message" ? f.kind.value.body : "?";
      }),
    );
  }
}

interface Harness {
  ctx: RouterContext;
  router: Client<typeof RouterService>;
  registry: CountingRegistry;
  gateways: Map<string, FakeGateway>;
  dialed: string[];
  groupsCalls: string[];
  groupsGate: { next: Promise<void> | undefined };
  conversations: Map<string, { kind: ConversationKind; memberIds: string[]; blocked?: string[] } | "unavailable">;
  appends: AppendRequest[];
  /** Sizes of the AppendBatch calls the router made. */
  appendBatches: number[];
  /** What the router handed to notify (MessagesStored items), in order. */
  notified: StoredMessages[];
  /** Set to make MessagesStored fail with UNAVAILABLE. */
  notifyDown: { down: boolean };
  clock: { now: number };
}

async function harness(): Promise<Harness> {
  const registry = new CountingRegistry();
  const gateways = new Map([
    ["gw-1", new FakeGateway()],
    ["gw-2", new FakeGateway()],
  ]);
  const discovery = new StaticDiscovery([
    { kind: "gateway", id: "gw-1", url: "http://gw-1.invalid:1" },
    { kind: "gateway", id: "gw-2", url: "http://gw-2.invalid:1" },
  ]);
  const dialed: string[] = [];
  const groupsCalls: string[] = [];
  const groupsGate: Harness["groupsGate"] = { next: undefined };
  const conversations: Harness["conversations"] = new Map();
  const appends: AppendRequest[] = [];
  const appendBatches: number[] = [];
  const stored = new Map<string, Message>();
  const seqs = new Map<string, number>();
  const notified: StoredMessages[] = [];
  const notifyDown = { down: false };
  const clock = { now: 1_000_000 };
  const ctx = await RouterContext.fromConfig(loadConfig({}), {
    registry,
    discovery,
    clock: () => clock.now,
    logger: createLogger("router-test", "silent"),
    dialGateway: (url, gatewayId) => {
      dialed.push(gatewayId);
      const gw = gateways.get(gatewayId)!;
      return inProcess((r) => r.service(DeliveryService, { deliver: (req) => gw.deliver(req) }));
    },
    groups: inProcess((r) =>
      r.service(GroupsService, {
        checkMembers: async (req) => {
          groupsCalls.push(req.conversationId);
          // The answer reflects the state when the call arrived (a gate holds it in flight).
          const c = conversations.get(req.conversationId);
          const gate = groupsGate.next;
          groupsGate.next = undefined;
          if (gate) await gate;
          if (c === "unavailable") throw new ConnectError("groups down", Code.Unavailable);
          if (!c) throw new ConnectError("no such conversation", Code.NotFound);
          const direct = c.kind === ConversationKind.DIRECT;
          return {
            conversation: {
              conversationId: req.conversationId,
              kind: c.kind,
              memberIds: direct ? c.memberIds : [],
              blockedUserIds: c.blocked ?? [],
            },
            allowedUserIds: req.userIds.filter((u) => c.memberIds.includes(u) && !(c.blocked ?? []).includes(u)),
          };
        },
      }),
    ),
    messagestore: inProcess((r) => {
      const append = (req: AppendRequest) => {
        appends.push(req);
        const key = `${req.conversationId}/${req.senderId}/${req.clientMsgId}`;
        const old = stored.get(key);
        if (old) return { message: old, duplicate: true };
        const seq = (seqs.get(req.conversationId) ?? 0) + 1;
        seqs.set(req.conversationId, seq);
        const message = create(MessageSchema, {
          conversationId: req.conversationId,
          senderId: req.senderId,
          senderDeviceId: req.senderDeviceId,
          clientMsgId: req.clientMsgId,
          body: req.body,
          seq: BigInt(seq),
          messageId: randomUUID(),
          sentAt: timestampFromMs(clock.now),
        });
        stored.set(key, message);
        return { message, duplicate: false };
      };
      r.service(MessageStoreService, {
        append: (req) => append(req),
        appendBatch: async (req) => {
          appendBatches.push(req.appends.length);
          return { results: await settleEach(req.appends, async (a) => create(AppendResponseSchema, append(a))) };
        },
      });
    }),
    notify: inProcess((r) =>
      r.service(NotifyService, {
        messagesStored: (req) => {
          if (notifyDown.down) throw new ConnectError("notify is down", Code.Unavailable);
          notified.push(...req.messages);
          return {};
        },
      }),
    ),
  });
  const router = createClient(RouterService, inProcess(routerRoutes(ctx)));
  return { ctx, router, registry, gateways, dialed, groupsCalls, groupsGate, conversations, appends, appendBatches, notified, notifyDown, clock };
}

const gw = (h: Harness, id: string) => h.gateways.get(id)!;

function group(h: Harness, memberIds: string[], kind = ConversationKind.GROUP): string {
  const id = randomUUID();
  h.conversations.set(id, { kind, memberIds });
  return id;
}

function direct(h: Harness, a: string, b: string): string {
  return group(h, [a, b], ConversationKind.DIRECT);
}

/** `gatewayId` holds devices subscribed to the group conversation `c`. */
async function subscribed(h: Harness, gatewayId: string, c: string): Promise<void> {
  await h.registry.addTopics(gatewayId, [c]);
}

async function online(h: Harness, gatewayId: string, userId: string, deviceId: string = randomUUID()): Promise<string> {
  await h.registry.add(gatewayId, [{ userId, deviceId }]);
  return deviceId;
}

function send(h: Harness, conversationId: string, senderId: string, body: string, opts: { deviceId?: string; clientMsgId?: string } = {}) {
  return h.router.send({
    conversationId,
    senderId,
    senderDeviceId: opts.deviceId ?? randomUUID(),
    clientMsgId: opts.clientMsgId ?? randomUUID(),
    body,
  });
}

async function rejectsWith(p: Promise<unknown>, code: Code): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal(ConnectError.from(e).code, code, String(e));
    return true;
  });
}

describe("router: send and fan-out", () => {
  let h: Harness;
  beforeEach(async () => (h = await harness()));
  afterEach(() => h.ctx.close());

  it("1:1: one envelope per gateway with that gateway's users; every stored message is handed to notify", async () => {
    const [sender, peer] = [randomUUID(), randomUUID()];
    const senderPhone = await online(h, "gw-1", sender);
    await online(h, "gw-2", sender); // the sender's laptop
    await online(h, "gw-1", peer);
    await online(h, "gw-1", peer); // a second device of the peer on the same gateway
    const c = direct(h, sender, peer);
    const ack = await send(h, c, sender, "hello", { deviceId: senderPhone });
    assert.equal(ack.seq, 1n);
    assert.equal(ack.duplicate, false);
    await h.ctx.fanOut.idle();
    for (const [id, users] of [
      // The sender's only device on gw-1 is the sending phone: gw-1 delivers to the peer only.
      ["gw-1", [peer]],
      ["gw-2", [sender]],
    ] as const) {
      const g = gw(h, id);
      assert.equal(g.calls.length, 1, id);
      assert.equal(g.calls[0]!.envelopes.length, 1, `${id}: one envelope`);
      const env = g.calls[0]!.envelopes[0]!;
      assert.deepEqual([...env.userIds].sort(), [...users].sort(), id);
      assert.equal(env.topicConversationId, "");
      assert.equal(env.excludeDeviceId, senderPhone, "the sending device gets the ack instead");
      const frame = fromBinary(ServerFrameSchema, env.serverFrame);
      assert.equal(frame.kind.case, "message");
      if (frame.kind.case !== "message") continue;
      assert.equal(frame.kind.value.body, "hello");
      assert.equal(frame.kind.value.seq, 1n);
      assert.equal(frame.kind.value.senderId, sender);
      assert.equal(frame.kind.value.senderDeviceId, senderPhone);
      assert.equal(frame.kind.value.messageId, ack.messageId);
    }
    // Notify decides about pushes from delivery cursors: it gets the message, online or not.
    await until("notify", () => h.notified.length === 1);
    const n = h.notified[0]!;
    assert.deepEqual(
      [n.conversationId, n.kind, n.seq, n.messageId, n.senderId, n.preview, n.count, n.recipientIds],
      [c, PushKind.DIRECT, 1n, ack.messageId, sender, "hello", 1, [peer]],
    );
  });

  it("1:1: no Deliver to a gateway whose only device of the sender is the sending device", async () => {
    const [sender, peer] = [randomUUID(), randomUUID()];
    const phone = await online(h, "gw-2", sender);
    await online(h, "gw-1", peer);
    const c = direct(h, sender, peer);
    await send(h, c, sender, "one", { deviceId: phone });
    await h.ctx.fanOut.idle();
    assert.equal(gw(h, "gw-2").calls.length, 0, "nothing to deliver on the sender's gateway");
    assert.deepEqual(gw(h, "gw-1").calls.flatMap((x) => x.envelopes.map((e) => e.userIds)), [[peer]]);
    // A second device of the sender on gw-2: now gw-2 has someone to deliver to.
    await online(h, "gw-2", sender);
    await send(h, c, sender, "two", { deviceId: phone });
    await h.ctx.fanOut.idle();
    assert.deepEqual(gw(h, "gw-2").calls.flatMap((x) => x.envelopes.map((e) => e.userIds)), [[sender]]);
  });

  it("group: one topic envelope per gateway holding subscribers, whatever the number of members; no user is named", async () => {
    const members = Array.from({ length: 500 }, () => randomUUID());
    const sender = members[0]!;
    const c = group(h, members);
    await subscribed(h, "gw-1", c);
    await subscribed(h, "gw-2", c);
    const other = group(h, [sender]);
    await subscribed(h, "gw-2", other);
    const senderPhone = randomUUID();
    const ack = await send(h, c, sender, "hello all", { deviceId: senderPhone });
    await h.ctx.fanOut.idle();
    for (const id of ["gw-1", "gw-2"]) {
      const g = gw(h, id);
      assert.equal(g.calls.length, 1, id);
      assert.equal(g.calls[0]!.envelopes.length, 1, id);
      const env = g.calls[0]!.envelopes[0]!;
      assert.equal(env.topicConversationId, c);
      assert.deepEqual(env.userIds, []);
      assert.equal(env.excludeDeviceId, senderPhone);
      assert.equal(env.membership, undefined);
      const frame = fromBinary(ServerFrameSchema, env.serverFrame);
      assert.equal(frame.kind.case === "message" && frame.kind.value.messageId, ack.messageId);
    }
    assert.deepEqual(h.ctx.fanOut.stats, { messages: 1, ephemeral: 0, ephemeralRefused: 0, registryLookups: 1, deliverCalls: 2, topicEnvelopes: 2 });
    assert.deepEqual(h.registry.lookups, [], "no per-user lookup for a group");
    assert.deepEqual(h.registry.topicLookups, [[c]]);
  });

  it("group: a gateway with no subscriber left (absent_topics) or a failing one leaves the topic index", async () => {
    const [sender, x] = [randomUUID(), randomUUID()];
    const c = group(h, [sender, x]);
    await subscribed(h, "gw-1", c);
    await subscribed(h, "gw-2", c);
    gw(h, "gw-1").absentTopics = [c];
    gw(h, "gw-2").fail = true;
    await send(h, c, sender, "x");
    await h.ctx.fanOut.idle();
    await until("cleanup", () => h.registry.topicRemovals.length === 2);
    assert.deepEqual(
      [...h.registry.topicRemovals].sort((a, b) => (a.gatewayId < b.gatewayId ? -1 : 1)),
      [
        { gatewayId: "gw-1", topics: [c] },
        { gatewayId: "gw-2", topics: [c] },
      ],
    );
    assert.deepEqual((await h.registry.lookupTopics([c])).get(c), undefined);
  });

  it("hands notify one summary per conversation and call (count, newest message, preview cut to 120 characters); retries while notify is down", async () => {
    const [sender, peer] = [randomUUID(), randomUUID()];
    const c = direct(h, sender, peer);
    const g = group(h, [sender, peer, randomUUID()], ConversationKind.GROUP);
    h.notifyDown.down = true;
    await send(h, c, sender, "first");
    await send(h, c, sender, "é".repeat(200));
    await send(h, g, peer, "to the group");
    await send(h, g, peer, "again");
    await until("a failed hand-over", () => h.ctx.notifyQueue.stats.failedCalls >= 1);
    assert.equal(h.notified.length, 0);
    h.notifyDown.down = false;
    await until("notify", () => h.notified.length === 2);
    const byId = new Map(h.notified.map((x) => [x.conversationId, x]));
    const d = byId.get(c)!;
    assert.deepEqual([d.kind, d.seq, d.count, d.recipientIds, [...d.preview].length], [PushKind.DIRECT, 2n, 2, [peer], 120]);
    const gg = byId.get(g)!;
    assert.deepEqual([gg.kind, gg.seq, gg.count, gg.recipientIds, gg.senderId, gg.preview], [PushKind.GROUP, 2n, 2, [], peer, "again"]);
    assert.equal(h.ctx.notifyQueue.stats.handedOver, 4);
    // A resend (same client message id) is not handed over again.
    const resendId = randomUUID();
    await send(h, c, sender, "x", { clientMsgId: resendId });
    await send(h, c, sender, "x", { clientMsgId: resendId });
    await until("notify", () => h.notified.length === 3);
    await h.ctx.notifyQueue.idle();
    assert.equal(h.ctx.notifyQueue.stats.handedOver, 5);
  });

  it("one registry lookup per batch of messages, not per message or recipient", async () => {
    const members = Array.from({ length: 20 }, () => randomUUID());
    for (const [i, u] of members.entries()) await online(h, i % 2 ? "gw-1" : "gw-2", u);
    const pairs = Array.from({ length: 10 }, (_, i) => direct(h, members[2 * i]!, members[2 * i + 1]!));
    const gate = deferred();
    h.registry.lookupGate = gate.promise;
    await send(h, pairs[0]!, members[0]!, "m0"); // its lookup is held
    await until("first lookup", () => h.registry.lookups.length === 1);
    for (let i = 1; i <= 30; i++) await send(h, pairs[i % 10]!, members[2 * (i % 10)]!, `m${i}`);
    assert.equal(h.registry.lookups.length, 1, "the others wait for the held lookup");
    gate.resolve();
    await h.ctx.fanOut.idle();
    assert.equal(h.ctx.fanOut.stats.registryLookups, 2);
    assert.equal(h.registry.lookups.length, 2);
    assert.deepEqual([...h.registry.lookups[1]!].sort(), [...members].sort(), "each user once in the batch's lookup");
    assert.equal(h.ctx.fanOut.stats.messages, 31);
  });

  it("order per gateway: at most one Deliver in flight; the next carries everything queued meanwhile", async () => {
    const [sender, peer] = [randomUUID(), randomUUID()];
    await online(h, "gw-1", peer);
    const c = direct(h, sender, peer);
    const slow = deferred();
    gw(h, "gw-1").hold = slow.promise;
    await send(h, c, sender, "1");
    await until("first deliver", () => gw(h, "gw-1").calls.length === 1);
    for (let i = 2; i <= 6; i++) await send(h, c, sender, String(i));
    // Let fan-out hand them to the outbox; the first Deliver is still held.
    await until("queued", () => h.ctx.fanOut.stats.messages === 6);
    assert.equal(gw(h, "gw-1").calls.length, 1);
    slow.resolve();
    await h.ctx.fanOut.idle();
    assert.deepEqual(gw(h, "gw-1").bodies(), [["1"], ["2", "3", "4", "5", "6"]]);
    assert.equal(gw(h, "gw-1").maxInFlight, 1);
    assert.deepEqual(
      gw(h, "gw-1").calls.flatMap((call) => call.envelopes.map((e) => {
        const f = fromBinary(ServerFrameSchema, e.serverFrame);
        return f.kind.case === "message" ? Number(f.kind.value.seq) : 0;
      })),
      [1, 2, 3, 4, 5, 6],
    );
  });

  it("a slow gateway does not hold up another one", async () => {
    const [sender, a, b] = [randomUUID(), randomUUID(), randomUUID()];
    const c = group(h, [sender, a, b]);
    await subscribed(h, "gw-1", c);
    await subscribed(h, "gw-2", c);
    const slow = deferred();
    gw(h, "gw-1").hold = slow.promise;
    await send(h, c, sender, "1");
    await send(h, c, sender, "2");
    await until("gw-2 got both", () => gw(h, "gw-2").calls.flatMap((x) => x.envelopes).length === 2);
    assert.equal(gw(h, "gw-1").calls.length, 1);
    slow.resolve();
    await h.ctx.fanOut.idle();
    assert.deepEqual(gw(h, "gw-1").bodies().flat(), ["1", "2"]);
  });

  it("a failing Deliver removes that gateway's entries for those users (and only those)", async () => {
    const [sender, a, other] = Array.from({ length: 3 }, () => randomUUID());
    await online(h, "gw-1", a!);
    await online(h, "gw-2", a!); // a is also on a healthy gateway
    await online(h, "gw-1", other!); // not in this conversation
    gw(h, "gw-1").fail = true;
    const c = direct(h, sender!, a!);
    await send(h, c, sender!, "x");
    await h.ctx.fanOut.idle();
    await until("cleanup", () => h.registry.removals.length === 1);
    assert.equal(h.registry.removals[0]!.gatewayId, "gw-1");
    assert.deepEqual(h.registry.removals[0]!.userIds, [a!]);
    assert.deepEqual(await h.registry.where(a!), ["gw-2"]);
    assert.deepEqual(await h.registry.where(other!), ["gw-1"]);
    assert.equal(gw(h, "gw-2").calls.length, 1);
  });

  it("absent_user_ids from a gateway are removed from the registry for that gateway", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    await online(h, "gw-1", a);
    await online(h, "gw-1", b);
    gw(h, "gw-1").absent = [b];
    const c = direct(h, a, b);
    await send(h, c, a, "x");
    await h.ctx.fanOut.idle();
    await until("cleanup", () => h.registry.removals.length === 1);
    assert.deepEqual(h.registry.removals[0], { gatewayId: "gw-1", userIds: [b] });
    assert.deepEqual(await h.registry.where(a), ["gw-1"]);
    assert.deepEqual(await h.registry.where(b), []);
  });

  it("entries pointing at a gateway discovery does not know are cleaned up, and nothing is dialed for it", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    await online(h, "gw-gone", a);
    await online(h, "gw-1", b);
    const c = direct(h, a, b);
    await send(h, c, b, "x");
    await h.ctx.fanOut.idle();
    await until("cleanup", () => h.registry.removals.length === 1);
    assert.deepEqual(h.registry.removals[0], { gatewayId: "gw-gone", userIds: [a] });
    assert.deepEqual(await h.registry.where(a), []);
    assert.deepEqual(h.dialed, ["gw-1"]);
    assert.equal(gw(h, "gw-1").calls.length, 1);
  });

  it("one transport per gateway, reused across messages", async () => {
    const [sender, a] = [randomUUID(), randomUUID()];
    await online(h, "gw-1", a);
    const c = direct(h, sender, a);
    for (let i = 0; i < 5; i++) {
      await send(h, c, sender, String(i));
      await h.ctx.fanOut.idle();
    }
    assert.deepEqual(h.dialed, ["gw-1"]);
    assert.equal(gw(h, "gw-1").calls.length, 5);
  });

  it("a duplicate append is acked with duplicate=true and not fanned out again", async () => {
    const [sender, peer] = [randomUUID(), randomUUID()];
    await online(h, "gw-1", peer);
    const c = direct(h, sender, peer);
    const clientMsgId = randomUUID();
    const first = await send(h, c, sender, "once", { clientMsgId });
    const again = await send(h, c, sender, "once", { clientMsgId });
    await h.ctx.fanOut.idle();
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
    assert.equal(again.messageId, first.messageId);
    assert.equal(h.appends.length, 2);
    assert.equal(h.ctx.fanOut.stats.messages, 1);
    assert.deepEqual(gw(h, "gw-1").bodies(), [["once"]]);
  });

  it("a non-member gets PermissionDenied and nothing is appended; so does an unknown conversation", async () => {
    const c = group(h, [randomUUID(), randomUUID()]);
    await rejectsWith(send(h, c, randomUUID(), "let me in"), Code.PermissionDenied);
    await rejectsWith(send(h, randomUUID(), randomUUID(), "anyone?"), Code.PermissionDenied);
    assert.equal(h.appends.length, 0);
    assert.equal(h.ctx.fanOut.stats.messages, 0);
  });

  it("bad requests are refused with InvalidArgument before any backend call", async () => {
    const c = group(h, [randomUUID()]);
    await rejectsWith(send(h, c, "not-a-uuid", "x"), Code.InvalidArgument);
    await rejectsWith(send(h, "not-a-uuid", randomUUID(), "x"), Code.InvalidArgument);
    await rejectsWith(send(h, c, randomUUID(), ""), Code.InvalidArgument);
    await rejectsWith(send(h, c, randomUUID(), "x".repeat(4001)), Code.InvalidArgument);
    await rejectsWith(send(h, c, randomUUID(), "x", { clientMsgId: "nope" }), Code.InvalidArgument);
    assert.equal(h.groupsCalls.length, 0);
    assert.equal(h.appends.length, 0);
  });

  it("SendBatch answers each send on its own: stored ones acked, bad and foreign ones refused, nothing else affected", async () => {
    const [alice, bob, mallory] = [randomUUID(), randomUUID(), randomUUID()];
    const c = group(h, [alice!, bob!]);
    const downId = randomUUID();
    h.conversations.set(downId, "unavailable");
    const item = (conversationId: string, senderId: string, body: string) => ({
      conversationId,
      senderId,
      senderDeviceId: randomUUID(),
      clientMsgId: randomUUID(),
      body,
    });
    const { results } = await h.router.sendBatch({
      sends: [
        item(c, alice!, "one"),
        item(c, "not-a-uuid", "bad sender"),
        item(c, mallory!, "not a member"),
        item(randomUUID(), alice!, "unknown conversation"),
        item(downId, alice!, "groups down"),
        item(c, bob!, "two"),
        item(c, alice!, ""),
      ],
    });
    const outcome = (i: number) => {
      const r = results[i]!.result;
      return r.case === "ok" ? `seq ${r.value.seq}` : r.case === "error" ? `code ${r.value.code}` : "none";
    };
    assert.deepEqual(results.map((_, i) => outcome(i)), [
      "seq 1",
      `code ${Code.InvalidArgument}`,
      `code ${Code.PermissionDenied}`,
      `code ${Code.PermissionDenied}`,
      `code ${Code.Unavailable}`,
      "seq 2",
      `code ${Code.InvalidArgument}`,
    ]);
    assert.deepEqual(h.appends.map((a) => a.body), ["one", "two"]);
    await h.ctx.fanOut.idle();
    assert.equal(h.ctx.fanOut.stats.messages, 2);
  });

  it("SendBatch stores one conversation's sends in the order given, in one AppendBatch", async () => {
    const sender = randomUUID();
    const c = group(h, [sender, randomUUID()]);
    const other = group(h, [sender, randomUUID()]);
    const sends = Array.from({ length: 100 }, (_, i) => ({
      conversationId: i % 3 === 0 ? other : c,
      senderId: sender,
      senderDeviceId: randomUUID(),
      clientMsgId: randomUUID(),
      body: `m${i}`,
    }));
    const { results } = await h.router.sendBatch({ sends });
    const seqsOf = (conversationId: string) =>
      results.flatMap((r, i) => (sends[i]!.conversationId === conversationId && r.result.case === "ok" ? [Number(r.result.value.seq)] : []));
    assert.deepEqual(seqsOf(c), Array.from({ length: 66 }, (_, i) => i + 1));
    assert.deepEqual(seqsOf(other), Array.from({ length: 34 }, (_, i) => i + 1));
    assert.deepEqual(h.appendBatches, [100]);
    await rejectsWith(h.router.sendBatch({ sends: Array.from({ length: 1025 }, () => sends[0]!) }), Code.InvalidArgument);
  });

  it("concurrent Sends share AppendBatch calls: one in flight, the rest in the next", async () => {
    const sender = randomUUID();
    const c = group(h, [sender, randomUUID()]);
    await send(h, c, sender, "warm the membership cache");
    h.appendBatches.length = 0;
    const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => send(h, c, sender, `m${i}`)));
    assert.equal(new Set(acks.map((a) => a.seq)).size, 50);
    assert.equal(h.appendBatches.reduce((a, b) => a + b, 0), 50);
    assert.ok(h.appendBatches.length <= 2, `AppendBatch calls: ${h.appendBatches.join(",")}`);
  });
});

describe("router: membership cache", () => {
  let h: Harness;
  beforeEach(async () => (h = await harness()));
  afterEach(() => h.ctx.close());

  it("one groups call for many sends; concurrent misses share one load", async () => {
    const sender = randomUUID();
    const c = group(h, [sender, randomUUID()]);
    const gate = deferred();
    h.groupsGate.next = gate.promise;
    const first = Array.from({ length: 10 }, (_, i) => send(h, c, sender, `c${i}`));
    await until("groups called", () => h.groupsCalls.length === 1);
    gate.resolve();
    await Promise.all(first);
    for (let i = 0; i < 10; i++) await send(h, c, sender, `s${i}`);
    assert.deepEqual(h.groupsCalls, [c]);
    assert.equal(h.appends.length, 20);
  });

  it("group verdicts expire after their TTL, direct ones after theirs (injected clock)", async () => {
    const sender = randomUUID();
    const g = group(h, [sender]);
    const d = direct(h, sender, randomUUID());
    await send(h, g, sender, "x");
    await send(h, d, sender, "x");
    h.clock.now += 30_001;
    await send(h, g, sender, "y");
    await send(h, d, sender, "y");
    assert.deepEqual(h.groupsCalls, [g, d, g]);
    h.clock.now += 600_000;
    await send(h, d, sender, "z");
    assert.deepEqual(h.groupsCalls, [g, d, g, d]);
  });

  it("a group loads verdicts per sender: one call for the senders of a batch, known ones not asked again", async () => {
    const members = Array.from({ length: 5 }, () => randomUUID());
    const c = group(h, members);
    const item = (senderId: string) => ({ conversationId: c, senderId, senderDeviceId: randomUUID(), clientMsgId: randomUUID(), body: "x" });
    await h.router.sendBatch({ sends: [item(members[0]!), item(members[1]!), item(members[0]!)] });
    await h.router.sendBatch({ sends: [item(members[1]!), item(members[2]!)] });
    await h.router.sendBatch({ sends: [item(members[0]!), item(members[2]!)] });
    assert.deepEqual(h.groupsCalls, [c, c], "second batch asks only about the new sender");
    assert.equal(h.appends.length, 7);
  });

  it("a 1:1 with a block is read-only for both members (PermissionDenied, nothing stored)", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    const c = direct(h, a, b);
    h.conversations.set(c, { kind: ConversationKind.DIRECT, memberIds: [a, b], blocked: [a, b] });
    await assert.rejects(send(h, c, a, "hi"), (e: unknown) => {
      assert.equal(ConnectError.from(e).code, Code.PermissionDenied);
      assert.match(ConnectError.from(e).rawMessage, /blocked/);
      return true;
    });
    await rejectsWith(send(h, c, b, "hi"), Code.PermissionDenied);
    assert.equal(h.appends.length, 0);
  });

  it("an unknown conversation is remembered briefly (injected clock)", async () => {
    const sender = randomUUID();
    const c = randomUUID();
    await rejectsWith(send(h, c, sender, "x"), Code.PermissionDenied);
    h.clock.now += 999;
    await rejectsWith(send(h, c, sender, "x"), Code.PermissionDenied);
    assert.equal(h.groupsCalls.length, 1, "cached NotFound");
    h.conversations.set(c, { kind: ConversationKind.GROUP, memberIds: [sender] });
    h.clock.now += 2;
    await send(h, c, sender, "now it exists");
    assert.equal(h.groupsCalls.length, 2);
    assert.equal(h.appends.length, 1);
  });

  it("a groups outage is passed on (Unavailable) and not cached", async () => {
    const sender = randomUUID();
    const c = randomUUID();
    h.conversations.set(c, "unavailable");
    await rejectsWith(send(h, c, sender, "x"), Code.Unavailable);
    h.conversations.set(c, { kind: ConversationKind.GROUP, memberIds: [sender] });
    await send(h, c, sender, "x");
    assert.equal(h.groupsCalls.length, 2);
  });

  it("invalidate() forces a reload", async () => {
    const sender = randomUUID();
    const c = group(h, [sender]);
    await send(h, c, sender, "x");
    h.ctx.membership.invalidate(c);
    await send(h, c, sender, "x");
    assert.equal(h.groupsCalls.length, 2);
  });

  it("holds at most maxEntries, evicting the least recently used", async () => {
    const calls: string[] = [];
    const groups = createClient(
      GroupsService,
      inProcess((r) =>
        r.service(GroupsService, {
          checkMembers: (req) => {
            calls.push(req.conversationId);
            return {
              conversation: { conversationId: req.conversationId, kind: ConversationKind.DIRECT, memberIds: ["u", "v"] },
              allowedUserIds: ["u", "v"],
            };
          },
        }),
      ),
    );
    const cache = new MembershipCache(groups, { maxEntries: 2, groupTtlMs: 1000, directTtlMs: 1000, negativeTtlMs: 1000, clock: () => 0 });
    const get = (c: string) => cache.access(c, ["u"]);
    assert.deepEqual([...(await get("a")).allowed], ["u"]);
    await get("b");
    await get("a"); // a is now the most recently used
    await get("c"); // evicts b
    await get("a");
    await get("c");
    assert.deepEqual(calls, ["a", "b", "c"]);
    await get("b");
    assert.deepEqual(calls, ["a", "b", "c", "b"]);
    assert.deepEqual([...(await cache.access("a", ["u", "w", "v"])).allowed].sort(), ["u", "v"], "a 1:1 is known whole");
    assert.deepEqual(calls, ["a", "b", "c", "b", "a"]);
  });

});

describe("router: conversation changes (ApplyConversationChange)", () => {
  let h: Harness;
  beforeEach(async () => (h = await harness()));
  afterEach(() => h.ctx.close());

  const change = (c: string, o: { event?: Uint8Array; joined?: string[]; left?: string[]; deleted?: boolean; changeId?: string; actor?: string } = {}) =>
    h.router.applyConversationChange({
      conversationId: c,
      changeId: o.changeId ?? randomUUID(),
      actorId: o.actor ?? randomUUID(),
      event: o.event ?? new Uint8Array(),
      joinedUserIds: o.joined ?? [],
      leftUserIds: o.left ?? [],
      deleted: o.deleted ?? false,
    });

  it("a removed member cannot send once the change is applied, even with a load in flight during it", async () => {
    const [owner, bob] = [randomUUID(), randomUUID()];
    const c = group(h, [owner, bob]);
    await send(h, c, owner, "warm");
    // Bob's first send loads his verdict; hold that load across the removal.
    const gate = deferred();
    h.groupsGate.next = gate.promise;
    const racing = send(h, c, bob, "sent while being removed");
    await until("bob's load", () => h.groupsCalls.length === 2);
    h.conversations.set(c, { kind: ConversationKind.GROUP, memberIds: [owner] });
    await change(c, { left: [bob], event: new Uint8Array([1]) });
    gate.resolve();
    // Asked before the removal: the (old) answer serves that send...
    await racing;
    // ...but was not kept: the next send loads afresh and is refused.
    await rejectsWith(send(h, c, bob, "after removal"), Code.PermissionDenied);
    assert.equal(h.groupsCalls.length, 3, "the in-flight answer was not kept");
    await send(h, c, owner, "still works");
  });

  it("stores the event as a message (idempotent on change_id) and fans it out with the (un)subscriptions", async () => {
    const [actor, joiner, leaver] = [randomUUID(), randomUUID(), randomUUID()];
    const c = group(h, [actor, joiner]);
    await subscribed(h, "gw-1", c);
    await online(h, "gw-2", joiner); // gw-2 has no subscriber yet: it must hear of the join
    await online(h, "gw-1", leaver);
    const changeId = randomUUID();
    const event = new Uint8Array([8, 1, 16, 2]);
    const res = await change(c, { changeId, actor, event, joined: [joiner], left: [leaver] });
    assert.equal(res.seq, 1n);
    assert.deepEqual(
      h.appends.map((a) => ({ conversationId: a.conversationId, senderId: a.senderId, senderDeviceId: a.senderDeviceId, clientMsgId: a.clientMsgId, body: a.body })),
      [{ conversationId: c, senderId: actor, senderDeviceId: "", clientMsgId: changeId, body: "" }],
    );
    assert.deepEqual([...h.appends[0]!.event], [...event]);
    await h.ctx.fanOut.idle();
    for (const id of ["gw-1", "gw-2"]) {
      const envs = gw(h, id).calls.flatMap((x) => x.envelopes);
      assert.equal(envs.length, 1, id);
      assert.equal(envs[0]!.topicConversationId, c);
      assert.deepEqual(envs[0]!.membership?.joinedUserIds, [joiner]);
      assert.deepEqual(envs[0]!.membership?.leftUserIds, [leaver]);
      const frame = fromBinary(ServerFrameSchema, envs[0]!.serverFrame);
      assert.equal(frame.kind.case === "message" && frame.kind.value.seq, 1n);
    }
    // A retry (the groups outbox did not see the answer): same seq, nothing stored twice, fanned out again.
    const again = await change(c, { changeId, actor, event, joined: [joiner], left: [leaver] });
    assert.equal(again.seq, 1n);
    await h.ctx.fanOut.idle();
    assert.equal(gw(h, "gw-1").calls.flatMap((x) => x.envelopes).length, 2);
  });

  it("a change without an event (a block) only drops the cached membership", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    const c = direct(h, a, b);
    await send(h, c, a, "before");
    h.conversations.set(c, { kind: ConversationKind.DIRECT, memberIds: [a, b], blocked: [a, b] });
    // Until the change is applied the router serves its cached verdict (no read per message).
    await send(h, c, a, "cached");
    const res = await change(c, {});
    assert.equal(res.seq, 0n);
    await rejectsWith(send(h, c, a, "after the block"), Code.PermissionDenied);
    assert.deepEqual(h.appends.map((x) => x.body), ["before", "cached"]);
  });

  it("bad changes are refused with InvalidArgument and change nothing", async () => {
    const c = group(h, [randomUUID()]);
    await rejectsWith(change("nope"), Code.InvalidArgument);
    await rejectsWith(h.router.applyConversationChange({ conversationId: c, changeId: "x", actorId: randomUUID() }), Code.InvalidArgument);
    await rejectsWith(change(c, { joined: ["not-a-uuid"] }), Code.InvalidArgument);
    await rejectsWith(change(c, { event: new Uint8Array(64 * 1024 + 1) }), Code.InvalidArgument);
    assert.equal(h.appends.length, 0);
  });
});

describe("router: ephemeral events (SendEphemeral)", () => {
  let h: Harness;
  beforeEach(async () => (h = await harness()));
  afterEach(() => h.ctx.close());

  const event = (conversationId: string, senderId: string, deviceId = randomUUID()) => ({
    conversationId,
    senderId,
    senderDeviceId: deviceId,
    serverFrame: new Uint8Array([0x82, 0x01, 0x00]),
  });

  it("fans out like a message (users in a 1:1, topics in a group) without storing anything", async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    await online(h, "gw-1", b);
    const d = direct(h, a, b);
    const g = group(h, [a, b]);
    await subscribed(h, "gw-2", g);
    const device = randomUUID();
    const res = await h.router.sendEphemeral({ events: [event(d, a, device), event(g, a, device)] });
    assert.equal(res.refused, 0);
    await h.ctx.fanOut.idle();
    const [e1] = gw(h, "gw-1").calls.flatMap((c) => c.envelopes);
    assert.deepEqual(e1?.userIds, [b]);
    assert.deepEqual([...e1!.serverFrame], [0x82, 0x01, 0x00]);
    assert.equal(e1?.seq, 0n, "no sequence number: not a stored message");
    const [e2] = gw(h, "gw-2").calls.flatMap((c) => c.envelopes);
    assert.equal(e2?.topicConversationId, g);
    assert.equal(e2?.excludeDeviceId, device);
    assert.equal(h.appends.length, 0);
    assert.equal(h.notified.length, 0, "nobody is pushed a typing event");
  });

  it("events of non-members and unknown conversations are dropped and counted; bad ones refuse the call", async () => {
    const [a, b, mallory] = [randomUUID(), randomUUID(), randomUUID()];
    await online(h, "gw-1", b);
    const d = direct(h, a, b);
    const res = await h.router.sendEphemeral({ events: [event(d, mallory), event(randomUUID(), a), event(d, a)] });
    assert.equal(res.refused, 2);
    await h.ctx.fanOut.idle();
    assert.equal(gw(h, "gw-1").calls.flatMap((c) => c.envelopes).length, 1);
    assert.equal(h.ctx.fanOut.stats.ephemeralRefused, 2);
    await rejectsWith(h.router.sendEphemeral({ events: [{ ...event(d, a), serverFrame: new Uint8Array() }] }), Code.InvalidArgument);
    await rejectsWith(h.router.sendEphemeral({ events: [event("nope", a)] }), Code.InvalidArgument);
    await rejectsWith(h.router.sendEphemeral({ events: Array.from({ length: 1025 }, () => event(d, a)) }), Code.InvalidArgument);
  });
});

describe("router: targeted ephemeral events (receipts)", () => {
  let h: Harness;
  beforeEach(async () => (h = await harness()));
  afterEach(() => h.ctx.close());

  it("an event naming users reaches only their devices, even in a group; the sender must be allowed there", async () => {
    const [reader, author, other] = [randomUUID(), randomUUID(), randomUUID()];
    const g = group(h, [reader, author, other]);
    await subscribed(h, "gw-1", g);
    await online(h, "gw-2", author);
    await online(h, "gw-2", other);
    const device = randomUUID();
    const frame = new Uint8Array([0x92, 0x01, 0x00]);
    await h.router.sendEphemeral({ events: [{ conversationId: g, senderId: reader, senderDeviceId: device, serverFrame: frame, userIds: [author] }] });
    await h.ctx.fanOut.idle();
    assert.equal(gw(h, "gw-1").calls.length, 0, "no topic publish");
    const envs = gw(h, "gw-2").calls.flatMap((c) => c.envelopes);
    assert.equal(envs.length, 1);
    assert.deepEqual(envs[0]!.userIds, [author]);
    assert.equal(envs[0]!.excludeDeviceId, device);
    const outsider = randomUUID();
    const res = await h.router.sendEphemeral({ events: [{ conversationId: g, senderId: outsider, senderDeviceId: device, serverFrame: frame, userIds: [author] }] });
    assert.equal(res.refused, 1);
    await rejectsWith(
      h.router.sendEphemeral({ events: [{ conversationId: g, senderId: reader, senderDeviceId: device, serverFrame: frame, userIds: ["x"] }] }),
      Code.InvalidArgument,
    );
  });
});
