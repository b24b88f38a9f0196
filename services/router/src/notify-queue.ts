import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { Message } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import {
  ConversationKind,
  StoredMessagesSchema,
  type NotifyService,
  type StoredMessages,
} from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import { detached } from "../../../lib/telemetry/tracing.js";
import type { ConversationRoute } from "./membership-cache.js";

const PREVIEW_CHARS = 120;
/** Items per MessagesStored call (the RPC's limit). */
const MAX_PER_CALL = 1000;

export interface NotifyQueueOptions {
  /** Most conversations waiting to be handed over; beyond it the oldest are dropped (counted, logged). */
  maxConversations: number;
  retryBaseMs: number;
  retryMaxMs: number;
  callTimeoutMs: number;
}

export interface NotifyQueueStats {
  handedOver: number;
  calls: number;
  failedCalls: number;
  dropped: number;
}

/**
 * Hands every stored chat message to notify, which decides who gets a push. Off the
 * send path: a message is acknowledged once stored, and its push summary waits here.
 * Summaries are merged per conversation (newest message, count, recipients) so a busy
 * conversation costs one item per call however many messages it had, and one call
 * carries up to 1,000 conversations; one call is in flight at a time. A failed call is
 * retried with exponential backoff (one timer for the queue, none per item); the
 * summaries of a crashed router are lost (their messages are stored and delivered,
 * only their push is not).
 */
export class NotifyQueue {
  private pending = new Map<string, StoredMessages>();
  private running = false;
  private failures = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  readonly stats: NotifyQueueStats = { handedOver: 0, calls: 0, failedCalls: 0, dropped: 0 };

  constructor(
    private readonly notify: Client<typeof NotifyService>,
    private readonly logger: Logger,
    private readonly o: NotifyQueueOptions,
  ) {}

  /** A newly stored message (not a resend); event messages are not pushed. */
  add(m: Message, route: ConversationRoute): void {
    if (m.event.length > 0 || this.closed) return;
    const item = create(StoredMessagesSchema, {
      conversationId: m.conversationId,
      kind: route.kind === "direct" ? ConversationKind.DIRECT : ConversationKind.GROUP,
      seq: m.seq,
      messageId: m.messageId,
      senderId: m.senderId,
      preview: [...m.body].slice(0, PREVIEW_CHARS).join(""),
      count: 1,
      recipientIds: route.kind === "direct" ? route.memberIds.filter((u) => u !== m.senderId) : [],
      firstStoredAt: m.sentAt ?? timestampFromMs(Date.now()),
    });
    if (!merge(this.pending, item) && this.pending.size > this.o.maxConversations) this.dropOldest();
    if (!this.running && !this.timer) void this.run();
  }

  get size(): number {
    return this.pending.size;
  }

  /** Resolves when nothing is pending or in flight (or the queue is waiting to retry). */
  idle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** One last attempt to hand over what is pending, then stops. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.idle();
    if (this.pending.size > 0) await this.run();
    if (this.pending.size > 0) this.logger.warn({ conversations: this.pending.size }, "push summaries not handed to notify at shutdown");
  }

  private async run(): Promise<void> {
    this.running = true;
    this.timer = undefined;
    try {
      while (this.pending.size > 0) {
        const batch: StoredMessages[] = [];
        for (const [id, item] of this.pending) {
          batch.push(item);
          this.pending.delete(id);
          if (batch.length === MAX_PER_CALL) break;
        }
        this.stats.calls++;
        try {
          // Off the message path: not traced under whatever request started this loop.
          await detached(() => this.notify.messagesStored({ messages: batch }, { timeoutMs: this.o.callTimeoutMs }));
          this.stats.handedOver += batch.reduce((n, b) => n + b.count, 0);
          this.failures = 0;
        } catch (err) {
          this.stats.failedCalls++;
          this.failures++;
          this.requeue(batch);
          if (this.closed) return;
          const delay = Math.min(this.o.retryMaxMs, this.o.retryBaseMs * 2 ** Math.min(this.failures - 1, 20));
          this.logger.warn({ err, conversations: batch.length, retryInMs: delay }, "handing messages to notify failed");
          this.timer = setTimeout(() => void this.run(), delay);
          this.timer.unref();
          return;
        }
      }
    } finally {
      this.running = false;
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Puts a failed batch back in front of what arrived meanwhile, merged per conversation. */
  private requeue(batch: StoredMessages[]): void {
    const newer = this.pending;
    this.pending = new Map(batch.map((b) => [b.conversationId, b]));
    for (const item of newer.values()) merge(this.pending, item);
    while (this.pending.size > this.o.maxConversations) this.dropOldest();
  }

  private dropOldest(): void {
    const oldest = this.pending.keys().next();
    if (oldest.done) return;
    this.pending.delete(oldest.value);
    if (this.stats.dropped++ % 1000 === 0) {
      this.logger.warn({ dropped: this.stats.dropped, max: this.o.maxConversations }, "notify queue full: push summaries dropped");
    }
  }
}

/** Adds `item` to its conversation's summary in `into`; whether there was one. */
function merge(into: Map<string, StoredMessages>, item: StoredMessages): boolean {
  const prev = into.get(item.conversationId);
  if (!prev) {
    into.set(item.conversationId, item);
    return false;
  }
  prev.count += item.count;
  if (item.seq > prev.seq) Object.assign(prev, { seq: item.seq, messageId: item.messageId, senderId: item.senderId, preview: item.preview });
  for (const u of item.recipientIds) if (!prev.recipientIds.includes(u)) prev.recipientIds.push(u);
  if (item.firstStoredAt && prev.firstStoredAt && timestampMs(item.firstStoredAt) < timestampMs(prev.firstStoredAt)) {
    prev.firstStoredAt = item.firstStoredAt;
  }
  return true;
}
