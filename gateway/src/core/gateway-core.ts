import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  ErrorCode,
  ServerFrameSchema,
  type ClientFrame,
  type Receipt as ReceiptFrame,
  type SendMessage,
  type Typing,
} from "../../../gen/parley/client/v1/frames_pb.js";
import type { DeliverRequest } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import type { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import type { EphemeralEventSchema, SendRequestSchema, SendResponse } from "../../../gen/parley/router/v1/router_service_pb.js";
import type { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import type { ConnectionRegistry, DeviceEntry } from "../../../lib/registry/connection-registry.js";
import { instruments, observeGateway } from "../../../lib/telemetry/metrics.js";
import {
  endSpan,
  sampledContextOf,
  sampleNewTrace,
  SpanKind,
  startItemSpan,
  startSpan,
  traceFields,
  tracing,
  type Span,
} from "../../../lib/telemetry/tracing.js";
import { invalid, requireText, requireUuid } from "../../../lib/validate.js";
import type { GatewayConfig } from "../config.js";
import { Connection, topicOf, type Principal, type SocketPort, type TopicBus } from "./connection.js";
import { encodeServerFrame, errorCodeOf, errorFrame, pongFrame, serverFrame, type Decoded } from "./frames.js";
import { CloseCode, DRAINING_REASON, type Encoding } from "./protocol.js";
import { GatewayPresence } from "./presence.js";
import { ReadCursorQueue } from "./read-cursors.js";
import { TYPING_EXPIRES_MS, TypingGate } from "./typing.js";
import { ReceiptQueue } from "./receipts.js";
import { frameBytes, parseResume, Resumer, ResumeState, type ResumeRequest } from "./resume.js";
import { fastToBinary } from "../../../lib/fast-binary.js";

export const MAX_BODY_CHARS = 4000;
/** A connection waits at most this long for its user's group list before being told to try again. */
const GROUP_LIST_TIMEOUT_MS = 5000;
/** Sequence numbers beyond this are no real cursor (and would lose precision as numbers). */
const MAX_SAFE_SEQ = BigInt(Number.MAX_SAFE_INTEGER);

/** A send handed to the router (lib/batcher.ts batches them per router instance). */
export type RouterSend = (req: MessageInitShape<typeof SendRequestSchema>) => Promise<SendResponse>;

/** An ephemeral event (typing) handed to the router, batched like sends; fire and forget. */
export type RouterEphemeral = (event: MessageInitShape<typeof EphemeralEventSchema>) => Promise<void>;

export interface GatewayDeps {
  session: Client<typeof SessionService>;
  /**
   * Sends to the router. Calls made in some order must be stored in that order (a
   * batcher with one batch in flight per router keeps it), so a device's messages keep
   * their order without the gateway waiting for each ack.
   */
  send: RouterSend;
  /** Typing events to the router (optional: without it typing frames are refused as UNAVAILABLE). */
  sendEphemeral?: RouterEphemeral;
  presence: Client<typeof PresenceService> | undefined;
  /**
   * The groups service: the group conversations of connecting users (one
   * ListUserGroupIds per flush) and the read cursors of senders (coalesced).
   */
  groups: Pick<Client<typeof GroupsService>, "listUserGroupIds" | "advanceReadCursors" | "listUserConversations" | "advanceCursors">;
  /** Heads and ranges for Resume frames; without it a Resume is answered UNAVAILABLE. */
  messagestore?: Pick<Client<typeof MessageStoreService>, "getHeads" | "getRange">;
  registry: ConnectionRegistry;
  clock: () => number;
  logger: Logger;
  /** Told the number of open connections whenever it changes (discovery load). */
  onConnections?: (n: number) => void;
}

/** The local subscribers of one group conversation's topics. */
interface TopicState {
  /** Ready (Hello sent) connections, subscribed at the socket to the binary / JSON topic. */
  binary: Set<Connection>;
  json: Set<Connection>;
  /**
   * Subscribed connections not subscribed at the socket: waiting for Hello (their topic
   * frames wait in `early`) or resuming (their topic frames are held, see `live`).
   */
  waiting: Set<Connection>;
}

/** A membership change seen while the user's group list was being fetched. */
interface MembershipOp {
  conversationId: string;
  join: boolean;
}

export interface DeliverResult {
  deliveredFrames: number;
  absentUserIds: string[];
  absentTopics: string[];
}

export interface GatewayStats {
  connections: number;
  framesIn: number;
  framesOut: number;
  /** Deliver calls served, the envelopes in them, and the topic publishes they caused. */
  deliverCalls: number;
  envelopes: number;
  topicPublishes: number;
  /** Typing events forwarded to the router, and dropped by the per-user rate limit. */
  typingForwarded: number;
  typingDropped: number;
  /** Receipt frames accepted. */
  receiptsIn: number;
  /** Send frames accepted and handed to a router (messages in). */
  sendsIn: number;
  /** Frames written to connections for Deliver calls (messages, events, typing, presence out). */
  framesDelivered: number;
}

/**
 * The transport-agnostic heart of a gateway: authenticated connections, the frame
 * protocol, and delivery of routed frames. It never sees a uWS object, only
 * `SocketPort`s.
 */
export class GatewayCore {
  /** userId → that user's connections on this gateway (usually one). */
  private readonly byUser = new Map<string, Connection[]>();
  /** deviceId → its connections here (usually one): finds the sender's socket to publish from. */
  private readonly byDevice = new Map<string, Connection[]>();
  /** conversationId → its local subscribers; present while it has at least one. */
  private readonly topics = new Map<string, TopicState>();
  private bus: TopicBus | undefined;
  private pendingAdd: Connection[] = [];
  private pendingRemove: DeviceEntry[] = [];
  /** Conversations that got their first / lost their last local subscriber since the last flush. */
  private readonly pendingTopicAdd = new Set<string>();
  private readonly pendingTopicRemove = new Set<string>();
  /**
   * Users whose group list is being fetched (one flush at a time): membership changes
   * delivered meanwhile, applied after the (possibly older) list.
   */
  private fetching: Map<string, MembershipOp[]> | undefined;
  private readonly readCursors: ReadCursorQueue;
  private flushScheduled = false;
  /**
   * The registry writes, one flush at a time: an add still in flight must not land
   * after the remove of the same device (that would leave an entry for a closed socket).
   */
  private flushes: Promise<void> = Promise.resolve();
  /** Presence: reports to the presence service and the presence frames (core/presence.ts). */
  private readonly presence: GatewayPresence;
  /** One timer per gateway (never one per connection) refreshing every registry entry of this gateway. */
  private readonly refreshTimer: NodeJS.Timeout;
  private draining = false;
  /** Runs Resume frames (undefined without a message store). */
  private readonly resumer: Resumer | undefined;
  readonly stats: GatewayStats = {
    connections: 0,
    framesIn: 0,
    framesOut: 0,
    deliverCalls: 0,
    envelopes: 0,
    topicPublishes: 0,
    typingForwarded: 0,
    typingDropped: 0,
    receiptsIn: 0,
    sendsIn: 0,
    framesDelivered: 0,
  };
  /** Leaves the process's gateway metrics (lib/telemetry/metrics.ts) on drain. */
  private readonly unobserveMetrics: () => void;
  /** One typing event per user and conversation per 3 s (core/typing.ts). */
  private readonly typingGate: TypingGate;
  /** Delivered/read receipts, stored in batches, told to who needs them (core/receipts.ts). */
  private readonly receipts: ReceiptQueue;

  constructor(
    private readonly cfg: GatewayConfig,
    private readonly deps: GatewayDeps,
  ) {
    this.presence = new GatewayPresence(cfg, deps, {
      reply: (c, f) => this.reply(c, f),
      connectionsOf: (userId) => this.byUser.get(userId),
      users: () => this.byUser.entries(),
    });
    this.unobserveMetrics = observeGateway({ gatewayId: cfg.id, stats: () => this.stats });
    this.refreshTimer = setInterval(() => void this.refreshRegistry(), cfg.registryRefreshMs);
    this.refreshTimer.unref();
    this.typingGate = new TypingGate(deps.clock);
    this.receipts = new ReceiptQueue(deps, cfg.readCursorIntervalMs);
    this.readCursors = new ReadCursorQueue(async (cursors) => {
      await deps.groups.advanceReadCursors({
        cursors: cursors.map((c) => ({ userId: c.userId, conversationId: c.conversationId, seq: BigInt(c.seq) })),
      });
    }, deps.logger, cfg.readCursorIntervalMs);
    this.resumer =
      deps.messagestore &&
      new Resumer(
        { groups: deps.groups, messagestore: deps.messagestore, logger: deps.logger },
        { pageSize: cfg.resumePageSize, fetchAhead: cfg.resumeFetchAhead, bufferBytes: cfg.resumeBufferBytes },
      );
  }

  /** The transport's gateway-wide topics (set once by the transport, before connections open). */
  useTopicBus(bus: TopicBus): void {
    this.bus = bus;
  }

  /** Read-cursor calls made so far (tests, metrics). */
  get readCursorCalls(): number {
    return this.readCursors.calls;
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
      socket.close(CloseCode.DRAINING, DRAINING_REASON);
      return;
    }
    this.stats.connections++;
    this.deps.onConnections?.(this.stats.connections);
    push(this.byUser, conn.principal.userId, conn);
    push(this.byDevice, conn.principal.deviceId, conn);
    this.presence.connected(conn);
    this.pendingAdd.push(conn);
    this.scheduleFlush();
  }

  close(conn: Connection): void {
    if (conn.closed) return;
    conn.closed = true;
    conn.socket = undefined;
    if (conn.resume) {
      conn.resume.done = true;
      conn.resume = undefined;
    }
    this.drained(conn);
    this.stats.connections--;
    this.deps.onConnections?.(this.stats.connections);
    const { userId, deviceId } = conn.principal;
    for (const conversationId of conn.topics ?? []) this.unsubscribe(conn, conversationId);
    drop(this.byDevice, deviceId, conn);
    const list = this.byUser.get(userId);
    if (!list) return;
    const rest = list.filter((c) => c !== conn);
    this.presence.disconnected(conn, rest.length === 0);
    if (rest.length === 0) {
      this.byUser.delete(userId);
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
    // Anything but a ping is the user doing something: not idle (presence AWAY by idleness).
    if (frame.kind.case !== "ping") this.presence.activity(conn);
    switch (frame.kind.case) {
      case "send":
        void this.send(conn, frame.ref, frame.kind.value);
        return;
      case "ping":
        this.reply(conn, pongFrame(frame.ref, frame.kind.value.nonce));
        return;
      case "setPresence":
        this.presence.onSetPresence(conn, frame.ref, frame.kind.value);
        return;
      case "subscribePresence":
        this.presence.onSubscribe(conn, frame.ref, frame.kind.value);
        return;
      case "resume":
        this.onResume(conn, frame.ref, frame.kind.value);
        return;
      case "typing":
        this.typing(conn, frame.ref, frame.kind.value);
        return;
      case "receipt":
        this.receipt(conn, frame.ref, frame.kind.value);
        return;
      default:
        this.reply(conn, errorFrame(ErrorCode.UNKNOWN_FRAME, "frame has no kind this server knows", frame.ref));
    }
  }

  /**
   * A receipt: validated, then queued (coalesced per device and conversation, stored in
   * batches). Cursors that would move back or past the newest message are cut there,
   * without an error; a cursor for a conversation the user is not in is ignored.
   */
  private receipt(conn: Connection, ref: number, r: ReceiptFrame): void {
    try {
      requireUuid("conversation_id", r.conversationId);
      if (r.deliveredSeq > MAX_SAFE_SEQ || r.readSeq > MAX_SAFE_SEQ) throw invalid("seq", "out of range");
    } catch (err) {
      this.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, ConnectError.from(err).rawMessage, ref));
      return;
    }
    if (r.deliveredSeq === 0n && r.readSeq === 0n) return;
    this.stats.receiptsIn++;
    const { userId, deviceId } = conn.principal;
    this.receipts.report({ userId, deviceId, conversationId: r.conversationId, deliveredSeq: Number(r.deliveredSeq), readSeq: Number(r.readSeq) });
  }

  /**
   * A typing event: validated, rate limited per user and conversation (a flood is
   * dropped and counted, no error), then handed to the router, which checks membership
   * and fans it out without storing it. Non-members' events are dropped there.
   */
  private typing(conn: Connection, ref: number, t: Typing): void {
    try {
      requireUuid("conversation_id", t.conversationId);
    } catch (err) {
      this.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, ConnectError.from(err).rawMessage, ref));
      return;
    }
    const { userId, deviceId } = conn.principal;
    if (!this.deps.sendEphemeral) {
      this.reply(conn, errorFrame(ErrorCode.UNAVAILABLE, "typing indicators are not available", ref));
      return;
    }
    if (!this.typingGate.allow(userId, t.conversationId, t.stopped)) {
      this.stats.typingDropped++;
      return;
    }
    this.stats.typingForwarded++;
    const frame = fastToBinary(
      ServerFrameSchema,
      {
        kind: {
          case: "typing",
          value: { conversationId: t.conversationId, userId, deviceId, stopped: t.stopped, expiresInMs: TYPING_EXPIRES_MS },
        },
      },
    );
    this.deps
      .sendEphemeral({ senderId: userId, senderDeviceId: deviceId, conversationId: t.conversationId, serverFrame: frame })
      .catch((err: unknown) => this.deps.logger.debug({ err }, "typing event not forwarded"));
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
    if (conn.closing) {
      // The drain is closing this connection once its sends in flight are acked: not stored, send again after reconnecting.
      this.reply(conn, errorFrame(ErrorCode.UNAVAILABLE, "gateway is draining: send again after reconnecting", ref, s.clientMsgId));
      return;
    }
    if (conn.inFlightSends >= this.cfg.maxInFlightSends) {
      this.reply(conn, errorFrame(ErrorCode.RATE_LIMITED, "too many sends waiting for an ack", ref, s.clientMsgId));
      return;
    }
    conn.inFlightSends++;
    this.stats.sendsIn++;
    const req: Parameters<RouterSend>[0] = {
      senderId: conn.principal.userId,
      senderDeviceId: conn.principal.deviceId,
      conversationId: s.conversationId,
      clientMsgId: s.clientMsgId,
      body: s.body,
    };
    // Telemetry: the message's trace starts here (or continues the client's, if its frame
    // carries one); the send carries it through the router's batches. The receive time
    // travels with the message for the delivery latency measured where it is written.
    const t = tracing();
    let span: Span | undefined;
    if (t) {
      // The client's own trace context decides, else this gateway's sampling.
      const parent = s.traceparent === "" ? undefined : sampledContextOf(s.traceparent, s.tracestate);
      if (parent || (s.traceparent === "" && sampleNewTrace())) {
        span = startSpan(t, "send", SpanKind.SERVER, parent, {
          "parley.gateway.id": this.cfg.id,
          "parley.conversation_id": s.conversationId,
        });
        Object.assign(req, traceFields(span));
      }
    }
    if (instruments().enabled) req.receivedAtMs = BigInt(Date.now());
    try {
      const ack = await this.deps.send(req);
      // The sender has read their own message.
      this.readCursors.advance(conn.principal.userId, ack.conversationId, Number(ack.seq));
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
      if (span) {
        span.setAttributes({ "parley.seq": Number(ack.seq), "parley.duplicate": ack.duplicate });
        span.end();
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      const code = errorCodeOf(ce);
      if (code === ErrorCode.INTERNAL) this.deps.logger.error({ err: ce }, "send failed");
      this.reply(conn, errorFrame(code, ce.rawMessage, ref, s.clientMsgId));
      endSpan(span, ce);
    } finally {
      conn.inFlightSends--;
      if (conn.inFlightSends === 0) conn.sendsSettled();
    }
  }

  private reply(conn: Connection, frame: ReturnType<typeof serverFrame>): void {
    this.stats.framesOut++;
    if (frame.kind.case === "error") this.countErrorFrame(frame.kind.value.code);
    if (!conn.write(frame)) this.slow(conn);
  }

  /** Error frames by code (metrics; attribute sets cached by the instruments). */
  private countErrorFrame(code: ErrorCode): void {
    const m = instruments();
    if (m.enabled) m.countError("frame", ErrorCode[code]?.toLowerCase() ?? String(code));
  }

  private slow(conn: Connection): void {
    this.deps.logger.warn({ userId: conn.principal.userId }, "closing slow consumer");
    conn.socket?.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resync");
  }

  /**
   * DeliveryService.Deliver, envelopes in order. For each: membership joins (those users'
   * connections here subscribe), then the frame (direct to `user_ids`, and published to
   * the conversation's topics), then leaves and deletion (unsubscribe). Direct frames
   * are written corked, once per socket for a run of direct envelopes; a topic envelope
   * first writes out the direct frames before it, so every socket sees envelope order.
   */
  deliver(req: DeliverRequest): DeliverResult {
    const perConn = new Map<Connection, (Uint8Array | string)[]>();
    const absent = new Set<string>();
    const absentTopics = new Set<string>();
    let delivered = 0;
    this.stats.deliverCalls++;
    this.stats.envelopes += req.envelopes.length;
    // Telemetry: each envelope continues its message's trace (a `deliver` span, ended once
    // its frames are written below) and, when measured, records the delivery latency.
    const t = tracing();
    const m = instruments();
    let spans: Span[] | undefined;
    for (const env of req.envelopes) {
      if (t && env.traceparent !== "") {
        const span = startItemSpan(t, "deliver", SpanKind.CONSUMER, env, {
          "parley.gateway.id": this.cfg.id,
          "parley.conversation_id": env.conversationId || env.topicConversationId,
          "parley.seq": Number(env.seq),
          "parley.delivery": env.topicConversationId !== "" ? "topic" : "direct",
        });
        if (span) (spans ??= []).push(span);
      }
      const mu = env.membership;
      const changed = mu !== undefined && mu.conversationId !== "" ? mu.conversationId : undefined;
      if (env.watchersOfUserId !== "") {
        delivered += this.presence.deliverToWatchers(env.watchersOfUserId, env.serverFrame);
        continue;
      }
      if (changed) for (const userId of mu!.joinedUserIds) this.applyMembership(userId, changed, true);
      if (env.serverFrame.length > 0) {
        let json: string | undefined;
        const jsonOf = () => (json ??= encodeServerFrame(fromBinary(ServerFrameSchema, env.serverFrame), "json") as string);
        for (const userId of env.userIds) {
          const conns = this.byUser.get(userId);
          if (!conns) {
            absent.add(userId);
            continue;
          }
          for (const conn of conns) {
            if (conn.principal.deviceId === env.excludeDeviceId || conn.closed) continue;
            const data = conn.encoding === "json" ? jsonOf() : env.serverFrame;
            if (conn.resume) {
              this.hold(conn, data, env.conversationId, env.seq);
              delivered++;
              continue;
            }
            const list = perConn.get(conn);
            if (list) list.push(data);
            else perConn.set(conn, [data]);
          }
        }
        if (env.topicConversationId !== "") {
          delivered += this.writeDirect(perConn);
          this.stats.topicPublishes++;
          const n = this.publish(env.topicConversationId, env.serverFrame, jsonOf, env.excludeDeviceId, env.conversationId, env.seq);
          if (n === undefined) absentTopics.add(env.topicConversationId);
          else delivered += n;
        }
      }
      if (changed) {
        for (const userId of mu!.leftUserIds) this.applyMembership(userId, changed, false);
        if (mu!.deleted) this.deleteTopic(changed);
      }
    }
    delivered += this.writeDirect(perConn);
    this.stats.framesOut += delivered;
    this.stats.framesDelivered += delivered;
    if (m.enabled) {
      const now = Date.now();
      for (const env of req.envelopes) if (env.receivedAtMs > 0n) m.deliveryLatency.record(Math.max(0, now - Number(env.receivedAtMs)));
    }
    if (spans) for (const span of spans) span.end();
    return { deliveredFrames: delivered, absentUserIds: [...absent], absentTopics: [...absentTopics] };
  }

  /** Writes (and clears) the collected direct frames: each ready socket corked once. */
  private writeDirect(perConn: Map<Connection, (Uint8Array | string)[]>): number {
    let delivered = 0;
    for (const [conn, frames] of perConn) {
      delivered += frames.length;
      if (!conn.ready || conn.closed) {
        for (const f of frames) conn.writeEncoded(f);
        continue;
      }
      let ok = true;
      conn.socket!.cork(() => {
        for (const f of frames) ok = conn.writeEncoded(f) && ok;
      });
      if (!ok) this.slow(conn);
    }
    perConn.clear();
    return delivered;
  }

  /**
   * Publishes a group frame to the local subscribers of a conversation, except the
   * sender's device: through the sender's own socket when it is subscribed here (uWS
   * skips the publishing socket), otherwise gateway-wide. The JSON encoding is made only
   * when JSON connections subscribe. Returns the number of recipients, undefined when
   * the conversation has no subscriber here.
   */
  private publish(
    conversationId: string,
    frame: Uint8Array,
    jsonOf: () => string,
    excludeDeviceId: string,
    messageConversationId = "",
    seq = 0n,
  ): number | undefined {
    const st = this.topics.get(conversationId);
    if (!st) return undefined;
    const sender = excludeDeviceId === "" ? undefined : this.byDevice.get(excludeDeviceId);
    let n = 0;
    for (const [subscribers, encoding] of [
      [st.binary, "binary"],
      [st.json, "json"],
    ] as const) {
      if (subscribers.size === 0) continue;
      const data = encoding === "binary" ? frame : jsonOf();
      const topic = topicOf(encoding, conversationId);
      const from = sender?.find((c) => subscribers.has(c));
      if (from) from.socket!.publish(topic, data, encoding === "binary");
      else this.topicBus().publish(topic, data, encoding === "binary");
      n += subscribers.size - (from ? 1 : 0);
    }
    for (const conn of st.waiting) {
      if (conn.principal.deviceId === excludeDeviceId) continue;
      const data = conn.encoding === "json" ? jsonOf() : frame;
      if (conn.resume) this.hold(conn, data, messageConversationId, seq);
      else conn.writeEncoded(data);
      n++;
    }
    return n;
  }

  private topicBus(): TopicBus {
    if (!this.bus) throw new ConnectError("gateway has no topic transport", Code.Internal);
    return this.bus;
  }

  /** A user joined or left a group: their connections here (un)subscribe. */
  private applyMembership(userId: string, conversationId: string, join: boolean): void {
    this.fetching?.get(userId)?.push({ conversationId, join });
    for (const conn of this.byUser.get(userId) ?? []) {
      if (join) this.subscribe(conn, conversationId);
      else this.unsubscribe(conn, conversationId);
    }
  }

  /** A group was deleted: everyone here unsubscribes. */
  private deleteTopic(conversationId: string): void {
    if (this.fetching) for (const ops of this.fetching.values()) ops.push({ conversationId, join: false });
    const st = this.topics.get(conversationId);
    if (!st) return;
    for (const conn of [...st.binary, ...st.json, ...st.waiting]) this.unsubscribe(conn, conversationId);
  }

  /**
   * Subscribes a connection whose group list is known. A ready one subscribes at the
   * socket; one waiting for Hello gets topic frames in `early` until `hello` subscribes
   * it. The first local subscriber of a conversation registers the gateway for it.
   */
  private subscribe(conn: Connection, conversationId: string): void {
    if (conn.closed || !conn.groupsKnown || conn.topics?.has(conversationId)) return;
    (conn.topics ??= new Set()).add(conversationId);
    let st = this.topics.get(conversationId);
    if (!st) {
      this.topics.set(conversationId, (st = { binary: new Set(), json: new Set(), waiting: new Set() }));
      this.pendingTopicRemove.delete(conversationId);
      this.pendingTopicAdd.add(conversationId);
      this.scheduleFlush();
    }
    if (!conn.ready || conn.resume) {
      st.waiting.add(conn);
      return;
    }
    (conn.encoding === "binary" ? st.binary : st.json).add(conn);
    conn.socket!.subscribe(topicOf(conn.encoding, conversationId));
  }

  /** The last local subscriber of a conversation unregisters the gateway for it. */
  private unsubscribe(conn: Connection, conversationId: string): void {
    if (!conn.topics?.delete(conversationId)) return;
    if (conn.topics.size === 0) conn.topics = undefined;
    const st = this.topics.get(conversationId);
    if (!st) return;
    if (!st.waiting.delete(conn) && (conn.encoding === "binary" ? st.binary : st.json).delete(conn)) {
      conn.socket?.unsubscribe(topicOf(conn.encoding, conversationId));
    }
    if (st.binary.size + st.json.size + st.waiting.size > 0) return;
    this.topics.delete(conversationId);
    this.pendingTopicAdd.delete(conversationId);
    this.pendingTopicRemove.add(conversationId);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => void this.queueFlush());
  }

  private queueFlush(): Promise<void> {
    this.flushes = this.flushes.then(() => this.flush()).catch((err: unknown) => this.chainFailed(err, "flush"));
    return this.flushes;
  }

  /**
   * A bug in a flush or refresh must not stop the ones after it (they run in one chain:
   * a rejected link would skip every later one, and no connection would get Hello again).
   */
  private chainFailed(err: unknown, what: string): void {
    this.deps.logger.error({ err }, `registry ${what} failed unexpectedly`);
  }

  /**
   * One registry write for every connection opened or closed since the last flush, one
   * group-list fetch for all users of the new connections, one topic registration for
   * every conversation that got its first local subscriber; then Hello.
   */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    const adds = this.pendingAdd;
    const removes = this.pendingRemove;
    const topicRemoves = [...this.pendingTopicRemove];
    this.pendingAdd = [];
    this.pendingRemove = [];
    this.pendingTopicRemove.clear();
    const gw = this.cfg.id;
    try {
      if (removes.length > 0) await this.deps.registry.remove(gw, removes);
    } catch (err) {
      this.deps.logger.warn({ err, entries: removes.length }, "registry remove failed");
    }
    try {
      if (topicRemoves.length > 0) await this.deps.registry.removeTopics(gw, topicRemoves);
    } catch (err) {
      // The entries expire by themselves (nobody refreshes them).
      this.deps.logger.warn({ err, topics: topicRemoves.length }, "registry removeTopics failed");
    }
    let live = adds.filter((c) => !c.closed);
    if (live.length > 0) {
      try {
        await this.deps.registry.add(
          gw,
          live.map((c) => ({ userId: c.principal.userId, deviceId: c.principal.deviceId })),
        );
      } catch (err) {
        this.deps.logger.warn({ err, connections: live.length }, "registry add failed");
        this.tryAgainLater(live, "registry unavailable: try again later");
        live = [];
      }
    }
    if (live.length > 0) live = await this.subscribeNew(live);
    const topics = [...this.pendingTopicAdd];
    this.pendingTopicAdd.clear();
    if (topics.length > 0) {
      try {
        await this.deps.registry.addTopics(gw, topics);
      } catch (err) {
        this.deps.logger.warn({ err, topics: topics.length }, "registry addTopics failed");
        this.tryAgainLater(live, "registry unavailable: try again later");
        live = [];
        // Still subscribed here (joins of open connections): the next flush or refresh retries.
        for (const t of topics) if (this.topics.has(t) && !this.pendingTopicRemove.has(t)) this.pendingTopicAdd.add(t);
      }
    }
    for (const c of live) {
      if (c.closed) continue;
      try {
        this.hello(c);
      } catch (err) {
        // One connection's failure must not keep the others of this flush from their Hello.
        this.deps.logger.error({ err, userId: c.principal.userId }, "hello failed");
        c.socket?.close(CloseCode.INTERNAL_ERROR, "internal error: reconnect");
      }
    }
  }

  /**
   * Fetches the group lists of the new connections' users (one call), applies the
   * membership changes delivered meanwhile, and subscribes the connections (they get
   * socket-level subscriptions with Hello). Returns the connections still open.
   */
  private async subscribeNew(live: Connection[]): Promise<Connection[]> {
    const userIds = [...new Set(live.map((c) => c.principal.userId))];
    const seen = new Map<string, MembershipOp[]>(userIds.map((u) => [u, []]));
    this.fetching = seen;
    let lists: Map<string, string[]>;
    try {
      const res = await this.deps.groups.listUserGroupIds({ userIds }, { timeoutMs: GROUP_LIST_TIMEOUT_MS });
      lists = new Map(res.users.map((u) => [u.userId, u.conversationIds]));
    } catch (err) {
      this.deps.logger.warn({ err, users: userIds.length }, "listing users' groups failed");
      this.tryAgainLater(live, "groups unavailable: try again later");
      return [];
    } finally {
      this.fetching = undefined;
    }
    const open = live.filter((c) => !c.closed);
    for (const conn of open) {
      const { userId } = conn.principal;
      const groups = new Set(lists.get(userId));
      for (const op of seen.get(userId)!) {
        if (op.join) groups.add(op.conversationId);
        else groups.delete(op.conversationId);
      }
      conn.groupsKnown = true;
      for (const conversationId of groups) this.subscribe(conn, conversationId);
    }
    return open;
  }

  private tryAgainLater(conns: readonly Connection[], reason: string): void {
    for (const c of conns) c.socket?.close(CloseCode.TRY_AGAIN_LATER, reason);
  }

  /**
   * Extends the registry entries of every device registered here, in one call: entries
   * of a gateway that dies stop being refreshed and expire. Queued with the add/remove
   * flushes so it never overtakes them.
   */
  refreshRegistry(): Promise<void> {
    this.flushes = this.flushes.then(() => this.refresh()).catch((err: unknown) => this.chainFailed(err, "refresh"));
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
    if (entries.length > 0) {
      try {
        await this.deps.registry.refresh(this.cfg.id, entries);
      } catch (err) {
        this.deps.logger.warn({ err, entries: entries.length }, "registry refresh failed");
      }
    }
    // Every conversation with a subscriber here and every user whose presence is followed
    // here, in one call (re-creates lost entries too).
    const topics = [...this.topics.keys(), ...this.presence.followedTopics()];
    if (topics.length > 0) {
      try {
        await this.deps.registry.addTopics(this.cfg.id, topics);
      } catch (err) {
        this.deps.logger.warn({ err, topics: topics.length }, "registry topic refresh failed");
      }
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
    if (conn.closed) return;
    const queued = conn.queuedResume;
    if (queued) {
      // A Resume sent before Hello starts now: the topics stay off the socket, their frames are held.
      conn.queuedResume = undefined;
      this.startResume(conn, queued.ref, queued.req);
      return;
    }
    // Topic frames so far waited in `early` (written above); from now on they come from the topics.
    this.subscribeAtSocket(conn);
  }

  /** Moves a ready connection's topics from `waiting` to socket-level subscriptions. */
  private subscribeAtSocket(conn: Connection): void {
    for (const conversationId of conn.topics ?? []) {
      const st = this.topics.get(conversationId)!;
      st.waiting.delete(conn);
      (conn.encoding === "binary" ? st.binary : st.json).add(conn);
      conn.socket!.subscribe(topicOf(conn.encoding, conversationId));
    }
  }

  /** The transport's send buffer of `conn` shrank (uWS `drain`): a resume waiting for room goes on. */
  drained(conn: Connection): void {
    const w = conn.drainWaiter;
    conn.drainWaiter = undefined;
    w?.();
  }

  /**
   * A Resume frame. One at a time per connection (a second one while it runs is
   * LIMIT_EXCEEDED); a malformed cursor is INVALID_ARGUMENT; before Hello it waits for it.
   */
  private onResume(conn: Connection, ref: number, frame: Parameters<typeof parseResume>[0]): void {
    if (conn.resume || conn.queuedResume) {
      this.reply(conn, errorFrame(ErrorCode.LIMIT_EXCEEDED, "a resume is already running on this connection", ref));
      return;
    }
    let req: ResumeRequest;
    try {
      req = parseResume(frame);
    } catch (err) {
      this.reply(conn, errorFrame(ErrorCode.INVALID_ARGUMENT, ConnectError.from(err).rawMessage, ref));
      return;
    }
    if (!this.resumer) {
      this.reply(conn, errorFrame(ErrorCode.UNAVAILABLE, "resume is not available on this gateway", ref));
      return;
    }
    if (!conn.ready) {
      conn.queuedResume = { ref, req };
      return;
    }
    this.startResume(conn, ref, req);
  }

  /**
   * Starts holding the connection's live frames (its topics leave the socket: their
   * frames come through `publish` into the hold), then runs the resume.
   */
  private startResume(conn: Connection, ref: number, req: ResumeRequest): void {
    const state = new ResumeState(ref);
    conn.resume = state;
    for (const conversationId of conn.topics ?? []) {
      const st = this.topics.get(conversationId)!;
      if ((conn.encoding === "binary" ? st.binary : st.json).delete(conn)) {
        conn.socket!.unsubscribe(topicOf(conn.encoding, conversationId));
      }
      st.waiting.add(conn);
    }
    void this.resumer!.run(conn, state, req, (c) => this.slow(c)).then((complete) => this.finishResume(conn, state, complete));
  }

  /** A live frame for a resuming connection: held; past the bound the resume gives up (complete=false). */
  private hold(conn: Connection, data: Uint8Array | string, conversationId: string, seq: bigint): void {
    const state = conn.resume!;
    state.held.push({ data, conversationId, seq: Number(seq) });
    state.heldBytes += frameBytes(data);
    if (state.heldBytes > this.cfg.resumeHoldBytes) {
      this.deps.logger.info({ userId: conn.principal.userId, held: state.held.length }, "resume hold overflow: finishing incomplete");
      this.finishResume(conn, state, false);
    }
  }

  /**
   * Ends a resume, synchronously: resume_done, then the held frames minus those the
   * resume sent, then the topics subscribe at the socket (no topic frame can fall
   * between the hold and the subscription, none comes twice).
   */
  private finishResume(conn: Connection, state: ResumeState, complete: boolean): void {
    if (state.done) return;
    state.done = true;
    if (conn.resume !== state || conn.closed) return;
    conn.resume = undefined;
    const done = serverFrame({
      ref: state.ref,
      kind: { case: "resumeDone", value: { complete, messages: state.messages, conversations: state.sent.size } },
    });
    let ok = true;
    conn.socket!.cork(() => {
      ok = conn.write(done);
      for (const f of state.held) if (!state.alreadySent(f)) ok = conn.writeEncoded(f.data) && ok;
    });
    // Held frames were counted when delivered.
    this.stats.framesOut += 1 + state.messages;
    this.subscribeAtSocket(conn);
    if (!ok) this.slow(conn);
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

  /** Takes no new connection from now on (the first step of a drain, core/drain.ts). */
  stopAccepting(): void {
    this.draining = true;
  }

  /** The open connections, a snapshot. */
  openConnections(): Connection[] {
    return [...this.byUser.values()].flat();
  }

  /**
   * Closes every connection still open with 4012 (DRAINING) so clients reconnect
   * elsewhere, unregisters them, and stops the background work (presence, cursors,
   * receipts) after its last flush. core/drain.ts closes them gently before this.
   */
  async drain(): Promise<void> {
    this.draining = true;
    clearInterval(this.refreshTimer);
    this.unobserveMetrics();
    const all = this.openConnections();
    for (const c of all) c.socket?.close(CloseCode.DRAINING, DRAINING_REASON);
    for (const c of all) this.close(c);
    await this.queueFlush();
    await this.presence.stop();
    this.readCursors.flush();
    await Promise.all([this.readCursors.idle(), this.receipts.stop()]);
  }
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

function drop<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (!list) return;
  const rest = list.filter((v) => v !== value);
  if (rest.length === 0) map.delete(key);
  else map.set(key, rest);
}
