import type { Clock } from "./clock.js";

export interface RevocationCacheOptions {
  /** Most sessions remembered; the least recently used is forgotten first. */
  maxEntries?: number;
  /**
   * How long an "active" answer is trusted before the database is asked again.
   * Revocation is final, so "revoked" answers are kept until evicted.
   */
  activeTtlMs?: number;
}

interface Entry {
  revoked: boolean;
  /** For active entries: when to ask the database again. */
  recheckAt: number;
}

/**
 * In-process cache of whether sessions are revoked, so Authenticate (called by the
 * gateway on every WebSocket upgrade and API call) costs an HMAC and a Map lookup.
 * A miss reads the database once, however many callers ask for that session at
 * the same time. This process's own revocations (LogOut, refresh-token reuse) update
 * it immediately.
 *
 * Several session instances need a shared revocation channel (e.g. Postgres
 * LISTEN/NOTIFY or a Redis pub/sub topic that every instance applies with
 * `markRevoked`) — a later issue. Until then, a session revoked by another instance
 * is seen here at the latest `activeTtlMs` after this instance last read it.
 */
export class RevocationCache {
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<boolean>>();
  private readonly maxEntries: number;
  private readonly activeTtlMs: number;

  constructor(
    /** Reads the truth: true when the session is revoked or does not exist. */
    private readonly load: (sessionId: string) => Promise<boolean>,
    private readonly clock: Clock,
    opts: RevocationCacheOptions = {},
  ) {
    this.maxEntries = opts.maxEntries ?? 100_000;
    this.activeTtlMs = opts.activeTtlMs ?? 30_000;
  }

  async isRevoked(sessionId: string): Promise<boolean> {
    const e = this.entries.get(sessionId);
    if (e && (e.revoked || this.clock.now() < e.recheckAt)) {
      this.touch(sessionId, e);
      return e.revoked;
    }
    let pending = this.loading.get(sessionId);
    if (!pending) {
      pending = this.load(sessionId).then(
        (revoked) => {
          this.loading.delete(sessionId);
          // A revocation recorded while the read was in flight wins: revocation is final.
          const now = this.entries.get(sessionId);
          if (now?.revoked) return true;
          this.set(sessionId, { revoked, recheckAt: this.clock.now() + this.activeTtlMs });
          return revoked;
        },
        (err: unknown) => {
          this.loading.delete(sessionId);
          throw err;
        },
      );
      this.loading.set(sessionId, pending);
    }
    return pending;
  }

  /** Records a revocation made by this process (or announced by another). */
  markRevoked(sessionId: string): void {
    this.set(sessionId, { revoked: true, recheckAt: Infinity });
  }

  /** Records a session known to be active (just created here). */
  markActive(sessionId: string): void {
    if (this.entries.get(sessionId)?.revoked) return;
    this.set(sessionId, { revoked: false, recheckAt: this.clock.now() + this.activeTtlMs });
  }

  get size(): number {
    return this.entries.size;
  }

  private touch(id: string, e: Entry): void {
    this.entries.delete(id);
    this.entries.set(id, e);
  }

  private set(id: string, e: Entry): void {
    this.entries.delete(id);
    this.entries.set(id, e);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }
}
