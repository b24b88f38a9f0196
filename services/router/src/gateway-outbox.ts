import type { Client } from "@connectrpc/connect";
import type { DeliveryService, EnvelopeSchema } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Logger } from "../../../lib/logger.js";
import { tracedBatch } from "../../../lib/telemetry/tracing.js";

export type EnvelopeInit = MessageInitShape<typeof EnvelopeSchema>;

/** At most this many envelopes in one Deliver call. */
const MAX_BATCH = 512;

/**
 * Frames bound for one gateway. At most one Deliver is in flight; envelopes that
 * arrive meanwhile go out together in the next call. That keeps them in order (a
 * conversation's messages reach a device in sequence order) and turns load into
 * bigger batches instead of more calls.
 */
export class GatewayOutbox {
  private queue: EnvelopeInit[] = [];
  private inFlight = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly gatewayId: string,
    private readonly client: Client<typeof DeliveryService>,
    private readonly onAbsent: (gatewayId: string, userIds: string[], topics: string[]) => void,
    private readonly logger: Logger,
    private readonly stats: { deliverCalls: number },
  ) {}

  push(envelope: EnvelopeInit): void {
    this.queue.push(envelope);
    if (!this.inFlight) void this.drain();
  }

  /** Resolves when nothing is queued or in flight (tests, shutdown). */
  idle(): Promise<void> {
    if (!this.inFlight && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async drain(): Promise<void> {
    this.inFlight = true;
    while (this.queue.length > 0) {
      const batch = this.queue.length <= MAX_BATCH ? this.queue : this.queue.slice(0, MAX_BATCH);
      this.queue = this.queue.length <= MAX_BATCH ? [] : this.queue.slice(MAX_BATCH);
      this.stats.deliverCalls++;
      try {
        // Tracing: the call is traced under the first envelope's message, linked to the others.
        const res = await tracedBatch("deliver batch", batch, () => this.client.deliver({ envelopes: batch }));
        if (res.absentUserIds.length > 0 || res.absentTopics.length > 0) {
          this.onAbsent(this.gatewayId, res.absentUserIds, res.absentTopics);
        }
      } catch (err) {
        // The gateway is gone or broken: its devices are offline for these messages
        // (they are stored; devices catch up from history) and its entries are stale.
        this.logger.warn({ err, gatewayId: this.gatewayId, envelopes: batch.length }, "deliver failed");
        const users = new Set<string>();
        const topics = new Set<string>();
        for (const e of batch) {
          for (const u of e.userIds ?? []) users.add(u);
          if (e.topicConversationId) topics.add(e.topicConversationId);
        }
        this.onAbsent(this.gatewayId, [...users], [...topics]);
      }
    }
    this.inFlight = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
