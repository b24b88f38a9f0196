/**
 * Puts a conversation's messages back in sequence order before fan-out. The message
 * store acknowledges appends in sequence order, but over HTTP/2 the answers of
 * concurrent calls can arrive in any order, so the router re-sequences: a message
 * whose predecessor has not been seen yet waits (at most `holdMs`) for it. A gap that
 * does not fill in time (the predecessor went through another router during a
 * failover) is passed over: devices fill gaps from history by sequence number.
 * Memory is bounded: one number per recently active conversation, and held messages
 * only while a gap is open.
 */
export class SeqOrder<T extends { conversationId: string; seq: number }> {
  private readonly next = new Map<string, number>();
  private readonly held = new Map<string, { items: Map<number, T>; timer: NodeJS.Timeout }>();

  constructor(
    private readonly emit: (item: T) => void,
    private readonly holdMs: number,
    private readonly maxConversations = 100_000,
  ) {}

  push(item: T): void {
    const c = item.conversationId;
    const expected = this.next.get(c);
    if (item.seq === 1 || item.seq === expected) {
      this.advance(c, item);
      return;
    }
    if (expected !== undefined && item.seq < expected) {
      this.emit(item); // late: its successors already went out
      return;
    }
    // A gap (or the first message of a conversation this router has not seen yet).
    let h = this.held.get(c);
    if (!h) {
      h = { items: new Map(), timer: setTimeout(() => this.giveUp(c), this.holdMs) };
      h.timer.unref();
      this.held.set(c, h);
    }
    h.items.set(item.seq, item);
    // If what is held starts right after an unseen predecessor that will never come,
    // the timer releases it; if the predecessor is merely unknown (first sight), the
    // smallest held item may be the start: nothing more to do until then.
  }

  private advance(c: string, item: T): void {
    this.emit(item);
    let n = item.seq + 1;
    const h = this.held.get(c);
    if (h) {
      for (let next = h.items.get(n); next; next = h.items.get(n)) {
        h.items.delete(n);
        this.emit(next);
        n++;
      }
      if (h.items.size === 0) {
        clearTimeout(h.timer);
        this.held.delete(c);
      }
    }
    this.remember(c, n);
  }

  private giveUp(c: string): void {
    const h = this.held.get(c);
    if (!h) return;
    this.held.delete(c);
    const seqs = [...h.items.keys()].sort((a, b) => a - b);
    for (const s of seqs) this.emit(h.items.get(s)!);
    this.remember(c, seqs[seqs.length - 1]! + 1);
  }

  private remember(c: string, next: number): void {
    this.next.delete(c);
    this.next.set(c, next);
    if (this.next.size > this.maxConversations) {
      const oldest = this.next.keys().next().value;
      if (oldest !== undefined) this.next.delete(oldest);
    }
  }

  /** Messages waiting for a predecessor (tests, metrics). */
  get waiting(): number {
    let n = 0;
    for (const h of this.held.values()) n += h.items.size;
    return n;
  }

  /** Releases everything held, in order (shutdown). */
  flush(): void {
    for (const c of [...this.held.keys()]) {
      clearTimeout(this.held.get(c)!.timer);
      this.giveUp(c);
    }
  }
}
