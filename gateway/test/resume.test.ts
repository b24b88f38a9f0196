/**
 * GatewayCore's Resume frame with fakes: ordering, holding and de-duplicating live frames
 * (direct and topic), flow control, limits, bad input, backend failures.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, describe, it } from "node:test";
import { create, fromBinary, fromJsonString, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { ClientFrameSchema, ErrorCode, ServerFrameSchema, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";
import { DeliverRequestSchema } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { GroupsService, MemberState } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { MessageSchema, MessageStoreService, type Message } from "../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { RouterService } from "../../gen/parley/router/v1/router_service_pb.js";
import { SessionService } from "../../gen/parley/session/v1/session_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { loadConfig, type GatewayConfig } from "../src/config.js";
import { topicOf, type Connection, type Principal, type SocketPort, type TopicBus } from "../src/core/connection.js";
import { decodeClientFrame } from "../src/core/frames.js";
import { GatewayCore } from "../src/core/gateway-core.js";
import { chunkPlan } from "../src/core/resume.js";
import { until } from "../../lib/testing/wait.js";

const GW = "gw-resume";

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

class FakeBus implements TopicBus {
  readonly subs = new Map<string, Set<FakeSocket>>();
  publish(topic: string, data: Uint8Array | string, binary: boolean): void {
    for (const s of this.subs.get(topic) ?? []) s.received(data, binary);
  }
  subscribers(topic: string): number {
    return this.subs.get(topic)?.size ?? 0;
  }
}

/**
 * A socket with a send buffer: every write adds its size to `buffered`; with `autoDrain`
 * the peer reads at once (buffer stays 0), otherwise `drain()` empties it.
 */
class FakeSocket implements SocketPort {
  readonly writes: (Uint8Array | string)[] = [];
  readonly closes: { code: number; reason: string }[] = [];
  readonly topics = new Set<string>();
  buffered = 0;
  maxBuffered = 0;
  autoDrain = true;
  onClose: (() => void) | undefined;
  constructor(private readonly bus: FakeBus) {}

  send(data: Uint8Array | string): boolean {
    this.writes.push(data);
    if (!this.autoDrain) {
      this.buffered += typeof data === "string" ? data.length : data.byteLength;
      this.maxBuffered = Math.max(this.maxBuffered, this.buffered);
    }
    return true;
  }
  cork(fn: () => void): void {
    fn();
  }
  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
    for (const t of this.topics) this.bus.subs.get(t)?.delete(this);
    this.topics.clear();
    this.onClose?.();
  }
  subscribe(topic: string): void {
    this.topics.add(topic);
    let set = this.bus.subs.get(topic);
    if (!set) this.bus.subs.set(topic, (set = new Set()));
    set.add(this);
  }
  unsubscribe(topic: string): void {
    this.topics.delete(topic);
    this.bus.subs.get(topic)?.delete(this);
  }
  publish(topic: string, data: Uint8Array | string, binary: boolean): void {
    for (const s of this.bus.subs.get(topic) ?? []) if (s !== this) s.received(data, binary);
  }
  bufferedAmount(): number {
    return this.buffered;
  }
  received(data: Uint8Array | string, _binary: boolean): void {
    this.send(data);
  }
  get frames(): ServerFrame[] {
    return this.writes.map((w) => (typeof w === "string" ? fromJsonString(ServerFrameSchema, w) : fromBinary(ServerFrameSchema, w)));
  }
  /** The frames as short strings: `c:seq` for messages (c = conversation label), `done:...`, or the kind. */
  trace(label: (conversationId: string) => string): string[] {
    return this.frames.map((f) => {
      switch (f.kind.case) {
        case "message":
          return `${label(f.kind.value.conversationId)}:${f.kind.value.seq}`;
        case "resumeDone":
          return `done:${f.kind.value.complete}/${f.kind.value.messages}/${f.kind.value.conversations}`;
        case "error":
          return `error:${ErrorCode[f.kind.value.code]}`;
        default:
          return f.kind.case ?? "?";
      }
    });
  }
}

interface Membership {
  conversationId: string;
  group: boolean;
  leftSeq?: number;
}

/** The fakes behind the core: groups (memberships), message store (logs), with gates and failures. */
class World {
  readonly logs = new Map<string, Message[]>();
  readonly members = new Map<string, Membership[]>();
  readonly rangeCalls: { conversationId: string; afterSeq: number; limit: number }[] = [];
  /** While set, GetRange waits for it. */
  rangeGate: Promise<void> | undefined;
  /** GetRange call number n (1-based) fails. */
  failRangeCall = 0;
  failList = false;

