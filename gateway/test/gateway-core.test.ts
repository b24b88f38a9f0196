import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, afterEach, before, beforeEach, describe, it, mock } from "node:test";
import { create, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { ClientFrameSchema, ErrorCode, ServerFrameSchema, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";
import { DeliverRequestSchema } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { GroupsService, type ReadCursor } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { PresenceService, type ReportConnectionsRequest } from "../../gen/parley/presence/v1/presence_service_pb.js";
import { RouterService, type SendRequest } from "../../gen/parley/router/v1/router_service_pb.js";
import { SessionService } from "../../gen/parley/session/v1/session_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import type { ConnectionRegistry, DeviceEntry } from "../../lib/registry/connection-registry.js";
import { RedisConnectionRegistry } from "../../lib/registry/connection-registry-redis.js";
import { openRedis } from "../../lib/redis.js";
import { testPrefix, ThrowawayRedis } from "../../lib/testing/redis.js";
import { realBackend } from "../../lib/testing/backends.js";
import { loadConfig, type GatewayConfig } from "../src/config.js";
import type { Connection, Principal, SocketPort, TopicBus } from "../src/core/connection.js";
import { decodeClientFrame } from "../src/core/frames.js";
import { GatewayCore } from "../src/core/gateway-core.js";
import { CloseCode, type Encoding } from "../src/core/protocol.js";
import { until, turns } from "../../lib/testing/wait.js";

const GW = "gw-test";

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Fake gateway-wide topics, like uWS: a publish reaches every subscribed socket (except the publishing one). */
class FakeBus implements TopicBus {
  readonly subs = new Map<string, Set<FakeSocket>>();
  /** Every publish: the topic, and the socket it went through (undefined: gateway-wide). */
  readonly publishes: { topic: string; from: FakeSocket | undefined }[] = [];

  publish(topic: string, data: Uint8Array | string, binary: boolean): void {
    this.publishFrom(undefined, topic, data, binary);
  }

  subscribers(topic: string): number {
    return this.subs.get(topic)?.size ?? 0;
  }

  publishFrom(from: FakeSocket | undefined, topic: string, data: Uint8Array | string, binary: boolean): void {
    assert.equal(binary, typeof data !== "string", "binary flag matches the data");
    assert.equal(topic.startsWith("b/"), binary, "binary frames go to b/ topics, JSON ones to j/");
    this.publishes.push({ topic, from });
    for (const s of this.subs.get(topic) ?? []) if (s !== from) s.received(data, binary);
  }
}

/** A fake socket: records what the core writes, corks and closes. */
class FakeSocket implements SocketPort {
  readonly topics = new Set<string>();
  constructor(private readonly bus?: FakeBus) {}

  readonly writes: { data: Uint8Array | string; binary: boolean; corked: boolean }[] = [];
  readonly closes: { code: number; reason: string }[] = [];
  corks = 0;
  private corked = false;
  /** What send() answers: false simulates a full send buffer. */
  accepts = true;
  /** Called on every send, before it is recorded (assertions about the moment of a write). */
  onSend: ((data: Uint8Array | string) => void) | undefined;
  /** Like uWS: close() runs the close handler at once. */
  onClose: (() => void) | undefined;

  send(data: Uint8Array | string, binary: boolean): boolean {
    this.onSend?.(data);
    assert.equal(binary, typeof data !== "string", "binary flag matches the data");
    this.writes.push({ data, binary, corked: this.corked });
    return this.accepts;
  }

  cork(fn: () => void): void {
    this.corks++;
    this.corked = true;
    try {
      fn();
    } finally {
      this.corked = false;
    }
  }

  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
    // Like uWS: a closed socket leaves its topics.
    for (const t of this.topics) this.bus?.subs.get(t)?.delete(this);
    this.topics.clear();
    this.onClose?.();
  }

  subscribe(topic: string): void {
    assert.ok(this.closes.length === 0, "no subscribe on a closed socket");
    this.topics.add(topic);
    let set = this.bus!.subs.get(topic);
    if (!set) this.bus!.subs.set(topic, (set = new Set()));
    set.add(this);
  }

  unsubscribe(topic: string): void {
    this.topics.delete(topic);
    this.bus!.subs.get(topic)?.delete(this);
  }

  publish(topic: string, data: Uint8Array | string, binary: boolean): void {
    this.bus!.publishFrom(this, topic, data, binary);
  }

  /** A frame that reached this socket through a topic. */
  received(data: Uint8Array | string, binary: boolean): void {
    this.writes.push({ data, binary, corked: this.corked });
  }

  get frames(): ServerFrame[] {
    return this.writes.map((w) =>
      typeof w.data === "string" ? fromJsonString(ServerFrameSchema, w.data) : fromBinary(ServerFrameSchema, w.data),
    );
  }

  kinds(): (string | undefined)[] {
    return this.frames.map((f) => f.kind.case);
  }

  errors() {
    return this.frames.flatMap((f) => (f.kind.case === "error" ? [{ ref: f.ref, ...f.kind.value }] : []));
  }
}

/** The memory registry, counting calls, with an optional gate or failure on add. */
class TestRegistry extends MemoryConnectionRegistry {
  readonly calls: string[] = [];
  readonly refreshed: DeviceEntry[][] = [];
  failAdd: Error | undefined;
  failRefresh: Error | undefined;
  addGate: Promise<void> | undefined;

  override async refresh(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    this.calls.push(`refresh ${entries.length}`);
    this.refreshed.push([...entries]);
    if (this.failRefresh) throw this.failRefresh;
    await super.refresh(gatewayId, entries);
  }

  override async add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    this.calls.push(`add ${entries.length}`);
    if (this.addGate) await this.addGate;
    if (this.failAdd) throw this.failAdd;
    await super.add(gatewayId, entries);
  }

  override async remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    this.calls.push(`remove ${entries.length}`);
    await super.remove(gatewayId, entries);
  }

  readonly topicCalls: { op: "add" | "remove"; ids: string[] }[] = [];
  failAddTopics: Error | undefined;

  override async addTopics(gatewayId: string, ids: readonly string[]): Promise<void> {
    this.calls.push(`addTopics ${ids.length}`);
    this.topicCalls.push({ op: "add", ids: [...ids].sort() });
    if (this.failAddTopics) throw this.failAddTopics;
    await super.addTopics(gatewayId, ids);
  }

  override async removeTopics(gatewayId: string, ids: readonly string[]): Promise<void> {
    this.calls.push(`removeTopics ${ids.length}`);
    this.topicCalls.push({ op: "remove", ids: [...ids].sort() });
    await super.removeTopics(gatewayId, ids);
  }
}

/** The fake groups service: users' group lists and the read cursors it was sent. */
interface FakeGroups {
  /** userId → the group conversations they are an active member of. */
  groupsOf: Map<string, string[]>;
  /** The user ids of every ListUserGroupIds call. */
  listCalls: string[][];
  /** While set, ListUserGroupIds waits for it. */
  listGate: Promise<void> | undefined;
  listFail: Error | undefined;
  cursorCalls: { userId: string; conversationId: string; seq: number }[][];
  cursorGate: Promise<void> | undefined;
  cursorFail: Error | undefined;
}

interface Harness {
  core: GatewayCore;
  registry: TestRegistry;
  clock: { now: number };
  routerCalls: SendRequest[];
  /** Replaces the router's Send implementation. */
  routerImpl: { send: (req: SendRequest) => Promise<Record<string, unknown>> };
  presenceReports: ReportConnectionsRequest[];
  presenceFail: { next: boolean };
  cfg: GatewayConfig;
  bus: FakeBus;
  groups: FakeGroups;
}

