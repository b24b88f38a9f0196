/**
 * The connection registry port: which gateway holds which user's devices. Gateways
 * write it in batches (one call per flush for all their connections); routers read it
 * once per fan-out batch for all recipients. The embedded adapter is in memory; the
 * Redis adapter (a later issue) keeps one hash per user with a TTL that gateways
 * refresh in one pipeline per interval.
 */
export interface DeviceEntry {
  userId: string;
  deviceId: string;
}

export interface ConnectionRegistry {
  /** Registers (or refreshes) devices connected to `gatewayId`. */
  add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void>;
  /** Removes devices of `gatewayId`; an entry another gateway owns now is left alone. */
  remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void>;
  /** Removes every entry of the given users that points at `gatewayId` (stale entries). */
  removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void>;
  /**
   * For each user with at least one connected device: the gateways holding them.
   * Users with none are absent from the map. One round trip for all users.
   */
  lookup(userIds: readonly string[]): Promise<Map<string, string[]>>;
  close(): Promise<void>;
}