  append(conversationId: string, n: number, firstSentAtMs = 1_700_000_000_000): Message[] {
    const log = this.logs.get(conversationId) ?? [];
    this.logs.set(conversationId, log);
    const out: Message[] = [];
    for (let i = 0; i < n; i++) {
      const seq = log.length + 1;
      const m = create(MessageSchema, {
        conversationId,
        seq: BigInt(seq),
        messageId: randomUUID(),
        senderId: randomUUID(),
        senderDeviceId: randomUUID(),
        clientMsgId: randomUUID(),
        body: `m${seq}`,
        sentAt: timestampFromMs(firstSentAtMs + i),
      });
      log.push(m);
      out.push(m);
    }
    return out;
  }

  join(userId: string, m: Membership): void {
    const list = this.members.get(userId) ?? [];
    list.push(m);
    this.members.set(userId, list);
  }
}

interface Harness {
  core: GatewayCore;
  cfg: GatewayConfig;
  bus: FakeBus;
  world: World;
}

function harness(env: Record<string, string> = {}): Harness {
  const cfg = { ...loadConfig({ PARLEY_RESUME_PAGE_SIZE: "3", PARLEY_FRAME_BURST: "100", ...env }), id: GW };
  const world = new World();
  const groups = createClient(
    GroupsService,
    createRouterTransport((r) =>
      r.service(GroupsService, {
        listUserGroupIds: (req) => ({
          users: req.userIds.map((userId) => ({
            userId,
            conversationIds: (world.members.get(userId) ?? []).filter((m) => m.group && m.leftSeq === undefined).map((m) => m.conversationId),
          })),
        }),
        listUserConversations: (req) => {
          if (world.failList) throw new ConnectError("groups down", Code.Unavailable);
          return {
            conversations: (world.members.get(req.userId) ?? []).map((m) => ({
              conversation: { conversationId: m.conversationId },
              member: {
                userId: req.userId,
                state: m.leftSeq === undefined ? MemberState.ACTIVE : MemberState.LEFT,
                leftSeq: BigInt(m.leftSeq ?? 0),
              },
            })),
          };
        },
        advanceReadCursors: () => ({}),
      }),
    ),
  );
  const messagestore = createClient(
    MessageStoreService,
    createRouterTransport((r) =>
      r.service(MessageStoreService, {
        getHeads: (req) => {
          assert.ok(req.conversationIds.length <= 500);
          return {
            heads: req.conversationIds.flatMap((id) => {
              const last = world.logs.get(id)?.at(-1);
              return last ? [{ conversationId: id, lastSeq: last.seq, lastSentAt: last.sentAt }] : [];
            }),
          };
        },
        getRange: async (req) => {
          world.rangeCalls.push({ conversationId: req.conversationId, afterSeq: Number(req.afterSeq), limit: req.limit });
          const n = world.rangeCalls.length;
          if (world.rangeGate) await world.rangeGate;
          if (n === world.failRangeCall) throw new ConnectError("store down", Code.Unavailable);
          const log = world.logs.get(req.conversationId) ?? [];
          return { messages: log.slice(Number(req.afterSeq), Number(req.afterSeq) + req.limit) };
        },
      }),
    ),
  );
  const session = createClient(SessionService, createRouterTransport((r) => r.service(SessionService, {})));
  const router = createClient(RouterService, createRouterTransport((r) => r.service(RouterService, {})));
  const bus = new FakeBus();
  const core = new GatewayCore(cfg, {
    session,
    send: (req) => router.send(req),
    presence: undefined,
    groups,
    messagestore,
    registry: new MemoryConnectionRegistry({ ttlMs: cfg.registryTtlMs }),
    clock: Date.now,
    logger: createLogger("test", "silent"),
  });
  core.useTopicBus(bus);
  return { core, cfg, bus, world };
}

function connect(h: Harness, p: Principal = { userId: randomUUID(), deviceId: randomUUID(), sessionId: randomUUID() }) {
  const conn = h.core.newConnection(p, "binary");
  const socket = new FakeSocket(h.bus);
  socket.onClose = () => h.core.close(conn);
  h.core.open(conn, socket);
  return { conn, socket, p };
}

async function connected(h: Harness, p?: Principal) {
  const c = connect(h, p);
  await until("hello", () => c.socket.writes.length > 0);
  return c;
}