/** `registry` replaces the test registry in the core (h.registry is then unused). */
function harness(env: Record<string, string> = {}, registryOverride?: ConnectionRegistry): Harness {
  const cfg = { ...loadConfig({ PARLEY_FRAMES_PER_SECOND: "10", PARLEY_FRAME_BURST: "3", PARLEY_MAX_INFLIGHT_SENDS: "2", ...env }), id: GW };
  const clock = { now: 1_000_000 };
  const registry = new TestRegistry({ ttlMs: cfg.registryTtlMs, clock: () => clock.now });
  const routerCalls: SendRequest[] = [];
  const routerImpl: Harness["routerImpl"] = {
    send: async (req) => ({
      conversationId: req.conversationId,
      seq: BigInt(routerCalls.length),
      messageId: `m-${routerCalls.length}`,
      sentAt: timestampFromMs(1_700_000_000_000),
      duplicate: false,
    }),
  };
  const presenceReports: ReportConnectionsRequest[] = [];
  const presenceFail = { next: false };
  const router = createClient(
    RouterService,
    createRouterTransport((r) =>
      r.service(RouterService, {
        send: async (req) => {
          routerCalls.push(req);
          return routerImpl.send(req);
        },
      }),
    ),
  );
  const presence = createClient(
    PresenceService,
    createRouterTransport((r) =>
      r.service(PresenceService, {
        reportConnections: (req) => {
          if (presenceFail.next) {
            presenceFail.next = false;
            throw new ConnectError("presence down", Code.Unavailable);
          }
          presenceReports.push(req);
          return {};
        },
      }),
    ),
  );
  const session = createClient(
    SessionService,
    createRouterTransport((r) =>
      r.service(SessionService, {
        authenticate: (req) => {
          if (req.accessToken !== "good") throw new ConnectError("bad token", Code.Unauthenticated);
          return { principal: { userId: "u", deviceId: "d", sessionId: "s" } };
        },
      }),
    ),
  );
  const fakeGroups: FakeGroups = {
    groupsOf: new Map(),
    listCalls: [],
    listGate: undefined,
    listFail: undefined,
    cursorCalls: [],
    cursorGate: undefined,
    cursorFail: undefined,
  };
  const groups = createClient(
    GroupsService,
    createRouterTransport((r) =>
      r.service(GroupsService, {
        listUserGroupIds: async (req) => {
          fakeGroups.listCalls.push([...req.userIds]);
          // The answer is read before the gate: a change made meanwhile is not in it.
          const users = req.userIds.map((userId) => ({ userId, conversationIds: [...(fakeGroups.groupsOf.get(userId) ?? [])] }));
          if (fakeGroups.listGate) await fakeGroups.listGate;
          if (fakeGroups.listFail) throw fakeGroups.listFail;
          return { users };
        },
        advanceReadCursors: async (req) => {
          fakeGroups.cursorCalls.push(req.cursors.map((c: ReadCursor) => ({ userId: c.userId, conversationId: c.conversationId, seq: Number(c.seq) })));
          if (fakeGroups.cursorGate) await fakeGroups.cursorGate;
          if (fakeGroups.cursorFail) throw fakeGroups.cursorFail;
          return {};
        },
      }),
    ),
  );
  const bus = new FakeBus();
  const core = new GatewayCore(cfg, {
    session,
    send: (req) => router.send(req),
    presence,
    groups,
    registry: registryOverride ?? registry,
    clock: () => clock.now,
    logger: createLogger("test", "silent"),
  });
  core.useTopicBus(bus);
  return { core, registry, clock, routerCalls, routerImpl, presenceReports, presenceFail, cfg, bus, groups: fakeGroups };
}

let seq = 0;
function principal(userId: string = randomUUID(), deviceId: string = randomUUID()): Principal {
  return { userId, deviceId, sessionId: `session-${++seq}` };
}

/** Opens a connection on a fake socket wired like uWS (close() runs core.close). */
function connect(h: Harness, p: Principal = principal(), encoding: Encoding = "binary") {
  const conn = h.core.newConnection(p, encoding);
  const socket = new FakeSocket(h.bus);
  socket.onClose = () => h.core.close(conn);
  h.core.open(conn, socket);
  return { conn, socket, p };
}

async function connected(h: Harness, p?: Principal, encoding?: Encoding) {
  const c = connect(h, p, encoding);
  await until("hello", () => c.socket.writes.length > 0);
  return c;
}

async function registered(h: Harness, userId: string): Promise<string[] | undefined> {
  return (await h.registry.lookup([userId])).get(userId);
}

function frameIn(conn: Connection, h: Harness, frame: Parameters<typeof create<typeof ClientFrameSchema>>[1]): void {
  const bytes = toBinary(ClientFrameSchema, create(ClientFrameSchema, frame));
  h.core.onFrame(conn, decodeClientFrame(bytes.slice().buffer, true, h.cfg.maxFrameBytes));
}

function sendFrame(ref: number, body = "hi", conversationId: string = randomUUID(), clientMsgId: string = randomUUID()) {
  return { ref, kind: { case: "send" as const, value: { clientMsgId, conversationId, body } } };
}

function messageFrame(body: string): Uint8Array {
  return toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, { kind: { case: "message", value: { conversationId: "c", seq: 1n, messageId: body, body } } }),
  );
}

