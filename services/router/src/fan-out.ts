import type { Client } from "@connectrpc/connect";
import { ServerFrameSchema } from "../../../gen/parley/client/v1/frames_pb.js";
import type { DeliveryService } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import type { Message } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { clientMessage } from "../../../lib/client-message.js";
import type { Logger } from "../../../lib/logger.js";
import { instruments } from "../../../lib/telemetry/metrics.js";
import { contextWith, inBatchSpan, traceFields, tracing, type Span, type TraceFields } from "../../../lib/telemetry/tracing.js";
import { gatewaysOf, type ConnectionRegistry, type DeviceLocation } from "../../../lib/registry/connection-registry.js";
import { GatewayOutbox } from "./gateway-outbox.js";
import type { ConversationRoute } from "./membership-cache.js";
import { SeqOrder } from "./seq-order.js";
import { fastToBinary } from "../../../lib/fast-binary.js";

/** Who joined or left with an event message: gateways (un)subscribe their devices. */
export interface MembershipChange {
  joined: readonly string[];
  left: readonly string[];
  deleted: boolean;
}

export interface FanOutItem {
  message: Message;
  route: ConversationRoute;
  /** The sending device: it got the ack, so it does not get the message too. */
  senderDeviceId: string;
  membership?: MembershipChange;
  /** When the sender's gateway received it (ms since the epoch; 0/absent: unknown), for the delivery latency metric. */
  receivedAtMs?: bigint;
  /** The message's `fan-out` span (tracing): ended once its envelopes are queued; they carry its context. */
  span?: Span;
}

/** An event that is delivered like a message but never stored (typing). */
export interface EphemeralItem {
  conversationId: string;
  senderId: string;
  senderDeviceId: string;
  route: ConversationRoute;
  /** The encoded ServerFrame for the recipients. */
  serverFrame: Uint8Array;
}

/** What dispatch works on: a stored message or an ephemeral event. */
interface Outgoing {
  conversationId: string;
  senderId: string;
  senderDeviceId: string;
  route: ConversationRoute;
  frame(): Uint8Array;
  /** Stored messages: their sequence number (gateways de-duplicate by it) and the message. */
  seq: bigint;
  message?: Message;
  membership?: MembershipChange;
  receivedAtMs: bigint;
  span?: Span;
}

function outgoing(item: FanOutItem): Outgoing {
  let frame: Uint8Array | undefined;
  return {
    conversationId: item.message.conversationId,
    senderId: item.message.senderId,
    senderDeviceId: item.senderDeviceId,
    route: item.route,
    frame: () => (frame ??= encodeMessageFrame(item.message)),
    seq: item.message.seq,
    message: item.message,
    membership: item.membership,
    receivedAtMs: item.receivedAtMs ?? 0n,
    span: item.span,
  };
}

function ephemeral(e: EphemeralItem): Outgoing {
  return { ...e, frame: () => e.serverFrame, seq: 0n, receivedAtMs: 0n };
}

const NO_TRACE: TraceFields = { traceparent: "", tracestate: "" };

/** What every envelope of a message carries for its trace and latency (made once per message; nothing when unmeasured). */
function envelopeTelemetry(item: Outgoing): (TraceFields & { receivedAtMs: bigint }) | undefined {
  if (!item.span && item.receivedAtMs === 0n) return undefined;
  return { ...(item.span ? traceFields(item.span) : NO_TRACE), receivedAtMs: item.receivedAtMs };
}

/** Ends a message's fan-out span with the number of gateways it went to, and records that size. */
function fannedOut(item: Outgoing, gateways: number): void {
  if (!item.message) return;
  instruments().fanoutGateways.record(gateways);
  if (item.span) {
    item.span.setAttribute("parley.fanout.gateways", gateways);
    item.span.end();
  }
}

export interface FanOutStats {
  messages: number;
  /** Ephemeral events fanned out, and refused by SendEphemeral (not members). */
  ephemeral: number;
  ephemeralRefused: number;
  registryLookups: number;
  deliverCalls: number;
  /** Envelopes for group topics (one per gateway per group message). */
  topicEnvelopes: number;
}

