/**
 * The presence port. Gateways report, per user, the most active state of that user's
 * connections on the gateway; each (user, gateway) entry lives `ttlMs` after the report
 * that last listed it. A user's state is the most active state over their live entries
 * (ONLINE > AWAY > OFFLINE).
 *
 * Changes are damped: the state followers see (the *published* state, also what `get`
 * answers) takes a new value only once the computed state has held it for `dampMs`, so
 * online → offline → online within the window publishes nothing. Due work (an entry to
 * expire, a change whose window ran out) is found by `sweep`, which one timer of the
 * service calls; it is safe to run from several service instances at once (each user is
 * evaluated atomically: exactly one of them publishes a given change).
 */
export type PresenceState = "online" | "away" | "offline";
/** The state of a user's connections on one gateway. */
export type LiveState = "online" | "away";

export interface Presence {
  userId: string;
  state: PresenceState;
  /** When the user was last seen online (ms): now while online or away; 0 when never. */
  lastSeenMs: number;
}

export interface UserReport {
  userId: string;
  state: LiveState;
}

export interface PresenceTiming {
  /** An entry lives this long after the last report listing it. */
  ttlMs: number;
  /** A computed change is published once it held this long (0: at once). */
  dampMs: number;
}

/** Work done by the adapter (Redis: commands and round trips; memory: the same units, for comparison). */
export interface PresenceStoreStats {
  commands: number;
  roundTrips: number;
}

export interface PresenceStore {
  readonly stats: PresenceStoreStats;
  /**
   * One gateway's report: users with connections there and their state there, and users
   * whose last connection there closed. Returns the changes to publish now (only with
   * `dampMs` 0, or when a sweep is late).
   */
  report(gatewayId: string, online: readonly UserReport[], offline: readonly string[], nowMs: number): Promise<Presence[]>;
  /** The published state of each user, in the order asked. */
  get(userIds: readonly string[], nowMs: number): Promise<Presence[]>;
  /** Evaluates up to `limit` users with due work; returns the changes to publish. */
  sweep(nowMs: number, limit: number): Promise<Presence[]>;
  close(): Promise<void>;
}

const RANK: Record<PresenceState, number> = { offline: 0, away: 1, online: 2 };

/** The more active of two states. */
export function moreActive<S extends PresenceState>(a: S, b: S): S {
  return RANK[a] >= RANK[b] ? a : b;
}
