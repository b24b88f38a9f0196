import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { ErrorCode, ServerFrameSchema, type ClientFrame, type SendMessage } from "../../../gen/parley/client/v1/frames_pb.js";
import type { DeliverRequest } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import type { PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import type { SendRequestSchema, SendResponse } from "../../../gen/parley/router/v1/router_service_pb.js";
import type { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import type { ConnectionRegistry, DeviceEntry } from "../../../lib/registry/connection-registry.js";
import { requireText, requireUuid } from "../../../lib/validate.js";
import type { GatewayConfig } from "../config.js";
import { Connection, type Principal, type SocketPort } from "./connection.js";
import { encodeServerFrame, errorCodeOf, errorFrame, pongFrame, serverFrame, type Decoded } from "./frames.js";
import { CloseCode, type Encoding } from "./protocol.js";

export const MAX_BODY_CHARS = 4000;

/** A send handed to the router (lib/batcher.ts batches them per router instance). */
export type RouterSend = (req: MessageInitShape<typeof SendRequestSchema>) => Promise<SendResponse>;

export interface GatewayDeps {
  session: Client<typeof SessionService>;
  /**
   * Sends to the router. Calls made in some order must be stored in that order (a
   * batcher with one batch in flight per router keeps it), so a device's messages keep
   * their order without the gateway waiting for each ack.
   */
  send: RouterSend;
  presence: Client<typeof PresenceService> | undefined;
  registry: ConnectionRegistry;
  clock: () => number;
  logger: Logger;
  /** Told the number of open connections whenever it changes (discovery load). */
  onConnections?: (n: number) => void;
}

export interface GatewayStats {
  connections: number;
  framesIn: number;
  framesOut: number;
}

/**
 * The transport-agnostic heart of a gateway: authenticated connections, the frame
 * protocol, and delivery of routed frames. It never sees a uWS object, only
 * `SocketPort`s.
 */
export class GatewayCore {
  /** userId → that user's connections on this gateway (usually one). */
  private readonly byUser = new Map<string, Connection[]>();
  private pendingAdd: Connection[] = [];
  private pendingRemove: DeviceEntry[] = [];
  private flushScheduled = false;
  /**
   * The registry writes, one flush at a time: an add still in flight must not land
   * after the remove of the same device (that would leave an entry for a closed socket).
   */
  private flushes: Promise<void> = Promise.resolve();
  /** Users whose last connection here closed since the last presence report. */
  private wentOffline = new Set<string>();
  private presenceTimer: NodeJS.Timeout | undefined;
  /** One timer per gateway (never one per connection) refreshing every registry entry of this gateway. */
  private readonly refreshTimer: NodeJS.Timeout;
  private draining = false;
  readonly stats: GatewayStats = { connections: 0, framesIn: 0, framesOut: 0 };

  constructor(
    private readonly cfg: GatewayConfig,
    private readonly deps: GatewayDeps,
  ) {
    if (deps.presence) {
      this.presenceTimer = setInterval(() => void this.reportPresence(), cfg.presenceIntervalMs);
      this.presenceTimer.unref();
    }
    this.refreshTimer = setInterval(() => void this.refreshRegistry(), cfg.registryRefreshMs);
    this.refreshTimer.unref();
  }

  get accepting(): boolean {
    return !this.draining;
  }

  /** Checks an access token with the session service (signature, expiry, revocation). */
  async authenticate(token: string): Promise<Principal> {
    const { principal } = await this.deps.session.authenticate({ accessToken: token });
    if (!principal) throw new ConnectError("no principal", Code.Unauthenticated);
    return { userId: principal.userId, deviceId: principal.deviceId, sessionId: principal.sessionId };
  }

  newConnection(principal: Principal, encoding: Encoding): Connection {
    return new Connection(principal, encoding, this.cfg.frameBurst, this.deps.clock());
  }

  /** The socket is open: register it; Hello follows once the registry knows it. */
  open(conn: Connection, socket: SocketPort): void {
    conn.socket = socket;
    if (this.draining) {
      // Authenticated before the drain, upgraded after it: nothing would ever close it.
      conn.closed = true;
      socket.close(CloseCode.GOING_AWAY, "gateway shutting down: reconnect");
      return;
    }
    this.stats.connections++;
    this.deps.onConnections?.(this.stats.connections);
    const list = this.byUser.get(conn.principal.userId);
    if (list) list.push(conn);
    else this.byUser.set(conn.principal.userId, [conn]);
    this.wentOffline.delete(conn.principal.userId);
    this.pendingAdd.push(conn);
    this.scheduleFlush();
  }

  close(conn: Connection): void {
    if (conn.closed) return;
    conn.closed = true;
    conn.socket = undefined;
    this.stats.connections--;
    this.deps.onConnections?.(this.stats.connections);
    const { userId, deviceId } = conn.principal;
    const list = this.byUser.get(userId);
    if (!list) return;
    const rest = list.filter((c) => c !== conn);
    if (rest.length === 0) {
      this.byUser.delete(userId);
      this.wentOffline.add(userId);
    } else this.byUser.set(userId, rest);
    // The same device may hold a second connection here (a fast reconnect): keep its entry.
    if (!rest.some((c) => c.principal.deviceId === deviceId)) {
      this.pendingRemove.push({ userId, deviceId });
      this.scheduleFlush();
    }
  }

  /** One decoded (or undecodable) frame from a client. */
  onFrame(conn: Connection, decoded: Decoded): void {
    this.stats.framesIn++;
    if (!conn.takeToken(this.deps.clock(), this.cfg.framesPerSecond, this.cfg.frameBurst)) {
      const frame = decoded.ok ? decoded.frame : undefined;
      const clientMsgId = frame?.kind.case === "send" ? frame.kind.value.clientMsgId : "";
      this.reply(conn, errorFrame(ErrorCode.RATE_LIMITED, "too many frames; slow down", frame?.ref ?? 0, clientMsgId));
      return;
    }
    if (!decoded.ok) {
      this.reply(conn, errorFrame(decoded.code, decoded.message, decoded.ref));
      return;
    }
    const frame: ClientFrame = decoded.frame;
    switch (frame.kind.case) {
      case "send":
        void this.send(conn, frame.ref, frame.kind.value);
        return;
      case "ping":
        this.reply(conn, pongFrame(frame.ref, frame.kind.value.nonce));
        return;
      default:
        this.reply(conn, errorFrame(ErrorCode.UNKNOWN_FRAME, "frame has no kind this server knows", frame.ref));
    }
  }

  private async send(conn: Connection, ref: number, s: SendMessage): Promise<void> {
    try {
      requireUuid("client_msg_id", s.clientMsgId);
      requireUuid("conversation_id", s.conversationId);
      requireText("body", s.body, 1, MAX_BODY_CHARS);
    } catch (err) {
      this.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, ConnectError.from(err).rawMessage, ref, s.clientMsgId));
      return;
    }
    if (conn.inFlightSends >= this.cfg.maxInFlightSends) {
      this.reply(conn, errorFrame(ErrorCode.RATE_LIMITED, "too many sends waiting for an ack", ref, s.clientMsgId));
      return;
    }
    conn.inFlightSends++;
    try {
      const ack = await this.deps.send({
        senderId: conn.principal.userId,
        senderDeviceId: conn.principal.deviceId,
        conversationId: s.conversationId,
        clientMsgId: s.clientMsgId,
        body: s.body,
      });
      this.reply(
        conn,
        serverFrame({
          ref,
          kind: {
            case: "ack",
            value: {
              clientMsgId: s.clientMsgId,
              conversationId: ack.conversationId,
              seq: ack.seq,
              messageId: ack.messageId,
              sentAt: ack.sentAt,
              duplicate: ack.duplicate,
            },
          },
        }),
      );
    } catch (err) {
      const ce = ConnectError.from(err);
      const code = errorCodeOf(ce);
      if (code === ErrorCode.INTERNAL) this.deps.logger.error({ err: ce }, "send failed");
      this.reply(conn, errorFrame(code, ce.rawMessage, ref, s.clientMsgId));
    } finally {
      conn.inFlightSends--;
    }
  }

  private reply(conn: Connection, frame: ReturnType<typeof serverFrame>): void {
    this.stats.framesOut++;
    if (!conn.write(frame)) this.slow(conn);
  }

  private slow(conn: Connection): void {
    this.deps.logger.warn({ userId: conn.principal.userId }, "closing slow consumer");
    conn.socket?.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resync");
  }

  /** DeliveryService.Deliver: envelopes in order; each socket corked once per call. */
  deliver(req: DeliverRequest): { deliveredFrames: number; absentUserIds: string[] } {
    const perConn = new Map<Connection, (Uint8Array | string)[]>();
    const absent = new Set<string>();
    for (const env of req.envelopes) {
      let json: string | undefined;
      for (const userId of env.userIds) {
        const conns = this.byUser.get(userId);
        if (!conns) {
          absent.add(userId);
          continue;
        }
        for (const conn of conns) {
          if (conn.principal.deviceId === env.excludeDeviceId || conn.closed) continue;
          let data: Uint8Array | string = env.serverFrame;
          if (conn.encoding === "json") {
            json ??= encodeServerFrame(fromBinary(ServerFrameSchema, env.serverFrame), "json") as string;
            data = json;
          }
          const list = perConn.get(conn);
          if (list) list.push(data);
          else perConn.set(conn, [data]);
        }
      }
    }
    let delivered = 0;
    for (const [conn, frames] of perConn) {
      if (!conn.ready) {
        for (const f of frames) conn.writeEncoded(f);
        delivered += frames.length;
        continue;
      }
      let ok = true;
      conn.socket!.cork(() => {
        for (const f of frames) ok = conn.writeEncoded(f) && ok;
      });
      delivered += frames.length;
      if (!ok) this.slow(conn);
    }
    this.stats.framesOut += delivered;
    return { deliveredFrames: delivered, absentUserIds: [...absent] };
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => void this.queueFlush());
  }

  private queueFlush(): Promise<void> {
    this.flushes = this.flushes.then(() => this.flush());
    return this.flushes;
  }

  /** One registry write for every connection opened or closed since the last flush. */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const adds = this.pendingAdd;
    const removes = this.pendingRemove;
    this.pendingAdd = [];
    this.pendingRemove = [];
    const gw = this.cfg.id;
    try {
      if (removes.length > 0) await this.deps.registry.remove(gw, removes);
    } catch (err) {
      this.deps.logger.warn({ err, entries: removes.length }, "registry remove failed");
    }
    const live = adds.filter((c) => !c.closed);
    if (live.length === 0) return;
    try {
      await this.deps.registry.add(
        gw,
        live.map((c) => ({ userId: c.principal.userId, deviceId: c.principal.deviceId })),
      );
    } catch (err) {
      this.deps.logger.warn({ err, connections: live.length }, "registry add failed");
      for (const c of live) c.socket?.close(CloseCode.TRY_AGAIN_LATER, "registry unavailable: try again later");
      return;
    }
    for (const c of live) if (!c.closed) this.hello(c);
  }

  /**
   * Extends the registry entries of every device registered here, in one call: entries
   * of a gateway that dies stop being refreshed and expire. Queued with the add/remove
   * flushes so it never overtakes them.
   */
  refreshRegistry(): Promise<void> {
    this.flushes = this.flushes.then(() => this.refresh());
    return this.flushes;
  }

  private async refresh(): Promise<void> {
    const entries: DeviceEntry[] = [];
    for (const [userId, conns] of this.byUser) {
      const devices = new Set<string>();
      // Connections still waiting for their add are registered by it.
      for (const c of conns) if (c.ready && !c.closed) devices.add(c.principal.deviceId);
      for (const deviceId of devices) entries.push({ userId, deviceId });
    }
    if (entries.length === 0) return;
    try {
      await this.deps.registry.refresh(this.cfg.id, entries);
    } catch (err) {
      this.deps.logger.warn({ err, entries: entries.length }, "registry refresh failed");
    }
  }

  private hello(conn: Connection): void {
    const early = conn.early;
    conn.early = undefined;
    conn.ready = true;
    const frame = serverFrame({
      kind: {
        case: "hello",
        value: {
          userId: conn.principal.userId,
          deviceId: conn.principal.deviceId,
          sessionId: conn.principal.sessionId,
          gatewayId: this.cfg.id,
          maxFrameBytes: this.cfg.maxFrameBytes,
          idleTimeoutSeconds: this.cfg.idleTimeoutSeconds,
        },
      },
    });
    let ok = true;
    conn.socket!.cork(() => {
      ok = conn.write(frame);
      for (const f of early ?? []) ok = conn.writeEncoded(f) && ok;
    });
    if (!ok) this.slow(conn);
  }

  /** One report per interval for all users of this gateway (never one per connection). */
  private async reportPresence(): Promise<void> {
    const offline = [...this.wentOffline];
    this.wentOffline.clear();
    try {
      await this.deps.presence?.reportConnections({
        gatewayId: this.cfg.id,
        onlineUserIds: [...this.byUser.keys()],
        offlineUserIds: offline,
      });
    } catch (err) {
      for (const u of offline) if (!this.byUser.has(u)) this.wentOffline.add(u);
      this.deps.logger.warn({ err }, "presence report failed");
    }
  }

  /** Closes the connections of a revoked session (log out) with 4001. */
  closeSession(sessionId: string): number {
    let n = 0;
    for (const conns of this.byUser.values()) {
      for (const c of conns) {
        if (c.principal.sessionId !== sessionId) continue;
        c.socket?.close(CloseCode.SESSION_REVOKED, "session revoked");
        n++;
      }
    }
    return n;
  }

  /** Closes every connection with 1001 so clients reconnect elsewhere, and unregisters them. */
  async drain(): Promise<void> {
    this.draining = true;
    if (this.presenceTimer) clearInterval(this.presenceTimer);
    clearInterval(this.refreshTimer);
    const all = [...this.byUser.values()].flat();
    for (const c of all) c.socket?.close(CloseCode.GOING_AWAY, "gateway shutting down: reconnect");
    for (const c of all) this.close(c);
    await this.queueFlush();
    await this.reportPresence();
  }
}
