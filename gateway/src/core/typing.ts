/** How long after a forwarded typing event the next one of the same user and conversation is dropped. */
export const TYPING_WINDOW_MS = 3000;
/** How long receivers show an indicator without a new event. */
export const TYPING_EXPIRES_MS = 5000;

interface Last {
  atMs: number;
  stopped: boolean;
}

/**
 * Rate limit of typing events, per user and conversation on this gateway: a "typing"
 * event is forwarded when nothing was forwarded for the last window; a "stopped" event
 * when the last forwarded one was "typing" (so receivers clear the indicator). So at
 * most two events per window, whatever a client sends; the rest are dropped and counted.
 * Memory is bounded by the users typing right now: entries are kept in insertion order
 * (re-inserted on use) and the expired ones at the front are swept on each call, so
 * there is no timer at all.
 */
export class TypingGate {
  private readonly last = new Map<string, Last>();
  /** Events dropped by the rate limit (a flood), for stats and tests. */
  dropped = 0;
  forwarded = 0;

  constructor(
    private readonly clock: () => number,
    private readonly windowMs = TYPING_WINDOW_MS,
  ) {}

  allow(userId: string, conversationId: string, stopped: boolean): boolean {
    const now = this.clock();
    this.sweep(now);
    const key = `${userId} ${conversationId}`;
    const prev = this.last.get(key);
    const ok = stopped ? prev !== undefined && !prev.stopped : prev === undefined || now - prev.atMs >= this.windowMs;
    if (!ok) {
      this.dropped++;
      return false;
    }
    this.forwarded++;
    this.last.delete(key);
    this.last.set(key, { atMs: now, stopped });
    return true;
  }

  /** Entries that are too old to matter (a new event would pass anyway). */
  private sweep(now: number): void {
    for (const [key, v] of this.last) {
      if (now - v.atMs < Math.max(this.windowMs, TYPING_EXPIRES_MS)) break;
      this.last.delete(key);
    }
  }

  get size(): number {
    return this.last.size;
  }
}