describe("GatewayCore: connection lifecycle", () => {
  let h: Harness;
  beforeEach(() => (h = harness()));
  afterEach(() => h.core.drain());

  it("Hello is the first frame, written only once the registry holds the device", async () => {
    const gate = deferred();
    h.registry.addGate = gate.promise;
    const p = principal();
    const conn = h.core.newConnection(p, "binary");
    const socket = new FakeSocket(h.bus);
    let registeredAtHello: string[] | undefined;
    let helloSeen = false;
    socket.onSend = () => {
      if (helloSeen) return;
      helloSeen = true;
      // The memory registry answers synchronously inside its async function: peek at its state.
      void h.registry.lookup([p.userId]).then((m) => (registeredAtHello = m.get(p.userId)));
    };
    h.core.open(conn, socket);
    await until("registry add called", () => h.registry.calls.includes("add 1"));
    for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
    assert.equal(socket.writes.length, 0, "nothing before the registry answered");
    assert.equal(await registered(h, p.userId), undefined);
    gate.resolve();
    await until("hello", () => socket.writes.length > 0);
    await until("lookup at hello", () => registeredAtHello !== undefined);
    assert.deepEqual(registeredAtHello, [GW]);
    const [hello] = socket.frames;
    assert.equal(hello?.kind.case, "hello");
    if (hello?.kind.case !== "hello") return;
    assert.equal(hello.ref, 0);
    assert.equal(hello.kind.value.userId, p.userId);
    assert.equal(hello.kind.value.deviceId, p.deviceId);
    assert.equal(hello.kind.value.sessionId, p.sessionId);
    assert.equal(hello.kind.value.gatewayId, GW);
    assert.equal(hello.kind.value.maxFrameBytes, h.cfg.maxFrameBytes);
    assert.equal(hello.kind.value.idleTimeoutSeconds, h.cfg.idleTimeoutSeconds);
    assert.ok(conn.ready);
  });

  it("frames written before Hello wait and follow it, in order, in the same cork", async () => {
    const gate = deferred();
    h.registry.addGate = gate.promise;
    const { conn, socket, p } = connect(h);
    h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ userIds: [p.userId], serverFrame: messageFrame("early 1") }] }));
    frameIn(conn, h, { ref: 5, kind: { case: "ping", value: { nonce: 9n } } });
    h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ userIds: [p.userId], serverFrame: messageFrame("early 2") }] }));
    assert.equal(socket.writes.length, 0);
    assert.equal(socket.corks, 0, "a connection without Hello is not corked");
    gate.resolve();
    await until("hello", () => socket.writes.length === 4);
    assert.deepEqual(socket.kinds(), ["hello", "message", "pong", "message"]);
    const f = socket.frames;
    assert.equal(f[1]!.kind.case === "message" && f[1]!.kind.value.body, "early 1");
    assert.equal(f[2]!.ref, 5);
    assert.equal(f[3]!.kind.case === "message" && f[3]!.kind.value.body, "early 2");
    assert.equal(socket.corks, 1);
    assert.ok(socket.writes.every((w) => w.corked));
    assert.equal(conn.early, undefined);
  });

  it("registers every connection opened in the same turn with one registry call", async () => {
    const a = connect(h);
    const b = connect(h);
    const c = connect(h);
    await until("hellos", () => [a, b, c].every((x) => x.socket.writes.length === 1));
    assert.deepEqual(h.registry.calls, ["add 3"]);
    assert.equal(h.core.stats.connections, 3);
  });

  it("closing one of two connections of the same device keeps its entry; closing the last removes it", async () => {
    const p = principal();
    const one = await connected(h, p);
    const two = await connected(h, { ...p, sessionId: "other" });
    one.socket.close(1000, "bye");
    for (let i = 0; i < 10; i++) await new Promise<void>((r) => setImmediate(r));
    assert.deepEqual(await registered(h, p.userId), [GW]);
    assert.ok(!h.registry.calls.some((c) => c.startsWith("remove")), "no remove while the device has a connection");
    two.socket.close(1000, "bye");
    await until("removed", () => h.registry.calls.includes("remove 1"));
    assert.equal(await registered(h, p.userId), undefined);
    assert.equal(h.core.stats.connections, 0);
  });

  it("a user's other device keeps the user registered when one device leaves", async () => {
    const phone = await connected(h);
    await connected(h, principal(phone.p.userId));
    phone.socket.close(1000, "bye");
    await until("removed", () => h.registry.calls.includes("remove 1"));
    assert.deepEqual(await registered(h, phone.p.userId), [GW]);
  });

  it("a device that closes while its registration is in flight is not left in the registry", async () => {
    const gate = deferred();
    h.registry.addGate = gate.promise;
    const { socket, p } = connect(h);
    await until("add in flight", () => h.registry.calls.includes("add 1"));
    socket.close(1000, "bye");
    for (let i = 0; i < 10; i++) await new Promise<void>((r) => setImmediate(r));
    gate.resolve();
    await until("remove", () => h.registry.calls.includes("remove 1"));
    assert.deepEqual(h.registry.calls, ["add 1", "remove 1"], "the remove waits for the add");
    assert.equal(await registered(h, p.userId), undefined);
    assert.equal(socket.writes.length, 0, "no Hello on a closed socket");
  });

  it("a registry add failure closes the connections with 4013 and sends no Hello", async () => {
    h.registry.failAdd = new Error("registry down");
    const a = connect(h);
    const b = connect(h);
    await until("closed", () => a.socket.closes.length > 0 && b.socket.closes.length > 0);
    for (const s of [a.socket, b.socket]) {
      assert.deepEqual(s.closes.map((c) => c.code), [CloseCode.TRY_AGAIN_LATER]);
      assert.equal(s.writes.length, 0);
    }
    assert.equal(h.core.stats.connections, 0);
    h.registry.failAdd = undefined;
    const c = await connected(h);
    assert.equal(c.socket.kinds()[0], "hello", "the next connection works");
  });

  it("drain() closes every connection with 4012 (DRAINING), empties the registry, refuses new sockets", async () => {
    const a = await connected(h);
    const b = await connected(h);
    const b2 = await connected(h, principal(b.p.userId));
    assert.ok(h.core.accepting);
    await h.core.drain();
    assert.equal(h.core.accepting, false);
    for (const s of [a.socket, b.socket, b2.socket]) assert.deepEqual(s.closes.map((c) => c.code), [CloseCode.DRAINING]);
    assert.equal((await h.registry.lookup([a.p.userId, b.p.userId])).size, 0);
    assert.equal(h.core.stats.connections, 0);
    const last = h.presenceReports.at(-1);
    assert.deepEqual(last?.online.map((u) => u.userId), []);
    assert.deepEqual([...(last?.offlineUserIds ?? [])].sort(), [a.p.userId, b.p.userId].sort());
    // Authenticated before the drain, upgraded after it: closed at once, never registered.
    const late = connect(h);
    assert.deepEqual(late.socket.closes.map((c) => c.code), [CloseCode.DRAINING]);
    for (let i = 0; i < 10; i++) await new Promise<void>((r) => setImmediate(r));
    assert.equal(late.socket.writes.length, 0);
    assert.equal(await registered(h, late.p.userId), undefined);
    assert.equal(h.core.stats.connections, 0);
  });

  it("closeSession() closes exactly that session's connections with 4001", async () => {
    const a = await connected(h);
    const b = await connected(h, principal(a.p.userId));
    assert.equal(h.core.closeSession(a.p.sessionId), 1);
    assert.deepEqual(a.socket.closes.map((c) => c.code), [CloseCode.SESSION_REVOKED]);
    assert.equal(b.socket.closes.length, 0);
  });

  it("authenticate() returns the principal, and Unauthenticated for a bad token", async () => {
    assert.deepEqual(await h.core.authenticate("good"), { userId: "u", deviceId: "d", sessionId: "s" });
    await assert.rejects(h.core.authenticate("bad"), (e: unknown) => ConnectError.from(e).code === Code.Unauthenticated);
  });
});

