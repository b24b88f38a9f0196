import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import { create, fromBinary, fromJsonString, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import {
  ErrorCode,
  PresenceState as FrameState,
  ServerFrameSchema,
  SetPresenceSchema,
  SubscribePresenceSchema,
  type ServerFrame,
} from "../../gen/parley/client/v1/frames_pb.js";
import {
  PresenceService,
  PresenceState,
  type GetPresenceRequest,
  type ReportConnectionsRequest,
} from "../../gen/parley/presence/v1/presence_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { loadConfig } from "../src/config.js";
import { Connection, type SocketPort } from "../src/core/connection.js";
import { GatewayPresence, MAX_PRESENCE_FOLLOWS, presenceTopic } from "../src/core/presence.js";
import type { Encoding } from "../src/core/protocol.js";
import { until, turns } from "../../lib/testing/wait.js";

const GW = "gw-p";

class FakeSocket implements SocketPort {
  readonly writes: (Uint8Array | string)[] = [];
  readonly closes: number[] = [];
  accepts = true;
  send(data: Uint8Array | string): boolean {
    this.writes.push(data);
    return this.accepts;
  }
  cork(fn: () => void): void {
    fn();
  }
  close(code: number): void {
    this.closes.push(code);
  }
  subscribe(): void {}
  unsubscribe(): void {}
  publish(): void {}
  get frames(): ServerFrame[] {
    return this.writes.map((w) => (typeof w === "string" ? fromJsonString(ServerFrameSchema, w) : fromBinary(ServerFrameSchema, w)));
  }
  presence() {
    return this.frames.flatMap((f) =>
      f.kind.case === "presence"
        ? [{ ref: f.ref, userId: f.kind.value.userId, state: f.kind.value.state, lastSeenMs: f.kind.value.lastSeenAt ? timestampMs(f.kind.value.lastSeenAt) : 0 }]
        : [],
    );
  }
  errors() {
    return this.frames.flatMap((f) => (f.kind.case === "error" ? [{ ref: f.ref, code: f.kind.value.code }] : []));
  }
}

class CountingRegistry extends MemoryConnectionRegistry {
  readonly topicCalls: { op: "add" | "remove"; ids: string[] }[] = [];
  override async addTopics(gatewayId: string, ids: readonly string[]): Promise<void> {
    this.topicCalls.push({ op: "add", ids: [...ids].sort() });
    await super.addTopics(gatewayId, ids);
  }
  override async removeTopics(gatewayId: string, ids: readonly string[]): Promise<void> {
    this.topicCalls.push({ op: "remove", ids: [...ids].sort() });
    await super.removeTopics(gatewayId, ids);
  }
}

function harness(env: Record<string, string> = {}) {
  const cfg = { ...loadConfig({ PARLEY_PRESENCE_REPORT_MS: "1000", ...env }), id: GW };
  const reports: ReportConnectionsRequest[] = [];
  const gets: GetPresenceRequest[] = [];
  const fail = { report: false, get: false };
  /** The service's answer to GetPresence, by user. */
  const states = new Map<string, { state: PresenceState; lastSeenMs?: number }>();
  const gate: { get?: Promise<void> } = {};
  const presence = createClient(
    PresenceService,
    createRouterTransport((r) =>
      r.service(PresenceService, {
        reportConnections: (req) => {
          if (fail.report) throw new ConnectError("presence down", Code.Unavailable);
          reports.push(req);
          return {};
        },
        getPresence: async (req) => {
          gets.push(req);
          if (gate.get) await gate.get;
          if (fail.get) throw new ConnectError("presence down", Code.Unavailable);
          return {
            presences: req.userIds.map((userId) => {
              const s = states.get(userId) ?? { state: PresenceState.OFFLINE };
              return { userId, state: s.state, lastSeenAt: s.lastSeenMs ? timestampFromMs(s.lastSeenMs) : undefined };
            }),
          };
        },
      }),
    ),
  );
  const registry = new CountingRegistry();
  const all = new Set<Connection>();
  const clock = { now: 0 };
  const gp = new GatewayPresence(
    cfg,
    { presence, registry, clock: () => clock.now, logger: createLogger("test", "silent") },
    {
      reply: (conn, frame) => {
        if (!conn.write(frame)) conn.socket?.close(4008, "slow");
      },
      connectionsOf: (userId) => byUser().get(userId),
      users: () => byUser().entries(),
    },
  );
  /** The open connections by user, as the gateway core keeps them. */
  function byUser(): Map<string, Connection[]> {
    const out = new Map<string, Connection[]>();
    for (const c of all) out.set(c.principal.userId, [...(out.get(c.principal.userId) ?? []), c]);
    return out;
  }
  function open(userId: string = randomUUID(), encoding: Encoding = "binary") {
    const conn = new Connection({ userId, deviceId: randomUUID(), sessionId: "s" }, encoding, 100, 0);
    const socket = new FakeSocket();
    conn.socket = socket;
    conn.ready = true;
    all.add(conn);
    gp.connected(conn);
    return { conn, socket, userId };
  }
  function close(c: { conn: Connection }) {
    c.conn.closed = true;
    const userId = c.conn.principal.userId;
    all.delete(c.conn);
    gp.disconnected(c.conn, ![...all].some((o) => o.principal.userId === userId));
  }
  function subscribe(c: { conn: Connection }, ref: number, add: string[], remove: string[] = []) {
    gp.onSubscribe(c.conn, ref, create(SubscribePresenceSchema, { addUserIds: add, removeUserIds: remove }));
  }
  function setState(c: { conn: Connection }, state: FrameState, ref = 0) {
    gp.onSetPresence(c.conn, ref, create(SetPresenceSchema, { state }));
  }
  return { gp, cfg, reports, gets, fail, states, gate, registry, clock, open, close, subscribe, setState };
}

function presenceFrame(userId: string, state: FrameState, lastSeenMs = 0): Uint8Array {
  return toBinary(
    ServerFrameSchema,
    create(ServerFrameSchema, {
      kind: { case: "presence", value: { userId, state, lastSeenAt: lastSeenMs ? timestampFromMs(lastSeenMs) : undefined } },
    }),
  );
}

const sorted = (xs: readonly string[]) => [...xs].sort();
const onlineOf = (r: ReportConnectionsRequest) =>
  r.online.map((u) => `${u.userId}:${PresenceState[u.state]}`).sort();

describe("GatewayPresence: reports", () => {
  let h: ReturnType<typeof harness>;
  beforeEach(() => {
    mock.timers.enable({ apis: ["setInterval"] });
    h = harness();
  });
  afterEach(async () => {
    await h.gp.stop();
    mock.timers.reset();
  });

  it("changes go out right away as one delta per flush, never one call per connection", async () => {
    const cs = Array.from({ length: 10 }, () => h.open());
    await until("delta", () => h.reports.length === 1);
    const r = h.reports[0]!;
    assert.equal(r.full, false);
    assert.equal(r.gatewayId, GW);
    assert.deepEqual(onlineOf(r), sorted(cs.map((c) => `${c.userId}:ONLINE`)));
    assert.deepEqual(r.offlineUserIds, []);

    h.close(cs[0]!);
    h.close(cs[1]!);
    await until("offline delta", () => h.reports.length === 2);
    assert.deepEqual(sorted(h.reports[1]!.offlineUserIds), sorted([cs[0]!.userId, cs[1]!.userId]));
    assert.deepEqual(h.reports[1]!.online, []);

    // Connect and disconnect within one flush: nothing to say.
    const brief = h.open();
    h.close(brief);
    await turns();
    assert.equal(h.reports.length, 2);
  });

  it("a user's state here is the most active of their connections; SetPresence changes it", async () => {
    const a1 = h.open();
    const a2 = h.open(a1.userId);
    await until("online", () => h.reports.length === 1);
    h.setState(a1, FrameState.AWAY);
    await turns();
    assert.equal(h.reports.length, 1, "a2 is still online: no change");
    h.setState(a2, FrameState.AWAY);
    await until("away", () => h.reports.length === 2);
    assert.deepEqual(onlineOf(h.reports[1]!), [`${a1.userId}:AWAY`]);
    h.setState(a2, FrameState.ONLINE);
    await until("online again", () => h.reports.length === 3);
    assert.deepEqual(onlineOf(h.reports[2]!), [`${a1.userId}:ONLINE`]);
    // The online connection closes: the user is away here.
    h.close(a2);
    await until("away again", () => h.reports.length === 4);
    assert.deepEqual(onlineOf(h.reports[3]!), [`${a1.userId}:AWAY`]);

    h.setState(a1, FrameState.OFFLINE, 7);
    h.setState(a1, FrameState.UNSPECIFIED, 8);
    assert.deepEqual(a1.socket.errors(), [
      { ref: 7, code: ErrorCode.INVALID_ARGUMENT },
      { ref: 8, code: ErrorCode.INVALID_ARGUMENT },
    ]);
  });

  it("a full report every interval lists every user with their state; a failed offline is sent again", async () => {
    const a = h.open();
    const b = h.open();
    await until("delta", () => h.reports.length === 1);
    h.setState(b, FrameState.AWAY);
    await until("away", () => h.reports.length === 2);
    h.fail.report = true;
    h.close(a);
    await turns();
    assert.equal(h.reports.length, 2, "the delta failed");
    h.fail.report = false;
    mock.timers.tick(1000);
    await until("full", () => h.reports.length === 3);
    const r = h.reports[2]!;
    assert.equal(r.full, true);
    assert.deepEqual(onlineOf(r), [`${b.userId}:AWAY`]);
    assert.deepEqual(r.offlineUserIds, [a.userId]);
    mock.timers.tick(1000);
    await until("next full", () => h.reports.length === 4);
    assert.deepEqual(h.reports[3]!.offlineUserIds, [], "offline once");
  });

  it("a connection without activity for the away delay counts as AWAY; its next frame makes it ONLINE again", async () => {
    await h.gp.stop();
    h = harness({ PARLEY_PRESENCE_AWAY_AFTER_MS: "60000" });
    const a = h.open();
    await until("online", () => h.reports.length === 1);
    h.clock.now = 59_999;
    mock.timers.tick(1000);
    await until("full report", () => h.reports.length === 2);
    assert.deepEqual(onlineOf(h.reports[1]!), [`${a.userId}:ONLINE`], "not idle yet");
    h.clock.now = 60_000;
    mock.timers.tick(1000);
    await until("idle: away", () => h.reports.slice(2).some((r) => onlineOf(r).includes(`${a.userId}:AWAY`)));
    h.gp.activity(a.conn);
    await until("active again", () => onlineOf(h.reports.at(-1)!).includes(`${a.userId}:ONLINE`));
    assert.equal(h.reports.at(-1)!.full, false, "a delta right away");
  });

  it("stop: one last report, the users still here and the ones gone", async () => {
    const a = h.open();
    await until("delta", () => h.reports.length === 1);
    h.close(a);
    await h.gp.stop();
    const last = h.reports.at(-1)!;
    assert.equal(last.full, true);
    assert.deepEqual(last.offlineUserIds, [a.userId]);
    assert.deepEqual(last.online, []);
  });
});

describe("GatewayPresence: subscriptions", () => {
  let h: ReturnType<typeof harness>;
  beforeEach(() => {
    mock.timers.enable({ apis: ["setInterval"] });
    h = harness();
  });
  afterEach(async () => {
    await h.gp.stop();
    mock.timers.reset();
  });

  it("subscribing registers the first local follower once (batched) and sends the current states with the ref", async () => {
    const [u1, u2, u3] = [randomUUID(), randomUUID(), randomUUID()];
    h.states.set(u1, { state: PresenceState.ONLINE });
    h.states.set(u2, { state: PresenceState.OFFLINE, lastSeenMs: 1_700_000_000_000 });
    h.states.set(u3, { state: PresenceState.AWAY });
    const a = h.open();
    const b = h.open();
    h.subscribe(a, 5, [u1, u2]);
    h.subscribe(b, 6, [u2, u3]);
    await until("snapshots", () => a.socket.presence().length === 2 && b.socket.presence().length === 2);
    assert.deepEqual(h.registry.topicCalls, [{ op: "add", ids: sorted([u1, u2, u3].map(presenceTopic)) }], "one addTopics for all");
    assert.equal(h.gets.length, 1, "one GetPresence for both subscriptions");
    assert.deepEqual(sorted(h.gets[0]!.userIds), sorted([u1, u2, u3]));
    const byUser = (xs: ReturnType<FakeSocket["presence"]>) => [...xs].sort((x, y) => x.userId.localeCompare(y.userId));
    assert.deepEqual(
      byUser(a.socket.presence()),
      byUser([
        { ref: 5, userId: u1, state: FrameState.ONLINE, lastSeenMs: 0 },
        { ref: 5, userId: u2, state: FrameState.OFFLINE, lastSeenMs: 1_700_000_000_000 },
      ]),
    );
    assert.deepEqual(
      byUser(b.socket.presence()),
      byUser([
        { ref: 6, userId: u2, state: FrameState.OFFLINE, lastSeenMs: 1_700_000_000_000 },
        { ref: 6, userId: u3, state: FrameState.AWAY, lastSeenMs: 0 },
      ]),
    );
    assert.deepEqual(
      (await h.registry.lookupTopics([presenceTopic(u1), presenceTopic(u3)])).get(presenceTopic(u1)),
      [GW],
    );

    // a stops following u2: b still does, nothing to unregister. b closes: u2 and u3 lose their last follower.
    h.subscribe(a, 7, [], [u2]);
    await turns();
    assert.equal(h.registry.topicCalls.length, 1);
    h.close(b);
    await until("removeTopics", () => h.registry.topicCalls.length === 2);
    assert.deepEqual(h.registry.topicCalls[1], { op: "remove", ids: sorted([u2, u3].map(presenceTopic)) });
  });

  it("deliverToWatchers writes to the local followers only, each in its encoding", async () => {
    const u = randomUUID();
    const bin = h.open();
    const json = h.open(randomUUID(), "json");
    const other = h.open();
    h.subscribe(bin, 1, [u]);
    h.subscribe(json, 2, [u]);
    h.subscribe(other, 3, [randomUUID()]);
    await until("snapshots", () => bin.socket.presence().length === 1 && json.socket.presence().length === 1);
    const n = h.gp.deliverToWatchers(u, presenceFrame(u, FrameState.OFFLINE, 1_700_000_000_123));
    assert.equal(n, 2);
    for (const s of [bin.socket, json.socket]) {
      assert.deepEqual(s.presence().at(-1), { ref: 0, userId: u, state: FrameState.OFFLINE, lastSeenMs: 1_700_000_000_123 });
    }
    assert.equal(typeof json.socket.writes.at(-1), "string", "JSON connection got JSON");
    assert.ok(bin.socket.writes.at(-1) instanceof Uint8Array);
    assert.equal(other.socket.presence().length, 1, "only its own snapshot");
    assert.equal(h.gp.deliverToWatchers(randomUUID(), presenceFrame(u, FrameState.ONLINE)), 0);
  });

  it(`over ${MAX_PRESENCE_FOLLOWS} followed users → LIMIT_EXCEEDED and nothing changes; invalid ids → INVALID_ARGUMENT`, async () => {
    const a = h.open();
    const first = Array.from({ length: MAX_PRESENCE_FOLLOWS }, () => randomUUID());
    h.subscribe(a, 1, first);
    await until("snapshot", () => a.socket.presence().length === MAX_PRESENCE_FOLLOWS);
    assert.equal(h.registry.topicCalls.length, 1);
    const extra = randomUUID();
    h.subscribe(a, 2, [extra]);
    h.subscribe(a, 3, Array.from({ length: MAX_PRESENCE_FOLLOWS + 1 }, () => randomUUID()));
    h.subscribe(a, 4, [extra, "not-a-uuid"], []);
    h.subscribe(a, 5, [], ["nope"]);
    assert.deepEqual(a.socket.errors(), [
      { ref: 2, code: ErrorCode.LIMIT_EXCEEDED },
      { ref: 3, code: ErrorCode.LIMIT_EXCEEDED },
      { ref: 4, code: ErrorCode.INVALID_ARGUMENT },
      { ref: 5, code: ErrorCode.INVALID_ARGUMENT },
    ]);
    await turns();
    assert.equal(h.registry.topicCalls.length, 1, "nothing registered");
    assert.equal(h.gets.length, 1, "nothing fetched");
    assert.equal(h.gp.deliverToWatchers(extra, presenceFrame(extra, FrameState.ONLINE)), 0, "not followed");
    // Swapping one for another within the cap is fine.
    h.subscribe(a, 6, [extra], [first[0]!]);
    await until("swap", () => h.registry.topicCalls.length === 3);
    assert.deepEqual(h.registry.topicCalls.slice(1), [
      { op: "remove", ids: [presenceTopic(first[0]!)] },
      { op: "add", ids: [presenceTopic(extra)] },
    ]);
    assert.equal(a.socket.errors().length, 4);
  });

  it("a change delivered while GetPresence is in flight wins over its (older) answer", async () => {
    const u = randomUUID();
    h.states.set(u, { state: PresenceState.ONLINE });
    const a = h.open();
    let release!: () => void;
    h.gate.get = new Promise<void>((r) => (release = r));
    h.subscribe(a, 1, [u]);
    await until("GetPresence in flight", () => h.gets.length === 1);
    assert.equal(h.gp.deliverToWatchers(u, presenceFrame(u, FrameState.OFFLINE, 1_700_000_000_000)), 1);
    release();
    await h.gp.stop();
    assert.deepEqual(a.socket.presence(), [{ ref: 0, userId: u, state: FrameState.OFFLINE, lastSeenMs: 1_700_000_000_000 }]);
  });

  it("GetPresence down: the subscription holds and the client gets UNAVAILABLE with its ref", async () => {
    const u = randomUUID();
    const a = h.open();
    h.fail.get = true;
    h.subscribe(a, 9, [u]);
    await until("error", () => a.socket.errors().length === 1);
    assert.deepEqual(a.socket.errors(), [{ ref: 9, code: ErrorCode.UNAVAILABLE }]);
    assert.equal(h.gp.deliverToWatchers(u, presenceFrame(u, FrameState.ONLINE)), 1, "still following");
  });

  it("followed users' topics are listed for the registry refresh; a closed connection drops its follows", async () => {
    const [u1, u2] = [randomUUID(), randomUUID()];
    const a = h.open();
    h.subscribe(a, 1, [u1, u2]);
    await until("registered", () => h.registry.topicCalls.length === 1);
    assert.deepEqual(sorted(h.gp.followedTopics()), sorted([u1, u2].map(presenceTopic)));
    h.close(a);
    await until("removed", () => h.registry.topicCalls.length === 2);
    assert.equal(h.registry.topicCalls[1]!.op, "remove");
    assert.equal(h.gp.deliverToWatchers(u1, presenceFrame(u1, FrameState.ONLINE)), 0);
    assert.deepEqual(h.gp.followedTopics(), []);
  });

});
