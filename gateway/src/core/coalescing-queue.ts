import type { Logger } from "../../../lib/logger.js";

/**
 * Coalesces updates by key and sends them in batches: an update to a key that is still
 * waiting is merged into it (e.g. keep the highest cursor); at most one call is in
 * flight; calls start at least `minIntervalMs` apart; everything that arrives meanwhile
 * leaves together in the next call (at most `maxPerCall` per call). So a busy gateway
 * makes a few calls a second, never one per update, and an update waits at most about
 * `minIntervalMs`. `flush()` cuts the wait short (shutdown). A failed call is logged
 * and dropped: these are cursors, which only move forward, so the next update repairs it.
 * One timer at most, for the whole gateway, only while something waits.
 */
export class CoalescingQueue<V> {
  private pending = new Map<string, V>();
  private busy = false;
  private idleWaiters: (() => void)[] = [];
  private pause: { timer: NodeJS.Timeout; wake: () => void } | undefined;
  private lastCallAt = Number.NEGATIVE_INFINITY;
  /** Set by flush(): no more waiting for the interval. */
  private flushing = false;
  /** Calls made so far (tests and metrics). */
  calls = 0;

  constructor(
    private readonly what: string,
    private readonly call: (batch: V[]) => Promise<void>,
    private readonly merge: (waiting: V, update: V) => V,
    private readonly logger: Logger,
    private readonly minIntervalMs = 0,
    private readonly maxPerCall = 1000,
  ) {}

  put(key: string, update: V): void {
    const waiting = this.pending.get(key);
    this.pending.set(key, waiting === undefined ? update : this.merge(waiting, update));
    if (this.busy) return;
    this.busy = true;
    // Let the rest of this turn's updates join the first call.
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
      const batch: V[] = [];
      for (const [key, v] of this.pending) {
        batch.push(v);
        this.pending.delete(key);
        if (batch.length === this.maxPerCall) break;
      }
      this.calls++;
      try {
        await this.call(batch);
      } catch (err) {
        this.logger.warn({ err, items: batch.length }, `${this.what} failed`);
      }
    }
    this.busy = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
