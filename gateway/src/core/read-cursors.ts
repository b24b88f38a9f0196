import type { Logger } from "../../../lib/logger.js";

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
 * Coalesces read-cursor advances (a sender's own messages count as read): per (user,
 * conversation) only the highest seq is kept; at most one call is in flight, calls start
 * at least `minIntervalMs` apart, and everything that arrives meanwhile leaves together
 * in the next one. So a busy gateway makes a few calls a second, never one per message;
 * a cursor is at most about `minIntervalMs` behind. `flush()` cuts the wait short
 * (shutdown). A failed call is logged and dropped (cursors only move forward: the next
 * message of that user moves it anyway).
 */
export class ReadCursorQueue {
  /** `userId conversationId` → highest seq not yet sent. */
  private pending = new Map<string, ReadCursor>();
  private busy = false;
  private idleWaiters: (() => void)[] = [];
  private pause: { timer: NodeJS.Timeout; wake: () => void } | undefined;
  private lastCallAt = Number.NEGATIVE_INFINITY;
  /** Set by flush(): no more waiting for the interval. */
  private flushing = false;
  /** Calls made so far (tests and metrics). */
  calls = 0;

  constructor(
    private readonly call: AdvanceReadCursors,
    private readonly logger: Logger,
    private readonly minIntervalMs = 0,
    private readonly maxPerCall = MAX_CURSORS_PER_CALL,
  ) {}

  advance(userId: string, conversationId: string, seq: number): void {
    const key = `${userId} ${conversationId}`;
    const cur = this.pending.get(key);
    if (cur && cur.seq >= seq) return;
    this.pending.set(key, { userId, conversationId, seq });
    if (this.busy) return;
    this.busy = true;
    // Let the rest of this turn's acks join the first call.
    setImmediate(() => void this.drain());
  }

  /** Sends what is queued without waiting for the interval. */
  flush(): void {
    this.flushing = true;
    if (!this.pause) return;
    clearTimeout(this.pause.timer);
    this.pause.wake();
  }

  /** Resolves once nothing is queued or in flight. */
  idle(): Promise<void> {
    return this.busy ? new Promise((resolve) => this.idleWaiters.push(resolve)) : Promise.resolve();
  }

  private async drain(): Promise<void> {
    while (this.pending.size > 0) {
      const wait = this.lastCallAt + this.minIntervalMs - performance.now();
      if (wait > 0 && !this.flushing) {
        await new Promise<void>((wake) => {
          this.pause = { timer: setTimeout(wake, wait), wake };
        });
        this.pause = undefined;
      }
      this.lastCallAt = performance.now();
      const batch: ReadCursor[] = [];
      for (const [key, c] of this.pending) {
        batch.push(c);
        this.pending.delete(key);
        if (batch.length === this.maxPerCall) break;
      }
      this.calls++;
      try {
        await this.call(batch);
      } catch (err) {
        this.logger.warn({ err, cursors: batch.length }, "advancing read cursors failed");
      }
    }
    this.busy = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
