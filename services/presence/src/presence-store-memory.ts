import { emptyRecord, evaluate, published, type Op, type UserRecord } from "./presence-rules.js";
import type { Presence, PresenceStore, PresenceStoreStats, PresenceTiming, UserReport } from "./presence-store.js";

/**
 * Presence in memory (the embedded default, one presence instance). Same rules as the
 * Redis adapter (presence-rules.ts); due users are kept in a map of deadlines that the
 * sweep scans. Stats count what the Redis adapter would do (one command per user
 * touched, one round trip per call), so both can be compared.
 */
export class MemoryPresenceStore implements PresenceStore {
  private readonly users = new Map<string, UserRecord>();
  /** userId → next deadline */
  private readonly deadlines = new Map<string, number>();
  readonly stats: PresenceStoreStats = { commands: 0, roundTrips: 0 };

  constructor(private readonly timing: PresenceTiming) {}

  private apply(userId: string, op: Op, nowMs: number): Presence | undefined {
    let rec = this.users.get(userId);
    if (!rec) this.users.set(userId, (rec = emptyRecord()));
    const { publish, deadlineMs } = evaluate(userId, rec, op, nowMs, this.timing);
    if (deadlineMs === undefined) this.deadlines.delete(userId);
    else this.deadlines.set(userId, deadlineMs);
    return publish;
  }

  async report(gatewayId: string, online: readonly UserReport[], offline: readonly string[], nowMs: number): Promise<Presence[]> {
    if (online.length + offline.length === 0) return [];
    this.stats.roundTrips++;
    this.stats.commands += online.length + offline.length;
    const out: Presence[] = [];
    for (const u of online) {
      const p = this.apply(u.userId, { gatewayId, state: u.state }, nowMs);
      if (p) out.push(p);
    }
    for (const userId of offline) {
      // An offline report for a user the store never saw creates nothing.
      if (!this.users.has(userId)) continue;
      const p = this.apply(userId, { gatewayId, state: undefined }, nowMs);
      if (p) out.push(p);
    }
    return out;
  }

  async get(userIds: readonly string[], nowMs: number): Promise<Presence[]> {
    if (userIds.length === 0) return [];
    this.stats.roundTrips++;
    this.stats.commands += userIds.length;
    return userIds.map((u) => published(u, this.users.get(u), nowMs));
  }

  async sweep(nowMs: number, limit: number): Promise<Presence[]> {
    this.stats.roundTrips++;
    this.stats.commands++;
    const due: string[] = [];
    for (const [userId, at] of this.deadlines) {
      if (at > nowMs) continue;
      due.push(userId);
      if (due.length >= limit) break;
    }
    if (due.length === 0) return [];
    this.stats.roundTrips++;
    this.stats.commands += due.length;
    const out: Presence[] = [];
    for (const userId of due) {
      const p = this.apply(userId, undefined, nowMs);
      if (p) out.push(p);
    }
    return out;
  }

  async close(): Promise<void> {}
}