describe("GatewayCore: frames from clients", () => {
  let h: Harness;
  beforeEach(() => (h = harness()));
  afterEach(() => h.core.drain());

  it("send → ack with the ref echoed; the router gets the principal's ids", async () => {
    const { conn, socket, p } = await connected(h);
    const conversationId = randomUUID();
    const clientMsgId = randomUUID();
    frameIn(conn, h, sendFrame(42, "hello there", conversationId, clientMsgId));
    await until("ack", () => socket.writes.length === 2);
    const ack = socket.frames[1]!;
    assert.equal(ack.ref, 42);
    assert.equal(ack.kind.case, "ack");
    if (ack.kind.case !== "ack") return;
    assert.equal(ack.kind.value.clientMsgId, clientMsgId);
    assert.equal(ack.kind.value.conversationId, conversationId);
    assert.equal(ack.kind.value.seq, 1n);
    assert.equal(ack.kind.value.messageId, "m-1");
    assert.equal(ack.kind.value.duplicate, false);
    assert.ok(ack.kind.value.sentAt);
    const [req] = h.routerCalls;
    assert.equal(req?.senderId, p.userId);
    assert.equal(req?.senderDeviceId, p.deviceId);
    assert.equal(req?.conversationId, conversationId);
    assert.equal(req?.clientMsgId, clientMsgId);
    assert.equal(req?.body, "hello there");
    assert.equal(conn.inFlightSends, 0);
  });

  it("a JSON connection gets JSON frames", async () => {
    const { conn, socket } = await connected(h, undefined, "json");
    frameIn(conn, h, sendFrame(1));
    await until("ack", () => socket.writes.length === 2);
    assert.ok(socket.writes.every((w) => typeof w.data === "string" && !w.binary));
    assert.deepEqual(socket.kinds(), ["hello", "ack"]);
  });

  const routerErrors: [Code, ErrorCode, boolean][] = [
    [Code.PermissionDenied, ErrorCode.PERMISSION_DENIED, false],
    [Code.InvalidArgument, ErrorCode.INVALID_ARGUMENT, false],
    [Code.NotFound, ErrorCode.NOT_FOUND, false],
    [Code.Unavailable, ErrorCode.UNAVAILABLE, true],
    [Code.DeadlineExceeded, ErrorCode.UNAVAILABLE, true],
    [Code.ResourceExhausted, ErrorCode.RATE_LIMITED, true],
    [Code.Internal, ErrorCode.INTERNAL, true],
  ];
  for (const [code, errorCode, retryable] of routerErrors) {
    it(`router ${Code[code]} → error frame ${ErrorCode[errorCode]} with ref and client_msg_id`, async () => {
      h.routerImpl.send = async () => {
        throw new ConnectError("router says no", code);
      };
      const { conn, socket } = await connected(h);
      const clientMsgId = randomUUID();
      frameIn(conn, h, sendFrame(8, "hi", randomUUID(), clientMsgId));
      await until("error", () => socket.writes.length === 2);
      assert.deepEqual(socket.errors(), [{ ref: 8, code: errorCode, message: "router says no", retryable, clientMsgId, $typeName: "parley.client.v1.Error" }]);
      assert.equal(conn.inFlightSends, 0);
    });
  }

  it("bad sends are refused at the gateway with INVALID_ARGUMENT and never reach the router", async () => {
    const { conn, socket } = await connected(h);
    const cases = [
      sendFrame(1, "hi", randomUUID(), "not-a-uuid"),
      sendFrame(2, "hi", "not-a-uuid"),
      sendFrame(3, ""),
      sendFrame(4, "x".repeat(4001)),
    ];
    for (const f of cases) {
      h.clock.now += 1000; // never rate limited
      frameIn(conn, h, f);
    }
    await until("errors", () => socket.errors().length === 4);
    assert.deepEqual(socket.errors().map((e) => [e.ref, e.code, e.retryable]), [
      [1, ErrorCode.INVALID_ARGUMENT, false],
      [2, ErrorCode.INVALID_ARGUMENT, false],
      [3, ErrorCode.INVALID_ARGUMENT, false],
      [4, ErrorCode.INVALID_ARGUMENT, false],
    ]);
    assert.equal(socket.errors()[0]!.clientMsgId, "not-a-uuid");
    assert.equal(h.routerCalls.length, 0);
  });

  it("ping → pong with ref and nonce; undecodable frames → error frames, connection stays", async () => {
    const { conn, socket } = await connected(h);
    frameIn(conn, h, { ref: 3, kind: { case: "ping", value: { nonce: 77n } } });
    h.core.onFrame(conn, decodeClientFrame(new Uint8Array([0xff, 0xff]).buffer, true, h.cfg.maxFrameBytes));
    h.core.onFrame(conn, decodeClientFrame(new Uint8Array([0x08, 0x06, 0xd0, 0x05, 0x01]).buffer, true, h.cfg.maxFrameBytes));
    const f = socket.frames;
    assert.equal(f[1]!.kind.case === "pong" && f[1]!.kind.value.nonce, 77n);
    assert.equal(f[1]!.ref, 3);
    assert.deepEqual(socket.errors().map((e) => [e.ref, e.code]), [
      [0, ErrorCode.MALFORMED_FRAME],
      [6, ErrorCode.UNKNOWN_FRAME],
    ]);
    assert.equal(socket.closes.length, 0);
    assert.equal(h.core.stats.framesIn, 3);
  });

  it("token bucket: a burst, then RATE_LIMITED (retryable, ref and client_msg_id), refilled over time up to the burst", async () => {
    const { conn, socket } = await connected(h); // 10 frames/s, burst 3
    const ping = (ref: number) => frameIn(conn, h, { ref, kind: { case: "ping", value: { nonce: BigInt(ref) } } });
    const pongs = () => socket.frames.filter((f) => f.kind.case === "pong").map((f) => f.ref);
    ping(1);
    ping(2);
    ping(3);
    ping(4);
    assert.deepEqual(pongs(), [1, 2, 3]);
    assert.deepEqual(socket.errors().map((e) => [e.ref, e.code, e.retryable]), [[4, ErrorCode.RATE_LIMITED, true]]);
    const clientMsgId = randomUUID();
    frameIn(conn, h, sendFrame(5, "hi", randomUUID(), clientMsgId));
    assert.equal(socket.errors().at(-1)?.clientMsgId, clientMsgId, "a limited send names its client_msg_id");
    assert.equal(h.routerCalls.length, 0);

    h.clock.now += 99; // 0.99 token
    ping(6);
    assert.equal(socket.errors().at(-1)?.ref, 6);
    h.clock.now += 1; // 1 token (the failed attempt did not cost one)
    ping(7);
    ping(8);
    assert.deepEqual(pongs(), [1, 2, 3, 7]);
    assert.equal(socket.errors().at(-1)?.ref, 8);

    h.clock.now += 60_000; // refills to the burst, not beyond
    for (let r = 10; r < 15; r++) ping(r);
    assert.deepEqual(pongs(), [1, 2, 3, 7, 10, 11, 12]);
    assert.deepEqual(socket.errors().slice(-2).map((e) => e.ref), [13, 14]);
    assert.equal(socket.closes.length, 0);
  });

  it("at most maxInFlightSends sends wait for an ack; more get RATE_LIMITED until one finishes", async () => {
    const gates: { resolve: () => void }[] = [];
    const normal = h.routerImpl.send;
    h.routerImpl.send = async (req) => {
      const g = deferred();
      gates.push({ resolve: () => g.resolve() });
      await g.promise;
      return normal(req);
    };
    const { conn, socket } = await connected(h); // max 2 in flight
    const third = randomUUID();
    frameIn(conn, h, sendFrame(1));
    frameIn(conn, h, sendFrame(2));
    frameIn(conn, h, sendFrame(3, "hi", randomUUID(), third));
    assert.equal(conn.inFlightSends, 2);
    assert.deepEqual(socket.errors().map((e) => [e.ref, e.code, e.clientMsgId]), [[3, ErrorCode.RATE_LIMITED, third]]);
    await until("both at the router", () => gates.length === 2);
    gates[0]!.resolve();
    await until("first ack", () => socket.frames.some((f) => f.kind.case === "ack"));
    assert.equal(conn.inFlightSends, 1);
    h.clock.now += 1000;
    frameIn(conn, h, sendFrame(4));
    assert.equal(conn.inFlightSends, 2);
    await until("third at the router", () => gates.length === 3);
    gates[1]!.resolve();
    gates[2]!.resolve();
    await until("all acks", () => socket.frames.filter((f) => f.kind.case === "ack").length === 3);
    assert.deepEqual(socket.frames.filter((f) => f.kind.case === "ack").map((f) => f.ref), [1, 2, 4]);
    assert.equal(conn.inFlightSends, 0);
  });

  it("a reply to a client whose send buffer is full closes it with 4008", async () => {
    const { conn, socket } = await connected(h);
    socket.accepts = false;
    frameIn(conn, h, { ref: 1, kind: { case: "ping", value: {} } });
    assert.deepEqual(socket.closes.map((c) => c.code), [CloseCode.SLOW_CONSUMER]);
    assert.ok(conn.closed);
    await until("removed", () => h.registry.calls.includes("remove 1"));
  });

  it("an ack for a connection that closed meanwhile is dropped quietly", async () => {
    const gate = deferred();
    const normal = h.routerImpl.send;
    h.routerImpl.send = async (req) => {
      await gate.promise;
      return normal(req);
    };
    const { conn, socket } = await connected(h);
    frameIn(conn, h, sendFrame(1));
    await until("at the router", () => h.routerCalls.length === 1);
    socket.close(1000, "bye");
    gate.resolve();
    await until("send finished", () => conn.inFlightSends === 0);
    assert.deepEqual(socket.kinds(), ["hello"]);
  });
});