/** At most this many messages share one registry lookup. */
const MAX_BATCH = 256;

/**
 * Delivers stored messages to the gateways that hold the members' devices. Messages
 * enter in the order the message store acknowledged them and leave in that order:
 * one registry round trip serves every message queued meanwhile, then each message
 * becomes one envelope per involved gateway, encoded once for all its recipients there.
 *
 * A 1:1 message names its recipients (the registry says where each user's devices
 * are). A group message names none: the registry's topic index says which gateways hold
 * subscribers of the conversation, and each gets one envelope for its topic, so a
 * message to a group of 100,000 costs the router O(gateways), not O(members).
 */
export class FanOut {
  private queue: Outgoing[] = [];
  private running = false;
  private idleWaiters: (() => void)[] = [];
  private readonly outboxes = new Map<string, GatewayOutbox>();
  readonly stats: FanOutStats = { messages: 0, ephemeral: 0, ephemeralRefused: 0, registryLookups: 0, deliverCalls: 0, topicEnvelopes: 0 };

  constructor(
    private readonly registry: ConnectionRegistry,
    private readonly gateway: (gatewayId: string) => Client<typeof DeliveryService> | undefined,
    private readonly logger: Logger,
    /** How long a message waits for a predecessor that has not come back from the store yet. */
    reorderHoldMs = 100,
  ) {
    this.order = new SeqOrder((o) => this.dispatchInOrder(o.item), reorderHoldMs);
  }

  private readonly order: SeqOrder<{ conversationId: string; seq: number; item: FanOutItem }>;

  /** A stored message; fan-out happens in each conversation's sequence order. */
  enqueue(item: FanOutItem): void {
    this.order.push({ conversationId: item.message.conversationId, seq: Number(item.message.seq), item });
  }

  /** An ephemeral event: no sequence number, so no ordering wait; dispatched with the next batch. */
  enqueueEphemeral(item: EphemeralItem): void {
    this.queue.push(ephemeral(item));
    if (!this.running) void this.run();
  }

  private dispatchInOrder(item: FanOutItem): void {
    this.queue.push(outgoing(item));
    if (!this.running) void this.run();
  }

  /** Resolves once everything enqueued so far was handed to its gateways. */
  async idle(): Promise<void> {
    this.order.flush();
    if (this.running) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await Promise.all([...this.outboxes.values()].map((o) => o.idle()));
  }

