import type { Client } from "@connectrpc/connect";
import { ServerFrameSchema } from "../../../gen/parley/client/v1/frames_pb.js";
import { ConversationKind, type CursorMove, type GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import { CoalescingQueue } from "./coalescing-queue.js";
import type { RouterEphemeral } from "./gateway-core.js";
import { fastToBinary } from "../../../lib/fast-binary.js";

/** Groups up to this size tell senders about receipts live; larger ones are asked (GetReceipts). */
export const LIVE_RECEIPTS_MAX_MEMBERS = 100;
/** The newest messages of a read range whose senders are told (a long jump tells the latest ones). */
const SENDERS_LOOKBACK = 200;

export interface Receipt {
  userId: string;
  deviceId: string;
  conversationId: string;
  deliveredSeq: number;
  readSeq: number;
}

export interface ReceiptDeps {
  groups: Pick<Client<typeof GroupsService>, "advanceCursors">;
  messagestore?: Pick<Client<typeof MessageStoreService>, "getHeads" | "getRange">;
  sendEphemeral?: RouterEphemeral;
  logger: Logger;
}

/**
 * Delivered and read receipts. Devices report cursors (frame `receipt`); the gateway
 * keeps only the highest per device and conversation and stores them in batches
 * (CoalescingQueue: a few calls a second, never one per message). For every cursor that
 * moved, a `receipt` event goes, through the router, to:
 * - the user's other devices when the read cursor moved (unread clears everywhere);
 * - in a 1:1, the other member;
 * - in a group of up to 100 members, the senders of the messages the move covers.
 * Larger groups are not told live (a read there would be thousands of events): senders ask
 * ChatService.GetReceipts ("read by N of M").
 */
export class ReceiptQueue {
  private readonly queue: CoalescingQueue<Receipt>;

  constructor(
    private readonly deps: ReceiptDeps,
    minIntervalMs: number,
  ) {
    this.queue = new CoalescingQueue<Receipt>(
      "storing receipts",
      (batch) => this.store(batch),
      (a, b) => ({ ...a, deliveredSeq: Math.max(a.deliveredSeq, b.deliveredSeq), readSeq: Math.max(a.readSeq, b.readSeq) }),
      deps.logger,
      minIntervalMs,
    );
  }

  get calls(): number {
    return this.queue.calls;
  }

  report(r: Receipt): void {
    this.queue.put(`${r.deviceId} ${r.conversationId}`, r);
  }

  async stop(): Promise<void> {
    this.queue.flush();
    await this.queue.idle();
  }

  private async store(batch: Receipt[]): Promise<void> {
    const ms = this.deps.messagestore;
    if (!ms) return;
    // Cursors never pass the newest message: the heads of the batch's conversations.
    const ids = [...new Set(batch.map((r) => r.conversationId))];
    const { heads } = await ms.getHeads({ conversationIds: ids });
    const last = new Map(heads.map((h) => [h.conversationId, h.lastSeq]));
    const { moves } = await this.deps.groups.advanceCursors({
      cursors: batch.map((r) => ({
        userId: r.userId,
        deviceId: r.deviceId,
        conversationId: r.conversationId,
        deliveredSeq: BigInt(r.deliveredSeq),
        readSeq: BigInt(r.readSeq),
        maxSeq: last.get(r.conversationId) ?? 0n,
      })),
    });
    await Promise.all(moves.map((m) => this.tell(m)));
  }

  /** Sends one move's event to whoever should hear of it. */
  private async tell(m: CursorMove): Promise<void> {
    const send = this.deps.sendEphemeral;
    if (!send) return;
    const readMoved = m.readTo > m.readFrom;
    const deliveredMoved = m.deliveredTo > m.deliveredFrom;
    const targets = new Set<string>();
    if (readMoved) targets.add(m.userId);
    if (m.kind === ConversationKind.DIRECT) {
      for (const u of m.memberIds) if (u !== m.userId) targets.add(u);
    } else if (m.memberCount <= LIVE_RECEIPTS_MAX_MEMBERS) {
      for (const u of await this.senders(m, readMoved, deliveredMoved)) targets.add(u);
    }
    if (targets.size === 0) return;
    const frame = fastToBinary(
      ServerFrameSchema,
      {
        kind: {
          case: "receipt",
          value: {
            conversationId: m.conversationId,
            userId: m.userId,
            deviceId: m.deviceId,
            deliveredSeq: deliveredMoved ? m.deliveredTo : 0n,
            readSeq: readMoved ? m.readTo : 0n,
          },
        },
      },
    );
    await send({ senderId: m.userId, senderDeviceId: m.deviceId, conversationId: m.conversationId, serverFrame: frame, userIds: [...targets] });
  }

  /** The other senders of the newest messages a move covers. */
  private async senders(m: CursorMove, readMoved: boolean, deliveredMoved: boolean): Promise<string[]> {
    const from = Math.min(readMoved ? Number(m.readFrom) : Infinity, deliveredMoved ? Number(m.deliveredFrom) : Infinity);
    const to = Math.max(Number(m.readTo), Number(m.deliveredTo));
    if (!Number.isFinite(from) || to <= from) return [];
    const after = Math.max(from, to - SENDERS_LOOKBACK);
    const { messages } = await this.deps.messagestore!.getRange({ conversationId: m.conversationId, afterSeq: BigInt(after), limit: to - after });
    const out = new Set<string>();
    for (const msg of messages) if (msg.senderId !== m.userId && msg.seq <= BigInt(to)) out.add(msg.senderId);
    return [...out];
  }
}