describe("GatewayCore: deliver()", () => {
  let h: Harness;
  beforeEach(() => (h = harness()));
  afterEach(() => h.core.drain());

  it("envelopes in order, one cork per connection per call, sender device skipped, JSON re-encoded, absent users reported", async () => {
    const alicePhone = await connected(h);
    const aliceLaptop = await connected(h, principal(alicePhone.p.userId), "json");
    const bob = await connected(h);
    const carol = randomUUID(); // not on this gateway
    for (const s of [alicePhone, aliceLaptop, bob]) s.socket.corks = 0;

    const m1 = messageFrame("1 from alice's phone");
    const m2 = messageFrame("2 to bob only");
    const m3 = messageFrame("3 to everyone");
    const res = h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { userIds: [alicePhone.p.userId, bob.p.userId, carol], serverFrame: m1, excludeDeviceId: alicePhone.p.deviceId },
          { userIds: [bob.p.userId], serverFrame: m2 },
          { userIds: [bob.p.userId, alicePhone.p.userId, carol], serverFrame: m3 },
        ],
      }),
    );
    const bodies = (s: FakeSocket) => s.frames.slice(1).map((f) => (f.kind.case === "message" ? f.kind.value.body : f.kind.case));
    assert.deepEqual(bodies(alicePhone.socket), ["3 to everyone"]);
    assert.deepEqual(bodies(aliceLaptop.socket), ["1 from alice's phone", "3 to everyone"]);
    assert.deepEqual(bodies(bob.socket), ["1 from alice's phone", "2 to bob only", "3 to everyone"]);
    assert.deepEqual(res.absentUserIds, [carol]);
    assert.equal(res.deliveredFrames, 6);
    for (const s of [alicePhone, aliceLaptop, bob]) {
      assert.equal(s.socket.corks, 1);
      assert.ok(s.socket.writes.slice(1).every((w) => w.corked));
    }
    // Binary connections get the router's bytes as they are; JSON ones the JSON mapping.
    assert.deepEqual(bob.socket.writes[1]!.data, m1);
    assert.equal(aliceLaptop.socket.writes[1]!.data, toJsonString(ServerFrameSchema, fromBinary(ServerFrameSchema, m1)));
    assert.equal(h.core.stats.framesOut >= 6, true);
  });

  it("a slow socket (send returns false) is closed with 4008; the others still get their frames", async () => {
    const slow = await connected(h);
    const fast = await connected(h);
    slow.socket.accepts = false;
    const res = h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { userIds: [slow.p.userId, fast.p.userId], serverFrame: messageFrame("a") },
          { userIds: [slow.p.userId, fast.p.userId], serverFrame: messageFrame("b") },
        ],
      }),
    );
    assert.deepEqual(slow.socket.closes.map((c) => c.code), [CloseCode.SLOW_CONSUMER]);
    assert.equal(fast.socket.closes.length, 0);
    assert.equal(fast.socket.writes.length, 3);
    assert.deepEqual(res.absentUserIds, []);
    // Closed now: the next delivery finds the user absent.
    const next = h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ userIds: [slow.p.userId], serverFrame: messageFrame("c") }] }));
    assert.deepEqual(next.absentUserIds, [slow.p.userId]);
  });
});

// Presence reports and frames: gateway/test/presence.test.ts.

describe("GatewayCore: registry refresh", () => {
  let h: Harness;
  beforeEach(() => {
    mock.timers.enable({ apis: ["setInterval"] });
    h = harness({ PARLEY_REGISTRY_REFRESH_MS: "1000", PARLEY_REGISTRY_TTL_SECONDS: "3" });
  });
  afterEach(async () => {
    await h.core.drain();
    mock.timers.reset();
  });

  async function tick(): Promise<DeviceEntry[]> {
    const before = h.registry.refreshed.length;
    mock.timers.tick(1000);
    await until("registry refresh", () => h.registry.refreshed.length === before + 1);
    return h.registry.refreshed.at(-1)!;
  }

  const key = (e: DeviceEntry) => `${e.userId}/${e.deviceId}`;

  it("one refresh per interval for every registered device of the gateway, each device once", async () => {
    const a = await connected(h);
    const b = await connected(h);
    const b2 = await connected(h, principal(b.p.userId)); // b's second device
    await connected(h, { ...b.p, sessionId: "again" }); // b's first device, a second connection
    assert.ok(!h.registry.calls.some((c) => c.startsWith("refresh")), "nothing before the interval");
    let entries = await tick();
    assert.deepEqual(entries.map(key).sort(), [a.p, b.p, b2.p].map(key).sort());
    assert.deepEqual(h.registry.calls.filter((c) => c.startsWith("refresh")), ["refresh 3"], "one call for all");

    a.socket.close(1000, "bye");
    entries = await tick();
    assert.deepEqual(entries.map(key).sort(), [b.p, b2.p].map(key).sort());
  });

  it("the refresh also re-adds every topic of the gateway, in one call", async () => {
    const [g1, g2] = [randomUUID(), randomUUID()];
    const a = principal();
    const b = principal();
    h.groups.groupsOf.set(a.userId, [g1]);
    h.groups.groupsOf.set(b.userId, [g1, g2]);
    await connected(h, a);
    await connected(h, b);
    const before = h.registry.topicCalls.length;
    await tick();
    await until("topic refresh", () => h.registry.topicCalls.length === before + 1);
    assert.deepEqual(h.registry.topicCalls.at(-1), { op: "add", ids: [g1, g2].sort() });
    assert.equal(h.registry.calls.filter((c) => c.startsWith("refresh")).length, 1);
  });

  it("a refresh due while an add is in flight waits for it (and then includes that device)", async () => {
    const a = await connected(h);
    const gate = deferred();
    h.registry.addGate = gate.promise;
    const late = connect(h);
    await until("add in flight", () => h.registry.calls.at(-1) === "add 1" && h.registry.calls.length === 2);
    mock.timers.tick(1000);
    for (let i = 0; i < 10; i++) await new Promise<void>((r) => setImmediate(r));
    assert.equal(h.registry.refreshed.length, 0, "queued behind the add");
    gate.resolve();
    await until("refresh", () => h.registry.refreshed.length === 1);
    assert.deepEqual(h.registry.calls, ["add 1", "add 1", "refresh 2"]);
    assert.deepEqual(h.registry.refreshed[0]!.map(key).sort(), [a.p, late.p].map(key).sort());
  });

  it("refreshed entries outlive the TTL; a gateway that stops refreshing loses them", async () => {
    const a = await connected(h); // TTL 3 s, refresh every 1 s
    for (let i = 0; i < 5; i++) {
      h.clock.now += 1000;
      await tick();
    }
    assert.deepEqual(await registered(h, a.p.userId), [GW], "alive 5 s after the add");
    h.clock.now += 2999;
    assert.deepEqual(await registered(h, a.p.userId), [GW]);
    h.clock.now += 1;
    assert.equal(await registered(h, a.p.userId), undefined, "expired 3 s after the last refresh");
    await tick();
    assert.deepEqual(await registered(h, a.p.userId), [GW], "the next refresh writes it back");
  });

  it("a failed refresh is logged and the next one still runs; no refresh after drain", async () => {
    const a = await connected(h);
    h.registry.failRefresh = new Error("registry down");
    await tick();
    h.registry.failRefresh = undefined;
    assert.deepEqual((await tick()).map(key), [key(a.p)]);
    assert.equal(a.socket.closes.length, 0, "a failed refresh closes nothing");
    await h.core.drain();
    const n = h.registry.refreshed.length;
    mock.timers.tick(5000);
    for (let i = 0; i < 10; i++) await new Promise<void>((r) => setImmediate(r));
    assert.equal(h.registry.refreshed.length, n);
  });

  it("GatewayConfig: the refresh interval must be below the TTL", () => {
    assert.equal(loadConfig({}).registryTtlMs, 60_000);
    assert.equal(loadConfig({}).registryRefreshMs, 20_000);
    assert.throws(() => loadConfig({ PARLEY_REGISTRY_TTL_SECONDS: "10", PARLEY_REGISTRY_REFRESH_MS: "10000" }), /PARLEY_REGISTRY_REFRESH_MS/);
  });
});

