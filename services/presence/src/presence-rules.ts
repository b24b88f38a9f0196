import { moreActive, type LiveState, type Presence, type PresenceState, type PresenceTiming } from "./presence-store.js";

/**
 * The rules of one user's presence record, shared by the memory adapter and mirrored
 * line by line by the Lua script of the Redis adapter (presence-store-redis.ts).
 */
export interface UserRecord {
  /** gatewayId → that gateway's state of the user and when it last reported it. */
  entries: Map<string, { state: LiveState; seenMs: number }>;
  /** The computed state as of the last evaluation, and when it took that value. */
  cur: PresenceState;
  chgMs: number;
  /** The published state (what followers were told). */
  pub: PresenceState;
  /** When the user went offline last (the last report that listed them, or the offline report). */
  lastMs: number;
}

export function emptyRecord(): UserRecord {
  return { entries: new Map(), cur: "offline", chgMs: 0, pub: "offline", lastMs: 0 };
}

/** An operation on one user's record; `undefined` state: the gateway's last connection of the user closed. */
export type Op = { gatewayId: string; state: LiveState | undefined } | undefined;

export interface Evaluation {
  /** A change to publish now. */
  publish: Presence | undefined;
  /** The next time something is due for this user (expiry or end of a damping window); undefined: nothing. */
  deadlineMs: number | undefined;
}

/** Applies `op` (a report) or nothing (a sweep) and evaluates expiry and damping. Mutates `rec`. */
export function evaluate(userId: string, rec: UserRecord, op: Op, nowMs: number, t: PresenceTiming): Evaluation {
  let goneSeen = 0;
  if (op) {
    if (op.state) rec.entries.set(op.gatewayId, { state: op.state, seenMs: nowMs });
    else if (rec.entries.delete(op.gatewayId)) goneSeen = nowMs;
  }
  let best: PresenceState = "offline";
  let nextExpiry: number | undefined;
  let expiredAt = 0;
  for (const [gw, e] of rec.entries) {
    const exp = e.seenMs + t.ttlMs;
    if (exp <= nowMs) {
      rec.entries.delete(gw);
      goneSeen = Math.max(goneSeen, e.seenMs);
      expiredAt = Math.max(expiredAt, exp);
    } else {
      best = moreActive(best, e.state);
      nextExpiry = nextExpiry === undefined ? exp : Math.min(nextExpiry, exp);
    }
  }
  if (best !== rec.cur) {
    rec.cur = best;
    // A change found by a sweep happened when the entry expired, not when the sweep ran.
    rec.chgMs = !op && expiredAt > 0 ? expiredAt : nowMs;
    if (best === "offline" && goneSeen > 0) rec.lastMs = goneSeen;
  }
  let publish: Presence | undefined;
  let due: number | undefined;
  if (rec.cur !== rec.pub) {
    due = rec.chgMs + t.dampMs;
    if (nowMs >= due) {
      rec.pub = rec.cur;
      due = undefined;
      publish = { userId, state: rec.pub, lastSeenMs: rec.pub === "offline" ? rec.lastMs : nowMs };
    }
  }
  const deadlineMs = due === undefined ? nextExpiry : nextExpiry === undefined ? due : Math.min(due, nextExpiry);
  return { publish, deadlineMs };
}

/** The published state of a record (`get`). */
export function published(userId: string, rec: UserRecord | undefined, nowMs: number): Presence {
  if (!rec || rec.pub === "offline") return { userId, state: "offline", lastSeenMs: rec?.lastMs ?? 0 };
  return { userId, state: rec.pub, lastSeenMs: nowMs };
}