function resumeFrame(conn: Connection, h: Harness, ref: number, cursors: { conversationId: string; seq: bigint }[] = [], maxMessages = 0): void {
  const bytes = toBinary(ClientFrameSchema, create(ClientFrameSchema, { ref, kind: { case: "resume", value: { cursors, maxMessages } } }));
  h.core.onFrame(conn, decodeClientFrame(bytes.slice().buffer, true, h.cfg.maxFrameBytes));
}

/** The frame a router delivers for a stored message. */
function messageBytes(m: Message): Uint8Array {
  return toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, {
      kind: { case: "message", value: { conversationId: m.conversationId, seq: m.seq, messageId: m.messageId, body: m.body } },
    }),
  );
}

function deliverDirect(h: Harness, userId: string, m: Message): void {
  h.core.deliver(
    create(DeliverRequestSchema, {
      envelopes: [{ userIds: [userId], serverFrame: messageBytes(m), conversationId: m.conversationId, seq: m.seq }],
    }),
  );
}

function deliverTopic(h: Harness, m: Message): void {
  h.core.deliver(
    create(DeliverRequestSchema, {
      envelopes: [{ topicConversationId: m.conversationId, serverFrame: messageBytes(m), conversationId: m.conversationId, seq: m.seq }],
    }),
  );
}

const done = (s: FakeSocket) => s.frames.some((f) => f.kind.case === "resumeDone");