const redisUrl = realBackend("redis");
if (redisUrl) {
  describe("GatewayCore on a Redis registry: Redis down and back (throwaway server)", () => {
    let server: ThrowawayRedis;
    let registry: RedisConnectionRegistry;
    let h: Harness;
    before(async () => {
      server = await ThrowawayRedis.start();
      registry = new RedisConnectionRegistry(await openRedis(server.url, { commandTimeoutMs: 1000 }), { prefix: testPrefix("gateway") });
      h = harness({}, registry);
    });
    after(async () => {
      await h.core.drain().catch(() => {});
      await registry.close();
      await server.stop();
    });

    it("new connections are closed with 4013 while Redis is down, and get Hello once it is back", async () => {
      const a = await connected(h);
      assert.deepEqual(a.socket.kinds(), ["hello"]);
      assert.deepEqual((await registry.lookup([a.p.userId])).get(a.p.userId), [GW]);

      await server.stop();
      const b = connect(h);
      await until("closed with 4013", () => b.socket.closes.length > 0, 10_000);
      assert.deepEqual(b.socket.closes.map((c) => c.code), [CloseCode.TRY_AGAIN_LATER]);
      assert.equal(b.socket.writes.length, 0);
      await h.core.refreshRegistry(); // fails quietly
      assert.equal(a.socket.closes.length, 0, "open connections stay");

      await server.start(); // empty: no persistence
      let c = connect(h);
      const deadline = Date.now() + 10_000;
      for (;;) {
        await until("hello or close", () => c.socket.writes.length > 0 || c.socket.closes.length > 0, 10_000);
        if (c.socket.writes.length > 0) break;
        assert.ok(Date.now() < deadline, "Redis never came back for the gateway");
        await new Promise((r) => setTimeout(r, 50));
        c = connect(h);
      }
      assert.equal(c.socket.kinds()[0], "hello");
      await h.core.refreshRegistry();
      const found = await registry.lookup([a.p.userId, c.p.userId]);
      assert.deepEqual(found.get(a.p.userId), [GW], "the refresh wrote the lost entry back");
      assert.deepEqual(found.get(c.p.userId), [GW]);
    });
  });
}

function groupFrame(body: string, conversationId = "g"): Uint8Array {
  return toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, { kind: { case: "message", value: { conversationId, seq: 1n, messageId: body, body } } }),
  );
}

/** Message bodies a socket received after its Hello. */
function bodies(s: FakeSocket): (string | undefined)[] {
  return s.frames.slice(1).map((f) => (f.kind.case === "message" ? f.kind.value.body : f.kind.case));
}

describe("GatewayCore: a failure while saying Hello", () => {
  let h: Harness;
  beforeEach(() => (h = harness()));
  afterEach(() => h.core.drain());

  it("closes that connection (1011) and neither stops the others of the flush nor any later Hello", async () => {
    const broken = connect(h);
    broken.socket.cork = () => {
      throw new Error("a socket that fails");
    };
    const fine = connect(h); // same flush
    await until("hello of the other", () => fine.socket.writes.length > 0);
    assert.deepEqual(broken.socket.closes.map((c) => c.code), [CloseCode.INTERNAL_ERROR]);
    const later = connect(h); // a later flush
    await until("hello of a later one", () => later.socket.writes.length > 0);
    assert.equal(later.socket.kinds()[0], "hello");
  });
});

