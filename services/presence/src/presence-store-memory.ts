import type { Presence, PresenceStore } from "./presence-store.js";

/**
 * Presence in memory (the embedded default). A user is online while at least one
 * gateway's latest report, younger than the TTL, lists them: a gateway that dies
 * stops reporting and its users go offline when the TTL runs out. Nothing runs on a
 * timer: expiry is decided when presence is read.
 */
export class MemoryPresenceStore implements PresenceStore {
  /** userId → gatewayId → time of the last report listing the user online */
  private readonly seen = new Map<string, Map<string, number>>();
  private readonly lastSeen = new Map<string, number>();

  constructor(private readonly ttlMs: number) {}

  async report(gatewayId: string, online: readonly string[], offline: readonly string[], nowMs: number): Promise<void> {
    for (const userId of online) {
      let gws = this.seen.get(userId);
      if (!gws) this.seen.set(userId, (gws = new Map()));
      gws.set(gatewayId, nowMs);
      this.lastSeen.set(userId, nowMs);
    }
    for (const userId of offline) {
      const gws = this.seen.get(userId);
      if (!gws?.delete(gatewayId)) continue;
      this.lastSeen.set(userId, nowMs);
      if (gws.size === 0) this.seen.delete(userId);
    }
  }

  async get(userIds: readonly string[], nowMs: number): Promise<Presence[]> {
    return userIds.map((userId) => {
      let online = false;
      const gws = this.seen.get(userId);
      if (gws) {
        for (const [gw, at] of gws) {
          if (nowMs - at < this.ttlMs) online = true;
          else gws.delete(gw);
        }
        if (gws.size === 0) this.seen.delete(userId);
      }
      return { userId, state: online ? "online" : "offline", lastSeenMs: online ? nowMs : (this.lastSeen.get(userId) ?? 0) };
    });
  }

  async close(): Promise<void> {}
}