describe("GatewayCore: Resume", () => {
  let h: Harness;
  afterEach(() => h.core.drain());

  it("sends missed messages oldest first per conversation, most recently active first, in GetRange pages, then resume_done", async () => {
    h = harness();
    const user = randomUUID();
    const [a, b, c, left, foreign, quiet] = Array.from({ length: 6 }, () => randomUUID());
    const label = (id: string) => ({ [a!]: "a", [b!]: "b", [c!]: "c", [left!]: "left" })[id] ?? "?";
    h.world.join(user, { conversationId: a!, group: false });
    h.world.join(user, { conversationId: b!, group: true });
    h.world.join(user, { conversationId: c!, group: true });
    h.world.join(user, { conversationId: quiet!, group: true }); // no message at all
    h.world.join(user, { conversationId: left!, group: true, leftSeq: 2 });
    h.world.append(a!, 7, 1000); // sent at 1000..1006
    h.world.append(b!, 2, 3000); // most recent
    h.world.append(c!, 4, 2000);
    h.world.append(left!, 5, 4000); // newest, but the user left at seq 2
    h.world.append(foreign!, 3, 5000);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    resumeFrame(conn, h, 7, [
      { conversationId: a!, seq: 2n },
      { conversationId: c!, seq: 4n }, // up to date
      { conversationId: foreign!, seq: 0n }, // not the user's: ignored
    ]);
    await until("resume_done", () => done(socket));
    assert.deepEqual(socket.trace(label), [
      "hello",
      "left:1",
      "left:2",
      "b:1",
      "b:2",
      "a:3",
      "a:4",
      "a:5",
      "a:6",
      "a:7",
      "done:true/9/3",
    ]);
    assert.equal(socket.frames.at(-1)!.ref, 7, "resume_done answers the Resume frame");
    assert.ok(socket.frames.slice(1, -1).every((f) => f.ref === 0), "messages are ordinary frames");
    const m = socket.frames[5]!;
    assert.ok(m.kind.case === "message" && m.kind.value.body === "m3" && m.kind.value.senderId !== "");
    assert.deepEqual(
      h.world.rangeCalls.map((r) => `${label(r.conversationId)}>${r.afterSeq}#${r.limit}`),
      ["left>0#2", "b>0#2", "a>2#3", "a>5#2"],
      "pages of at most PARLEY_RESUME_PAGE_SIZE, bounded by each conversation's last seq",
    );
    assert.equal(socket.closes.length, 0);
  });

  it("holds live direct and topic frames during the resume and writes them after resume_done without repeats; topics subscribe only then", async () => {
    h = harness();
    const user = randomUUID();
    const [direct, group] = [randomUUID(), randomUUID()];
    const label = (id: string) => (id === direct ? "d" : id === group ? "g" : "?");
    h.world.join(user, { conversationId: direct, group: false });
    h.world.join(user, { conversationId: group, group: true });
    h.world.append(direct, 3, 1000);
    h.world.append(group, 3, 2000);
    const otherUser = randomUUID();
    h.world.join(otherUser, { conversationId: group, group: true });
    const other = await connected(h, { userId: otherUser, deviceId: randomUUID(), sessionId: "s2" });
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    assert.ok(socket.topics.has(topicOf("binary", group)), "subscribed at the socket after Hello");

    const gate = deferred();
    h.world.rangeGate = gate.promise;
    resumeFrame(conn, h, 1);
    assert.equal(socket.topics.size, 0, "resuming: not subscribed at the socket");
    await until("first GetRange", () => h.world.rangeCalls.length > 0);
    // Live traffic meanwhile: a repeat of stored seq 3 of each conversation, and new ones.
    const [g4, g5] = h.world.append(group, 2, 9000);
    const [d4] = h.world.append(direct, 1, 9000);
    deliverTopic(h, h.world.logs.get(group)![2]!); // g:3, also sent by the resume
    deliverDirect(h, user, h.world.logs.get(direct)![2]!); // d:3, also sent by the resume
    deliverTopic(h, g4!);
    deliverDirect(h, user, d4!);
    deliverTopic(h, g5!);
    assert.deepEqual(socket.trace(label), ["hello"], "nothing live is written while the resume runs");
    gate.resolve();
    h.world.rangeGate = undefined;
    await until("resume_done", () => done(socket));
    assert.deepEqual(socket.trace(label), ["hello", "g:1", "g:2", "g:3", "d:1", "d:2", "d:3", "done:true/6/2", "g:4", "d:4", "g:5"]);
    assert.ok(socket.topics.has(topicOf("binary", group)), "subscribed at the socket again");
    // From now on topic frames come through the socket subscription, once.
    const [g6] = h.world.append(group, 1, 9500);
    deliverTopic(h, g6!);
    assert.deepEqual(socket.trace(label).slice(-2), ["g:5", "g:6"]);
    assert.equal(other.socket.frames.filter((f) => f.kind.case === "message").length, 4, "another member got the live frames as usual");
  });

  it("a Resume sent before Hello starts with Hello; live frames meanwhile are held", async () => {
    h = harness();
    const user = randomUUID();
    const group = randomUUID();
    h.world.join(user, { conversationId: group, group: true });
    h.world.append(group, 2);
    const { conn, socket } = connect(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    resumeFrame(conn, h, 3);
    await until("resume_done", () => done(socket));
    const frames = socket.trace(() => "g");
    assert.deepEqual(frames, ["hello", "g:1", "g:2", "done:true/2/1"]);
    assert.ok(socket.topics.has(topicOf("binary", group)));
  });

  it("never lets the send buffer grow past twice its bound: waits for drain notifications", async () => {
    h = harness({ PARLEY_MAX_BACKPRESSURE_BYTES: String(64 * 1024), PARLEY_RESUME_BUFFER_BYTES: "2048", PARLEY_RESUME_PAGE_SIZE: "50" });
    const user = randomUUID();
    const conv = randomUUID();
    h.world.join(user, { conversationId: conv, group: false });
    h.world.append(conv, 300);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    socket.autoDrain = false;
    resumeFrame(conn, h, 1);
    let drains = 0;
    for (let i = 0; i < 1000 && !done(socket); i++) {
      await until("the resume waits for room", () => socket.buffered >= 2048 || done(socket));
      if (done(socket)) break;
      const before = socket.writes.length;
      // Stuck until the socket drains: nothing more is written.
      for (let t = 0; t < 20; t++) await new Promise<void>((r) => setImmediate(r));
      assert.equal(socket.writes.length, before, "no write while the buffer is over the bound");
      socket.buffered = 0;
      drains++;
      h.core.drained(conn);
    }
    assert.ok(done(socket));
    assert.ok(drains >= 5, `waited for drain ${drains} times`);
    assert.ok(socket.maxBuffered < 2 * 2048 + 200, `max buffered ${socket.maxBuffered}`);
    assert.equal(socket.frames.filter((f) => f.kind.case === "message").length, 300);
    assert.equal(socket.closes.length, 0);
  });

  it("stops at max_messages (complete=false) and caps it at 10,000", async () => {
    h = harness();
    const user = randomUUID();
    const [a, b] = [randomUUID(), randomUUID()];
    h.world.join(user, { conversationId: a, group: false });
    h.world.join(user, { conversationId: b, group: false });
    h.world.append(a, 5, 2000);
    h.world.append(b, 5, 1000);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    resumeFrame(conn, h, 1, [], 7);
    await until("resume_done", () => done(socket));
    const label = (id: string) => (id === a ? "a" : "b");
    assert.deepEqual(socket.trace(label), ["hello", "a:1", "a:2", "a:3", "a:4", "a:5", "b:1", "b:2", "done:false/7/2"]);
    // Exactly the budget: complete.
    const again = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s3" });
    resumeFrame(again.conn, h, 2, [], 10);
    await until("resume_done", () => done(again.socket));
    assert.equal(again.socket.trace(label).at(-1), "done:true/10/2");
    // The plan: the default and the cap are 10,000.
    const item = [{ conversationId: a, afterSeq: 0, lastSeq: 50_000, lastSentAtMs: 0 }];
    const { chunks, truncated } = chunkPlan(item, 1000, 10_000);
    assert.equal(chunks.reduce((n, c) => n + c.limit, 0), 10_000);
    assert.ok(truncated);
  });

  it("answers a second Resume while one runs with LIMIT_EXCEEDED, a bad cursor with INVALID_ARGUMENT; the connection stays", async () => {
    h = harness();
    const user = randomUUID();
    const a = randomUUID();
    h.world.join(user, { conversationId: a, group: false });
    h.world.append(a, 2);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    resumeFrame(conn, h, 1, [{ conversationId: "not-a-uuid", seq: 1n }]);
    resumeFrame(conn, h, 2, [{ conversationId: a.toUpperCase(), seq: 1n }]);
    assert.deepEqual(socket.trace(() => "a"), ["hello", "error:INVALID_ARGUMENT", "error:INVALID_ARGUMENT"]);
    assert.match(socket.frames[1]!.kind.case === "error" ? socket.frames[1]!.kind.value.message : "", /cursors\[0\]\.conversation_id/);
    assert.equal(socket.frames[1]!.ref, 1);
    const gate = deferred();
    h.world.rangeGate = gate.promise;
    resumeFrame(conn, h, 3);
    resumeFrame(conn, h, 4);
    await until("limit error", () => socket.frames.length === 4);
    assert.equal(socket.trace(() => "a").at(-1), "error:LIMIT_EXCEEDED");
    assert.equal(socket.frames.at(-1)!.ref, 4);
    gate.resolve();
    h.world.rangeGate = undefined;
    await until("resume_done", () => done(socket));
    assert.equal(socket.trace(() => "a").at(-1), "done:true/2/1");
    // Once done, another resume may run.
    resumeFrame(conn, h, 5, [{ conversationId: a, seq: 1n }]);
    await until("second resume_done", () => socket.frames.filter((f) => f.kind.case === "resumeDone").length === 2);
    assert.deepEqual(socket.trace(() => "a").slice(-2), ["a:2", "done:true/1/1"]);
    assert.equal(socket.closes.length, 0);
  });

  it("a backend failure mid-resume ends it with complete=false, flushes what was held, subscribes the topics; the connection stays", async () => {
    h = harness({ PARLEY_RESUME_FETCH_AHEAD: "1" });
    const user = randomUUID();
    const group = randomUUID();
    h.world.join(user, { conversationId: group, group: true });
    h.world.append(group, 9); // three pages of 3
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    h.world.failRangeCall = 2;
    const gate = deferred();
    h.world.rangeGate = gate.promise;
    resumeFrame(conn, h, 1);
    await until("GetRange", () => h.world.rangeCalls.length === 1);
    const [m10] = h.world.append(group, 1);
    deliverTopic(h, m10!);
    gate.resolve();
    h.world.rangeGate = undefined;
    await until("resume_done", () => done(socket));
    assert.deepEqual(socket.trace(() => "g"), ["hello", "g:1", "g:2", "g:3", "done:false/3/1", "g:10"]);
    assert.ok(socket.topics.has(topicOf("binary", group)));
    assert.equal(socket.closes.length, 0);

    // The groups service down at the start: the same.
    h.world.failList = true;
    resumeFrame(conn, h, 2);
    await until("second resume_done", () => socket.frames.filter((f) => f.kind.case === "resumeDone").length === 2);
    assert.equal(socket.trace(() => "g").at(-1), "done:false/0/0");
  });

  it("gives up the hold when it overflows: resume_done complete=false at once, held frames follow, nothing more is resumed", async () => {
    h = harness({ PARLEY_MAX_BACKPRESSURE_BYTES: String(64 * 1024), PARLEY_RESUME_HOLD_BYTES: "600" });
    const user = randomUUID();
    const [group, direct] = [randomUUID(), randomUUID()];
    h.world.join(user, { conversationId: group, group: true });
    h.world.join(user, { conversationId: direct, group: false });
    h.world.append(direct, 6);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    const gate = deferred();
    h.world.rangeGate = gate.promise;
    resumeFrame(conn, h, 1);
    await until("GetRange", () => h.world.rangeCalls.length > 0);
    const live = h.world.append(group, 20);
    let n = 0;
    while (!done(socket)) deliverTopic(h, live[n++]!);
    assert.ok(n < 20, `overflowed after ${n} frames`);
    const trace = socket.trace((id) => (id === group ? "g" : "d"));
    assert.deepEqual(trace, ["hello", "done:false/0/0", ...live.slice(0, n).map((m) => `g:${m.seq}`)]);
    for (const m of live.slice(n)) deliverTopic(h, m);
    gate.resolve();
    h.world.rangeGate = undefined;
    await until("the rest arrives live", () => socket.frames.length === 2 + 20);
    for (let t = 0; t < 50; t++) await new Promise<void>((r) => setImmediate(r));
    assert.ok(
      socket.frames.every((f) => f.kind.case !== "message" || f.kind.value.conversationId === group),
      "the resume wrote nothing after resume_done",
    );
    assert.equal(socket.closes.length, 0);
  });

  it("a connection closed mid-resume gets nothing more and leaves no state behind", async () => {
    h = harness();
    const user = randomUUID();
    const group = randomUUID();
    h.world.join(user, { conversationId: group, group: true });
    h.world.append(group, 9);
    const { conn, socket } = await connected(h, { userId: user, deviceId: randomUUID(), sessionId: "s" });
    const gate = deferred();
    h.world.rangeGate = gate.promise;
    resumeFrame(conn, h, 1);
    await until("GetRange", () => h.world.rangeCalls.length > 0);
    socket.close(1000, "bye");
    gate.resolve();
    h.world.rangeGate = undefined;
    for (let t = 0; t < 50; t++) await new Promise<void>((r) => setImmediate(r));
    assert.deepEqual(socket.trace(() => "g"), ["hello"]);
    assert.equal(conn.resume, undefined);
    assert.equal(h.bus.subscribers(topicOf("binary", group)), 0);
    assert.equal(h.core.stats.connections, 0);
  });

  it("answers UNAVAILABLE without a message store", async () => {
    h = harness();
    const core = new GatewayCore(h.cfg, {
      session: createClient(SessionService, createRouterTransport((r) => r.service(SessionService, {}))),
      send: async () => {
        throw new Error("no router");
      },
      presence: undefined,
      groups: createClient(
        GroupsService,
        createRouterTransport((r) => r.service(GroupsService, { listUserGroupIds: (req) => ({ users: req.userIds.map((userId) => ({ userId })) }) })),
      ),
      registry: new MemoryConnectionRegistry({ ttlMs: h.cfg.registryTtlMs }),
      clock: Date.now,
      logger: createLogger("test", "silent"),
    });
    core.useTopicBus(h.bus);
    try {
      const c = await connected({ ...h, core });
      resumeFrame(c.conn, { ...h, core }, 9);
      assert.deepEqual(c.socket.trace(() => "?"), ["hello", "error:UNAVAILABLE"]);
    } finally {
      await core.drain();
    }
  });
});

describe("loadConfig: resume settings", () => {
  it("derives the buffer and hold bounds from the send buffer limit, and checks they fit in it", () => {
    const cfg = loadConfig({});
    assert.equal(cfg.resumePageSize, 200);
    assert.equal(cfg.resumeFetchAhead, 4);
    assert.equal(cfg.resumeBufferBytes, (1 << 20) / 8);
    assert.equal(cfg.resumeHoldBytes, (1 << 20) / 4);
    assert.equal(loadConfig({ PARLEY_MAX_BACKPRESSURE_BYTES: "8192" }).resumeHoldBytes, 2048);
    assert.throws(() => loadConfig({ PARLEY_RESUME_HOLD_BYTES: String(1 << 20) }), /PARLEY_RESUME_HOLD_BYTES/);
    assert.throws(() => loadConfig({ PARLEY_RESUME_PAGE_SIZE: "1001" }), /PARLEY_RESUME_PAGE_SIZE/);
  });
});