describe("GatewayCore: group topics", () => {
  let h: Harness;
  beforeEach(() => (h = harness()));
  afterEach(() => h.core.drain());

  const [g1, g2, g3] = [randomUUID(), randomUUID(), randomUUID()];

  it("on connect: one group-list call for the flush, one topic registration, subscriptions only after Hello", async () => {
    const [alice, bob] = [principal(), principal()];
    h.groups.groupsOf.set(alice.userId, [g1, g2]);
    h.groups.groupsOf.set(bob.userId, [g1]);
    const gate = deferred();
    h.registry.addGate = gate.promise;
    const a = connect(h, alice);
    const aj = connect(h, principal(alice.userId), "json");
    const b = connect(h, bob);
    await until("registry add", () => h.registry.calls.includes("add 3"));
    assert.equal(h.groups.listCalls.length, 0, "the group list is fetched after the registry add");
    gate.resolve();
    await until("hellos", () => [a, aj, b].every((x) => x.socket.writes.length === 1));
    assert.deepEqual(h.groups.listCalls.map((u) => [...u].sort()), [[alice.userId, bob.userId].sort()], "one call for all users");
    assert.deepEqual(h.registry.calls, ["add 3", "addTopics 2"]);
    assert.deepEqual(h.registry.topicCalls, [{ op: "add", ids: [g1, g2].sort() }]);
    assert.deepEqual((await h.registry.lookupTopics([g1, g2, g3])).get(g1), [GW]);
    assert.deepEqual([...a.socket.topics].sort(), [`b/${g1}`, `b/${g2}`].sort());
    assert.deepEqual([...aj.socket.topics].sort(), [`j/${g1}`, `j/${g2}`].sort());
    assert.deepEqual([...b.socket.topics], [`b/${g1}`]);
    for (const x of [a, aj, b]) assert.equal(x.socket.kinds()[0], "hello");
  });

  it("a topic frame reaches every subscribed device except the sender's, JSON ones as JSON, nobody else", async () => {
    const alice = principal();
    const bob = principal();
    const carol = principal(); // in another group only
    h.groups.groupsOf.set(alice.userId, [g1]);
    h.groups.groupsOf.set(bob.userId, [g1]);
    h.groups.groupsOf.set(carol.userId, [g2]);
    const phone = await connected(h, alice);
    const laptop = await connected(h, principal(alice.userId), "json");
    const b = await connected(h, bob);
    const c = await connected(h, carol);
    const m = groupFrame("hi group", g1);
    const res = h.core.deliver(
      create(DeliverRequestSchema, { envelopes: [{ topicConversationId: g1, serverFrame: m, excludeDeviceId: alice.deviceId }] }),
    );
    assert.deepEqual(bodies(phone.socket), [], "the sender's device is skipped");
    assert.deepEqual(bodies(laptop.socket), ["hi group"]);
    assert.deepEqual(bodies(b.socket), ["hi group"]);
    assert.deepEqual(bodies(c.socket), []);
    assert.deepEqual(b.socket.writes[1]!.data, m, "binary subscribers get the router's bytes");
    assert.equal(laptop.socket.writes[1]!.data, toJsonString(ServerFrameSchema, fromBinary(ServerFrameSchema, m)));
    assert.deepEqual(
      h.bus.publishes.map((p) => [p.topic, p.from === phone.socket]),
      [
        [`b/${g1}`, true],
        [`j/${g1}`, false],
      ],
      "binary published through the sender's socket, JSON gateway-wide",
    );
    assert.equal(res.deliveredFrames, 2);
    assert.deepEqual(res.absentTopics, []);

    // No JSON subscriber: no JSON publish. A conversation nobody here follows: absent.
    h.bus.publishes.length = 0;
    const res2 = h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { topicConversationId: g2, serverFrame: groupFrame("to g2", g2) },
          { topicConversationId: g3, serverFrame: groupFrame("to g3", g3) },
        ],
      }),
    );
    assert.deepEqual(h.bus.publishes.map((p) => p.topic), [`b/${g2}`]);
    assert.deepEqual(bodies(c.socket), ["to g2"]);
    assert.deepEqual(res2.absentTopics, [g3]);
    assert.equal(res2.deliveredFrames, 1);
  });

  it("direct and topic envelopes of one call reach a socket in envelope order", async () => {
    const bob = principal();
    h.groups.groupsOf.set(bob.userId, [g1]);
    const b = await connected(h, bob);
    h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { userIds: [bob.userId], serverFrame: messageFrame("direct 1") },
          { topicConversationId: g1, serverFrame: groupFrame("group 2", g1) },
          { userIds: [bob.userId], serverFrame: messageFrame("direct 3") },
        ],
      }),
    );
    assert.deepEqual(bodies(b.socket), ["direct 1", "group 2", "direct 3"]);
  });

  it("joins apply before the frame, leaves after it; a deleted group unsubscribes everyone", async () => {
    const [alice, bob, dave, erin] = [principal(), principal(), principal(), principal()];
    h.groups.groupsOf.set(alice.userId, [g1]);
    h.groups.groupsOf.set(bob.userId, [g1]);
    const a = await connected(h, alice);
    const b = await connected(h, bob);
    const d = await connected(h, dave, "json");
    const absentUser = randomUUID();
    h.registry.calls.length = 0;
    const res = h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          {
            topicConversationId: g1,
            serverFrame: groupFrame("dave joined", g1),
            membership: { conversationId: g1, joinedUserIds: [dave.userId, absentUser] },
          },
          {
            topicConversationId: g1,
            serverFrame: groupFrame("bob left", g1),
            membership: { conversationId: g1, leftUserIds: [bob.userId] },
          },
          { topicConversationId: g1, serverFrame: groupFrame("after bob", g1) },
        ],
      }),
    );
    assert.deepEqual(bodies(d.socket), ["dave joined", "bob left", "after bob"], "the joined user gets the frame of their join");
    assert.deepEqual(bodies(b.socket), ["dave joined", "bob left"], "the leaving user learns they left, then nothing");
    assert.deepEqual(bodies(a.socket), ["dave joined", "bob left", "after bob"]);
    assert.equal(res.deliveredFrames, 8);
    assert.deepEqual([...b.socket.topics], []);
    assert.deepEqual([...d.socket.topics], [`j/${g1}`]);

    // A pure membership update (no frame) for a new group: erin is not here, alice subscribes.
    h.core.deliver(
      create(DeliverRequestSchema, { envelopes: [{ membership: { conversationId: g2, joinedUserIds: [alice.userId, erin.userId] } }] }),
    );
    assert.deepEqual([...a.socket.topics].sort(), [`b/${g1}`, `b/${g2}`].sort());
    await until("topic registered", () => h.registry.calls.includes("addTopics 1"));
    assert.deepEqual(h.registry.topicCalls.at(-1), { op: "add", ids: [g2] });

    const del = h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { topicConversationId: g1, serverFrame: groupFrame("deleted", g1), membership: { conversationId: g1, deleted: true } },
          { topicConversationId: g1, serverFrame: groupFrame("too late", g1) },
        ],
      }),
    );
    assert.deepEqual(bodies(a.socket).slice(-1), ["deleted"]);
    assert.deepEqual(bodies(d.socket).slice(-1), ["deleted"]);
    assert.deepEqual(del.absentTopics, [g1]);
    assert.deepEqual([...a.socket.topics], [`b/${g2}`]);
    assert.deepEqual([...d.socket.topics], []);
    await until("topic unregistered", () => h.registry.calls.includes("removeTopics 1"));
    assert.deepEqual(h.registry.topicCalls.at(-1), { op: "remove", ids: [g1] });
    assert.equal((await h.registry.lookupTopics([g1])).size, 0);
  });

  it("membership changes delivered while the group list is fetched are applied after it", async () => {
    const alice = principal();
    h.groups.groupsOf.set(alice.userId, [g1, g2]);
    const gate = deferred();
    h.groups.listGate = gate.promise;
    const a = connect(h, alice);
    await until("list call", () => h.groups.listCalls.length === 1);
    // The (older) list says g1 and g2; meanwhile alice left g1, joined g3, and g2 was deleted.
    h.core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { membership: { conversationId: g1, leftUserIds: [alice.userId] } },
          { membership: { conversationId: g3, joinedUserIds: [alice.userId] } },
          { membership: { conversationId: g2, deleted: true } },
        ],
      }),
    );
    gate.resolve();
    await until("hello", () => a.socket.writes.length === 1);
    assert.deepEqual([...a.socket.topics], [`b/${g3}`]);
    assert.deepEqual(h.registry.topicCalls, [{ op: "add", ids: [g3] }]);
  });

  it("topic frames for a connection between its group list and Hello follow the Hello", async () => {
    const [alice, bob] = [principal(), principal()];
    h.groups.groupsOf.set(alice.userId, [g1, g2]); // g2 is new here: Hello waits for its registration
    h.groups.groupsOf.set(bob.userId, [g1]);
    const b = await connected(h, bob);
    const gate = deferred();
    const addTopics = h.registry.addTopics.bind(h.registry);
    h.registry.addTopics = async (gw, ids) => {
      await gate.promise;
      return addTopics(gw, ids);
    };
    const a = connect(h, principal(alice.userId));
    await until("list call", () => h.groups.listCalls.length === 2);
    await turns();
    const res = h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ topicConversationId: g1, serverFrame: groupFrame("early", g1) }] }));
    assert.equal(res.deliveredFrames, 2);
    assert.equal(a.socket.writes.length, 0, "nothing before Hello");
    gate.resolve();
    await until("hello", () => a.socket.writes.length === 2);
    assert.deepEqual(a.socket.kinds(), ["hello", "message"]);
    assert.deepEqual(bodies(b.socket), ["early"]);
    h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ topicConversationId: g1, serverFrame: groupFrame("late", g1) }] }));
    assert.deepEqual(bodies(a.socket), ["early", "late"], "exactly once each");
  });

  it("a failing group list closes those connections with 4013, without Hello", async () => {
    h.groups.listFail = new ConnectError("groups down", Code.Unavailable);
    const a = connect(h);
    const b = connect(h);
    await until("closed", () => a.socket.closes.length > 0 && b.socket.closes.length > 0);
    for (const s of [a.socket, b.socket]) {
      assert.deepEqual(s.closes.map((c) => c.code), [CloseCode.TRY_AGAIN_LATER]);
      assert.equal(s.writes.length, 0);
    }
    await until("unregistered", () => h.registry.calls.includes("remove 2"));
    h.groups.listFail = undefined;
    const c = await connected(h);
    assert.equal(c.socket.kinds()[0], "hello");
  });

  it("a failing topic registration closes the new connections with 4013", async () => {
    const alice = principal();
    h.groups.groupsOf.set(alice.userId, [g1]);
    h.registry.failAddTopics = new Error("registry down");
    const a = connect(h, alice);
    await until("closed", () => a.socket.closes.length > 0);
    assert.deepEqual(a.socket.closes.map((c) => c.code), [CloseCode.TRY_AGAIN_LATER]);
    assert.equal(a.socket.writes.length, 0);
    assert.deepEqual([...a.socket.topics], []);
  });

  it("topic registrations are batched: first subscriber adds, last one removes, one call per flush", async () => {
    const users = [principal(), principal(), principal()];
    h.groups.groupsOf.set(users[0]!.userId, [g1, g2]);
    h.groups.groupsOf.set(users[1]!.userId, [g1, g2]);
    h.groups.groupsOf.set(users[2]!.userId, [g2, g3]);
    const conns = users.map((p) => connect(h, p));
    await until("hellos", () => conns.every((c) => c.socket.writes.length === 1));
    assert.deepEqual(h.registry.topicCalls, [{ op: "add", ids: [g1, g2, g3].sort() }]);
    conns[0]!.socket.close(1000, "bye"); // g1, g2 still have subscribers
    await until("device removed", () => h.registry.calls.includes("remove 1"));
    await turns();
    assert.equal(h.registry.topicCalls.length, 1, "no topic call while others subscribe");
    conns[1]!.socket.close(1000, "bye"); // g1's last
    conns[2]!.socket.close(1000, "bye"); // g2's and g3's last
    await until("topics removed", () => h.registry.topicCalls.length === 2);
    await turns();
    assert.deepEqual(h.registry.topicCalls[1], { op: "remove", ids: [g1, g2, g3].sort() });
    assert.equal(h.registry.topicCalls.length, 2);
    assert.equal((await h.registry.lookupTopics([g1, g2, g3])).size, 0);
    // A topic that loses its last subscriber and gets a new one in the same turn costs only an add.
    h.groups.groupsOf.set(users[0]!.userId, [g1]);
    h.groups.groupsOf.set(users[1]!.userId, []);
    const x = await connected(h, users[0]);
    const y = await connected(h, users[1]);
    assert.deepEqual(h.registry.topicCalls.slice(2), [{ op: "add", ids: [g1] }]);
    x.socket.close(1000, "bye");
    h.core.deliver(create(DeliverRequestSchema, { envelopes: [{ membership: { conversationId: g1, joinedUserIds: [users[1]!.userId] } }] }));
    await until("re-registered", () => h.registry.topicCalls.length === 4);
    await turns();
    assert.deepEqual(h.registry.topicCalls.slice(3), [{ op: "add", ids: [g1] }], "the pending remove was cancelled");
    assert.deepEqual([...y.socket.topics], [`b/${g1}`]);
    assert.deepEqual((await h.registry.lookupTopics([g1])).get(g1), [GW]);
  });
});

