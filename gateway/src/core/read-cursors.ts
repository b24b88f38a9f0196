import type { Logger } from "../../../lib/logger.js";
import { CoalescingQueue } from "./coalescing-queue.js";

export interface ReadCursor {
  userId: string;
  conversationId: string;
  seq: number;
}

/** Sends one batch of cursors (GroupsService.AdvanceReadCursors). */
export type AdvanceReadCursors = (cursors: ReadCursor[]) => Promise<void>;

/** What GroupsService.AdvanceReadCursors accepts per call. */
export const MAX_CURSORS_PER_CALL = 1000;

/**
 * A sender's own messages count as read: per (user, conversation) only the highest seq
 * waits, sent in batches (see CoalescingQueue: one call in flight, calls at least
 * `minIntervalMs` apart).
 */
export class ReadCursorQueue extends CoalescingQueue<ReadCursor> {
  constructor(call: AdvanceReadCursors, logger: Logger, minIntervalMs = 0, maxPerCall = MAX_CURSORS_PER_CALL) {
    super("advancing read cursors", call, (a, b) => (b.seq > a.seq ? b : a), logger, minIntervalMs, maxPerCall);
  }

  advance(userId: string, conversationId: string, seq: number): void {
    this.put(`${userId} ${conversationId}`, { userId, conversationId, seq });
  }
}
