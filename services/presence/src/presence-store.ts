/** The presence port: which users are online, reported by gateways in batches. */
export type PresenceState = "online" | "offline";

export interface Presence {
  userId: string;
  state: PresenceState;
  /** When the user was last seen online (ms); 0 when never. */
  lastSeenMs: number;
}

export interface PresenceStore {
  /** One gateway's report: users with a connection there, and users whose last connection there closed. */
  report(gatewayId: string, online: readonly string[], offline: readonly string[], nowMs: number): Promise<void>;
  get(userIds: readonly string[], nowMs: number): Promise<Presence[]>;
  close(): Promise<void>;
}