describe("GatewayCore: own messages count as read", () => {
  let h: Harness;
  beforeEach(() => (h = harness({ PARLEY_FRAME_BURST: "100", PARLEY_MAX_INFLIGHT_SENDS: "100", PARLEY_READ_CURSOR_INTERVAL_MS: "0" })));
  afterEach(() => h.core.drain());

  it("calls start at least the configured interval apart; a drain sends what waits at once", async () => {
    await h.core.drain();
    h = harness({ PARLEY_FRAME_BURST: "100", PARLEY_MAX_INFLIGHT_SENDS: "100", PARLEY_READ_CURSOR_INTERVAL_MS: "60000" });
    const alice = await connected(h);
    const c = randomUUID();
    frameIn(alice.conn, h, sendFrame(1, "a", c));
    await until("first call", () => h.groups.cursorCalls.length === 1);
    frameIn(alice.conn, h, sendFrame(2, "b", c));
    frameIn(alice.conn, h, sendFrame(3, "c", c));
    await until("acks", () => alice.socket.kinds().filter((k) => k === "ack").length === 3);
    await turns();
    assert.equal(h.groups.cursorCalls.length, 1, "the next call waits for the interval");
    await h.core.drain();
    assert.equal(h.groups.cursorCalls.length, 2);
    assert.deepEqual(h.groups.cursorCalls[1], [{ userId: alice.p.userId, conversationId: c, seq: 3 }]);
  });

  it("read cursors advance to the ack's seq: coalesced per user and conversation, one call in flight", async () => {
    const alice = await connected(h);
    const bob = await connected(h);
    const [c1, c2] = [randomUUID(), randomUUID()];
    const gate = deferred();
    h.groups.cursorGate = gate.promise;
    frameIn(alice.conn, h, sendFrame(1, "first", c1)); // seq 1
    await until("first call", () => h.groups.cursorCalls.length === 1);
    assert.deepEqual(h.groups.cursorCalls[0], [{ userId: alice.p.userId, conversationId: c1, seq: 1 }]);
    // While it is in flight: many acks for two users and two conversations.
    for (let i = 0; i < 5; i++) frameIn(alice.conn, h, sendFrame(10 + i, "x", c1));
    for (let i = 0; i < 3; i++) frameIn(bob.conn, h, sendFrame(20 + i, "y", c1));
    frameIn(alice.conn, h, sendFrame(30, "z", c2));
    await until("acks", () => alice.socket.kinds().filter((k) => k === "ack").length === 7 && bob.socket.kinds().filter((k) => k === "ack").length === 3);
    await turns();
    assert.equal(h.groups.cursorCalls.length, 1, "nothing more while one call is in flight");
    gate.resolve();
    await until("second call", () => h.groups.cursorCalls.length === 2);
    const seqOf = (s: FakeSocket) => s.frames.flatMap((f) => (f.kind.case === "ack" ? [{ c: f.kind.value.conversationId, seq: Number(f.kind.value.seq) }] : []));
    const max = (s: FakeSocket, c: string) => Math.max(...seqOf(s).filter((a) => a.c === c).map((a) => a.seq));
    const second = [...h.groups.cursorCalls[1]!].sort((x, y) => (x.userId + x.conversationId).localeCompare(y.userId + y.conversationId));
    const expected = [
      { userId: alice.p.userId, conversationId: c1, seq: max(alice.socket, c1) },
      { userId: alice.p.userId, conversationId: c2, seq: max(alice.socket, c2) },
      { userId: bob.p.userId, conversationId: c1, seq: max(bob.socket, c1) },
    ].sort((x, y) => (x.userId + x.conversationId).localeCompare(y.userId + y.conversationId));
    assert.deepEqual(second, expected);
    await turns();
    assert.equal(h.groups.cursorCalls.length, 2);
    assert.equal(h.core.readCursorCalls, 2);
  });

  it("a failed cursor call is logged and not retried; later acks still advance", async () => {
    const alice = await connected(h);
    const c = randomUUID();
    h.groups.cursorFail = new ConnectError("groups down", Code.Unavailable);
    frameIn(alice.conn, h, sendFrame(1, "a", c));
    await until("first call", () => h.groups.cursorCalls.length === 1);
    await turns();
    h.groups.cursorFail = undefined;
    assert.equal(h.groups.cursorCalls.length, 1, "not retried");
    assert.equal(alice.socket.closes.length, 0);
    frameIn(alice.conn, h, sendFrame(2, "b", c));
    await until("second call", () => h.groups.cursorCalls.length === 2);
    assert.equal(h.groups.cursorCalls[1]![0]!.seq, 2);
  });
});
