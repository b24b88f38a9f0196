import { fromBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import {
  ErrorCode,
  PresenceState as FrameState,
  ServerFrameSchema,
  type SetPresence,
  type SubscribePresence,
} from "../../../gen/parley/client/v1/frames_pb.js";
import { PresenceState, type PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import { isUuid } from "../../../lib/ids.js";
import type { Logger } from "../../../lib/logger.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import type { GatewayConfig } from "../config.js";
import type { Connection } from "./connection.js";
import { encodeServerFrame, errorFrame, serverFrame } from "./frames.js";
import { CloseCode } from "./protocol.js";

/** At most this many users followed by one connection. */
export const MAX_PRESENCE_FOLLOWS = 500;
/** GetPresence takes at most this many users per call. */
const GET_PRESENCE_CHUNK = 1000;

/** The registry topic of a user's followers (the presence service looks it up). */
export function presenceTopic(userId: string): string {
  return `presence:${userId}`;
}

/** What the presence part of a gateway needs from the rest of it. */
export interface PresenceHost {
  /** Writes a frame to a connection (closing it if it is a slow consumer). */
  reply(conn: Connection, frame: ReturnType<typeof serverFrame>): void;
  /** A user's connections here (closed ones may still be listed); undefined when none. */
  connectionsOf(userId: string): readonly Connection[] | undefined;
  /** Every user with a connection here, with their connections. */
  users(): Iterable<[string, readonly Connection[]]>;
}

type LiveState = "online" | "away";

/** A subscription's request for the current state of the users it added. */
interface SnapshotRequest {
  conn: Connection;
  ref: number;
  userIds: string[];
}

export interface GatewayPresenceStats {
  /** ReportConnections calls: full (heartbeat) and deltas. */
  fullReports: number;
  deltaReports: number;
  getPresenceCalls: number;
  /** Presence frames written to followers (deliveries and snapshots). */
  framesOut: number;
}

const RPC_STATE: Record<LiveState, PresenceState> = { online: PresenceState.ONLINE, away: PresenceState.AWAY };

function frameStateOf(s: PresenceState): FrameState {
  switch (s) {
    case PresenceState.ONLINE:
      return FrameState.ONLINE;
    case PresenceState.AWAY:
      return FrameState.AWAY;
    default:
      return FrameState.OFFLINE;
  }
}

/**
 * The gateway's side of presence.
 *
 * Reports: the state of each user here is the most active state of their connections
 * here (ONLINE > AWAY). A full report of every user goes to the presence service once
 * per interval (`PARLEY_PRESENCE_REPORT_MS`); changes (a user's first connection, their
 * last one closing, a SetPresence that changes the user's state here) go as a delta
 * right after, coalesced: one call per flush for every change since the last one, never
 * one per connection.
 *
 * Subscriptions: a connection follows at most 500 users. The first local follower of a
 * user registers this gateway in the registry's topic index under `presence:<userId>`
 * (batched per flush), the last one gone removes it, and every heartbeat re-adds all of
 * them (entries expire like the other registry entries). The presence service delivers
 * a change with one envelope per gateway (`watchers_of_user_id`); it is written here to
 * every local follower. Newly added users' current states are fetched with one
 * GetPresence per flush, after the topic registration (so no change falls in between);
 * a delivery that arrives while that call is in flight wins over its answer.
 *
 * Which connections a user has here is the host's (the gateway core's) list; the few
 * presence fields of a connection live in the Connection itself (`presenceAway`, `idle`,
 * `activeAtMs`, `follows`, the last made on the first subscription): no per-connection
 * object, map entry or set, so an idle connection costs presence nothing more.
 */
export class GatewayPresence {
  readonly stats: GatewayPresenceStats = { fullReports: 0, deltaReports: 0, getPresenceCalls: 0, framesOut: 0 };
  /** followed userId → the local connections following them. */
  private readonly followers = new Map<string, Set<Connection>>();
  /** The state the presence service holds for users of this gateway (as last reported successfully). */
  private readonly reported = new Map<string, LiveState>();
  /** Users whose state here may have changed since the last report. */
  private dirty = new Set<string>();
  private readonly topicAdd = new Set<string>();
  private readonly topicRemove = new Set<string>();
  private snapshots: SnapshotRequest[] = [];
  /** While a GetPresence is in flight: its users, and whether a delivery for them arrived meanwhile. */
  private snapshotInFlight: Map<string, boolean> | undefined;
  private flushScheduled = false;
  private stopped = false;
  /** Flushes and heartbeats, one at a time. */
  private chain: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;

  private readonly presence: Client<typeof PresenceService> | undefined;
  private readonly registry: ConnectionRegistry;
  private readonly logger: Logger;
  private readonly clock: () => number;

  constructor(
    private readonly cfg: GatewayConfig,
    deps: {
      presence: Client<typeof PresenceService> | undefined;
      /** The topic index keeps which gateways follow a user's presence (`presence:<userId>`). */
      registry: ConnectionRegistry;
      clock: () => number;
      logger: Logger;
    },
    private readonly host: PresenceHost,
  ) {
    this.presence = deps.presence;
    this.registry = deps.registry;
    this.logger = deps.logger;
    this.clock = deps.clock;
    this.timer = setInterval(() => void this.enqueue(() => this.heartbeat()), cfg.presenceIntervalMs);
    this.timer.unref();
  }

  /** A connection is registered (its user may have been offline here). */
  connected(conn: Connection): void {
    conn.activeAtMs = this.clock();
    this.changed(conn.principal.userId);
  }

  /** A connection closed; `lastOfUser` when its user has no other connection here. */
  disconnected(conn: Connection, _lastOfUser: boolean): void {
    for (const userId of conn.follows ?? []) this.unfollow(conn, userId);
    conn.follows = undefined;
    this.changed(conn.principal.userId);
  }

  /** The user did something on this connection (sent a frame other than a ping): not idle. */
  activity(conn: Connection): void {
    if (conn.closed) return;
    conn.activeAtMs = this.clock();
    if (!conn.idle) return;
    conn.idle = false;
    this.changed(conn.principal.userId);
  }

  /** Connections without activity for the away delay become idle (AWAY); checked every heartbeat. */
  private markIdle(): void {
    const now = this.clock();
    for (const [userId, conns] of this.host.users()) {
      for (const c of conns) {
        if (c.closed || c.idle || now - c.activeAtMs < this.cfg.presenceAwayAfterMs) continue;
        c.idle = true;
        this.changed(userId);
      }
    }
  }

  /** SetPresence: this connection's own state, ONLINE or AWAY. No answer unless it is invalid. */
  onSetPresence(conn: Connection, ref: number, frame: SetPresence): void {
    if (conn.closed) return;
    if (frame.state !== FrameState.ONLINE && frame.state !== FrameState.AWAY) {
      this.host.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, "state: must be ONLINE or AWAY", ref));
      return;
    }
    const away = frame.state === FrameState.AWAY;
    if (conn.presenceAway === away) return;
    conn.presenceAway = away;
    this.changed(conn.principal.userId);
  }

  /**
   * SubscribePresence: removes, then adds. Invalid ids → INVALID_ARGUMENT, more than 500
   * followed users → LIMIT_EXCEEDED; either way nothing changes. The added users' current
   * states follow as presence frames carrying the subscription's `ref`.
   */
  onSubscribe(conn: Connection, ref: number, frame: SubscribePresence): void {
    if (conn.closed) return;
    for (const [field, ids] of [
      ["add_user_ids", frame.addUserIds],
      ["remove_user_ids", frame.removeUserIds],
    ] as const) {
      if (ids.length > MAX_PRESENCE_FOLLOWS) {
        this.host.reply(conn, errorFrame(ErrorCode.LIMIT_EXCEEDED, `${field}: at most ${MAX_PRESENCE_FOLLOWS} users`, ref));
        return;
      }
      const bad = ids.find((id) => !isUuid(id));
      if (bad !== undefined) {
        this.host.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, `${field}: not a user id: "${bad.slice(0, 64)}"`, ref));
        return;
      }
    }
    const removes = new Set(frame.removeUserIds);
    const adds = new Set(frame.addUserIds);
    const follows = (conn.follows ??= new Set());
    let size = follows.size;
    for (const u of removes) if (follows.has(u) && !adds.has(u)) size--;
    for (const u of adds) if (!follows.has(u)) size++;
    if (size > MAX_PRESENCE_FOLLOWS) {
      this.host.reply(
        conn,
        errorFrame(ErrorCode.LIMIT_EXCEEDED, `a connection follows at most ${MAX_PRESENCE_FOLLOWS} users (this would make ${size})`, ref),
      );
      return;
    }
    for (const u of removes) if (!adds.has(u) && follows.delete(u)) this.unfollow(conn, u);
    if (follows.size === 0 && adds.size === 0) conn.follows = undefined;
    for (const u of adds) {
      if (follows.has(u)) continue;
      follows.add(u);
      let set = this.followers.get(u);
      if (!set) {
        this.followers.set(u, (set = new Set()));
        this.topicRemove.delete(presenceTopic(u));
        this.topicAdd.add(presenceTopic(u));
      }
      set.add(conn);
    }
    if (adds.size > 0) this.snapshots.push({ conn, ref, userIds: [...adds] });
    this.scheduleFlush();
  }

  /**
   * DeliveryService.Deliver, an envelope for the followers of `userId`: writes the
   * pre-encoded frame to the connections here that follow that user. Returns how many.
   */
  deliverToWatchers(userId: string, frame: Uint8Array): number {
    const set = this.followers.get(userId);
    if (this.snapshotInFlight?.has(userId)) this.snapshotInFlight.set(userId, true);
    if (!set) return 0;
    let json: string | undefined;
    let n = 0;
    for (const conn of set) {
      if (conn.closed) continue;
      const data = conn.encoding === "json" ? (json ??= encodeServerFrame(fromBinary(ServerFrameSchema, frame), "json") as string) : frame;
      this.write(conn, data);
      n++;
    }
    this.stats.framesOut += n;
    return n;
  }

  /** Shutdown: the pending registry changes and a last report (the users still here, those gone offline). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.enqueue(async () => {
      await this.flushTopics();
      await this.fullReport();
    });
  }

  /** Writes one encoded frame (corked when the socket is open); closes a slow consumer. */
  private write(conn: Connection, data: Uint8Array | string): void {
    let ok = true;
    if (conn.ready && conn.socket) conn.socket.cork(() => (ok = conn.writeEncoded(data)));
    else ok = conn.writeEncoded(data);
    if (!ok) {
      this.logger.warn({ userId: conn.principal.userId }, "closing slow consumer");
      conn.socket?.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resync");
    }
  }

  private unfollow(conn: Connection, userId: string): void {
    const set = this.followers.get(userId);
    if (!set?.delete(conn) || set.size > 0) return;
    this.followers.delete(userId);
    this.topicAdd.delete(presenceTopic(userId));
    this.topicRemove.add(presenceTopic(userId));
    this.scheduleFlush();
  }

  /** The state of a user here: the most active of their connections; undefined when none. */
  private stateHere(userId: string): LiveState | undefined {
    let state: LiveState | undefined;
    for (const c of this.host.connectionsOf(userId) ?? []) {
      if (c.closed) continue;
      if (!c.idle && !c.presenceAway) return "online";
      state = "away";
    }
    return state;
  }

  private changed(userId: string): void {
    this.dirty.add(userId);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.stopped) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (!this.stopped) void this.enqueue(() => this.flush());
    });
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn).catch((err: unknown) => this.logger.warn({ err }, "presence flush failed"));
    this.chain = run;
    return run;
  }

  /** Everything since the last flush: registry topics then snapshots, and the delta report, side by side. */
  private async flush(): Promise<void> {
    await Promise.all([
      (async () => {
        await this.flushTopics();
        await this.sendSnapshots();
      })(),
      this.deltaReport(),
    ]);
  }

  private async flushTopics(): Promise<void> {
    const gw = this.cfg.id;
    const removes = [...this.topicRemove];
    const adds = [...this.topicAdd];
    this.topicRemove.clear();
    this.topicAdd.clear();
    if (removes.length > 0) {
      try {
        await this.registry.removeTopics(gw, removes);
      } catch (err) {
        // They expire by themselves (nobody refreshes them).
        this.logger.warn({ err, topics: removes.length }, "registry removeTopics (presence) failed");
      }
    }
    if (adds.length > 0) {
      try {
        await this.registry.addTopics(gw, adds);
      } catch (err) {
        // Retried by the next heartbeat (it re-adds every followed user).
        this.logger.warn({ err, topics: adds.length }, "registry addTopics (presence) failed");
      }
    }
  }

  /** One GetPresence (per 1,000 users) for every user added since the last flush; answers carry the subscription's ref. */
  private async sendSnapshots(): Promise<void> {
    const requests = this.snapshots;
    this.snapshots = [];
    if (requests.length === 0) return;
    const users = [...new Set(requests.flatMap((r) => r.userIds))];
    if (!this.presence) return;
    const inFlight = new Map(users.map((u) => [u, false]));
    this.snapshotInFlight = inFlight;
    const states = new Map<string, { state: FrameState; lastSeenAt: Timestamp | undefined }>();
    try {
      for (let i = 0; i < users.length; i += GET_PRESENCE_CHUNK) {
        this.stats.getPresenceCalls++;
        const res = await this.presence.getPresence({ userIds: users.slice(i, i + GET_PRESENCE_CHUNK) });
        for (const p of res.presences) {
          const state = frameStateOf(p.state);
          states.set(p.userId, { state, lastSeenAt: state === FrameState.OFFLINE ? p.lastSeenAt : undefined });
        }
      }
    } catch (err) {
      this.logger.warn({ err, users: users.length }, "GetPresence failed");
      for (const r of requests) {
        if (!r.conn.closed) this.host.reply(r.conn, errorFrame(ErrorCode.UNAVAILABLE, "presence unavailable: current states not sent", r.ref));
      }
      return;
    } finally {
      this.snapshotInFlight = undefined;
    }
    for (const r of requests) {
      if (r.conn.closed) continue;
      for (const userId of r.userIds) {
        // Unfollowed meanwhile, or a newer state was delivered while the call was in flight.
        if (!r.conn.follows?.has(userId) || inFlight.get(userId)) continue;
        const s = states.get(userId);
        if (!s) continue;
        this.stats.framesOut++;
        this.host.reply(
          r.conn,
          serverFrame({
            ref: r.ref,
            kind: { case: "presence", value: { userId, state: s.state, lastSeenAt: s.lastSeenAt } },
          }),
        );
      }
    }
  }

  /** The users whose state here changed since the last report, in one call. */
  private async deltaReport(): Promise<void> {
    if (!this.presence || this.dirty.size === 0) return;
    const users = this.dirty;
    this.dirty = new Set();
    const online: { userId: string; state: LiveState }[] = [];
    const offline: string[] = [];
    for (const userId of users) {
      const now = this.stateHere(userId);
      if (now === this.reported.get(userId)) continue;
      if (now) online.push({ userId, state: now });
      else offline.push(userId);
    }
    if (online.length + offline.length === 0) return;
    this.stats.deltaReports++;
    try {
      await this.presence.reportConnections({
        gatewayId: this.cfg.id,
        online: online.map((u) => ({ userId: u.userId, state: RPC_STATE[u.state] })),
        offlineUserIds: offline,
        full: false,
      });
      for (const u of online) this.reported.set(u.userId, u.state);
      for (const u of offline) this.reported.delete(u);
    } catch (err) {
      // Left for the next flush or the heartbeat (the full report covers them).
      for (const u of users) this.dirty.add(u);
      this.logger.warn({ err, users: online.length + offline.length }, "presence delta report failed");
    }
  }

  /** Every heartbeat: a full report. */
  private async heartbeat(): Promise<void> {
    this.markIdle();
    await this.fullReport();
  }

  /**
   * The registry topic keys of every user followed here. The gateway's registry refresh
   * re-adds them with its group topics (one call per refresh interval, so they outlive
   * the registry TTL and come back after a Redis restart).
   */
  followedTopics(): string[] {
    return [...this.followers.keys()].map(presenceTopic);
  }

  /** Every user here with their state, and the users the service still holds here that are gone. */
  private async fullReport(): Promise<void> {
    if (!this.presence) return;
    const online: { userId: string; state: LiveState }[] = [];
    for (const [userId] of this.host.users()) {
      const s = this.stateHere(userId);
      if (s) online.push({ userId, state: s });
    }
    const offline = [...this.reported.keys()].filter((u) => this.stateHere(u) === undefined);
    const covered = this.dirty;
    this.dirty = new Set();
    this.stats.fullReports++;
    try {
      await this.presence.reportConnections({
        gatewayId: this.cfg.id,
        online: online.map((u) => ({ userId: u.userId, state: RPC_STATE[u.state] })),
        offlineUserIds: offline,
        full: true,
      });
      this.reported.clear();
      for (const u of online) this.reported.set(u.userId, u.state);
    } catch (err) {
      for (const u of covered) this.dirty.add(u);
      this.logger.warn({ err }, "presence report failed");
    }
  }
}