  private async run(): Promise<void> {
    this.running = true;
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH);
      try {
        // Tracing: the registry lookup is one call for the batch, traced in a span under
        // the first message's fan-out span and linked to the others'.
        if (tracing()) await inBatchSpan("fan-out batch", batch.map((o) => o.span && contextWith(o.span)), () => this.dispatch(batch));
        else await this.dispatch(batch);
      } catch (err) {
        // Registry down: the messages are stored; devices catch up from history.
        this.logger.warn({ err, messages: batch.length }, "fan-out failed");
        for (const o of batch) o.span?.end();
      }
    }
    this.running = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async dispatch(batch: Outgoing[]): Promise<void> {
    const users = new Set<string>();
    const topics = new Set<string>();
    for (const item of batch) {
      if (item.route.kind === "direct") for (const u of item.route.memberIds) users.add(u);
      else topics.add(item.conversationId);
      for (const u of item.membership?.joined ?? []) users.add(u);
      for (const u of item.membership?.left ?? []) users.add(u);
    }
    this.stats.registryLookups++;
    const [devices, topicGateways] = await Promise.all([
      users.size > 0 ? this.registry.lookupDevices([...users]) : new Map<string, DeviceLocation[]>(),
      topics.size > 0 ? this.registry.lookupTopics([...topics]) : new Map<string, string[]>(),
    ]);
    const where = gatewaysOf(devices);
    for (const item of batch) {
      if (item.message) this.stats.messages++;
      else this.stats.ephemeral++;
      if (item.route.kind === "direct") this.dispatchDirect(item, where, devices);
      else this.dispatchGroup(item, where, topicGateways.get(item.conversationId) ?? []);
    }
  }

  private dispatchDirect(item: Outgoing, where: Map<string, string[]>, devices: Map<string, DeviceLocation[]>): void {
    const byGateway = new Map<string, string[]>();
    for (const userId of item.route.memberIds) {
      const gateways = where.get(userId);
      if (!gateways) continue;
      for (const gw of gateways) {
        // A gateway whose only device of the sender is the sending device: nothing to deliver there.
        if (userId === item.senderId && onlySendingDevice(devices.get(userId)!, gw, item.senderDeviceId)) continue;
        const list = byGateway.get(gw);
        if (list) list.push(userId);
        else byGateway.set(gw, [userId]);
      }
    }
    if (byGateway.size > 0) {
      const serverFrame = item.frame();
      const telemetry = envelopeTelemetry(item);
      for (const [gatewayId, userIds] of byGateway) {
        const outbox = this.outbox(gatewayId);
        if (outbox) {
          outbox.push({
            userIds,
            serverFrame,
            excludeDeviceId: item.senderDeviceId,
            conversationId: item.message ? item.conversationId : "",
            seq: item.seq,
            ...telemetry,
          });
        } else void this.forget(gatewayId, userIds, []);
      }
    }
    fannedOut(item, byGateway.size);
  }

  /**
   * One envelope per gateway holding subscribers of the conversation, plus the gateways
   * of users who joined or left with this message (their devices (un)subscribe there).
   */
  private dispatchGroup(item: Outgoing, where: Map<string, string[]>, subscribed: readonly string[]): void {
    const conversationId = item.conversationId;
    const gateways = new Set(subscribed);
    const m = item.membership;
    for (const u of m?.joined ?? []) for (const gw of where.get(u) ?? []) gateways.add(gw);
    for (const u of m?.left ?? []) for (const gw of where.get(u) ?? []) gateways.add(gw);
    if (gateways.size === 0) return fannedOut(item, 0);
    const serverFrame = item.frame();
    const telemetry = envelopeTelemetry(item);
    const membership = m && {
      conversationId,
      joinedUserIds: [...m.joined],
      leftUserIds: [...m.left],
      deleted: m.deleted,
    };
    for (const gatewayId of gateways) {
      const outbox = this.outbox(gatewayId);
      if (!outbox) {
        void this.forget(gatewayId, [], [conversationId]);
        continue;
      }
      this.stats.topicEnvelopes++;
      outbox.push({
        topicConversationId: conversationId,
        serverFrame,
        excludeDeviceId: item.senderDeviceId,
        membership,
        conversationId: item.message ? conversationId : "",
        seq: item.seq,
        ...telemetry,
      });
    }
    fannedOut(item, gateways.size);
  }

  private outbox(gatewayId: string): GatewayOutbox | undefined {
    let outbox = this.outboxes.get(gatewayId);
    if (!outbox) {
      const client = this.gateway(gatewayId);
      if (!client) return undefined;
      outbox = new GatewayOutbox(gatewayId, client, (gw, u, t) => void this.forget(gw, u, t), this.logger, this.stats);
      this.outboxes.set(gatewayId, outbox);
    }
    return outbox;
  }

  /**
   * Removes registry entries that point at a gateway that is gone or does not hold the
   * users (or has no subscriber of the topics).
   */
  private async forget(gatewayId: string, userIds: string[], topics: string[]): Promise<void> {
    try {
      await Promise.all([
        userIds.length > 0 && this.registry.removeUsers(gatewayId, userIds),
        topics.length > 0 && this.registry.removeTopics(gatewayId, topics),
      ]);
    } catch (err) {
      this.logger.warn({ err, gatewayId }, "registry cleanup failed");
    }
  }
}

/** Whether the user's only device on `gatewayId` is `deviceId`. */
function onlySendingDevice(devices: readonly DeviceLocation[], gatewayId: string, deviceId: string): boolean {
  return devices.every((d) => d.gatewayId !== gatewayId || d.deviceId === deviceId);
}

/** The frame every recipient device gets, encoded once per message. */
export function encodeMessageFrame(m: Message): Uint8Array {
  return fastToBinary(ServerFrameSchema, { kind: { case: "message", value: clientMessage(m) } });
}
