import {
  DEFAULT_REGISTRY_TTL_MS,
  gatewaysOf,
  type ConnectionRegistry,
  type DeviceEntry,
  type DeviceLocation,
  type RegistryTiming,
} from "./connection-registry.js";

interface Entry {
  gatewayId: string;
  expiresAtMs: number;
}

/**
 * The embedded connection registry: in memory, shared by the gateway and router of one
 * process. Expiry is decided when entries are read (nothing runs on a timer); expired
 * entries are dropped then.
 */
export class MemoryConnectionRegistry implements ConnectionRegistry {
  /** userId → deviceId → entry */
  private readonly users = new Map<string, Map<string, Entry>>();
  /** conversationId → gatewayId → expiresAtMs (the conversation index) */
  private readonly topics = new Map<string, Map<string, number>>();
  private readonly ttlMs: number;
  private readonly clock: () => number;

  constructor(o: RegistryTiming = {}) {
    this.ttlMs = o.ttlMs ?? DEFAULT_REGISTRY_TTL_MS;
    this.clock = o.clock ?? Date.now;
  }

  async add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    const expiresAtMs = this.clock() + this.ttlMs;
    for (const { userId, deviceId } of entries) this.devices(userId).set(deviceId, { gatewayId, expiresAtMs });
  }

  async refresh(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    const now = this.clock();
    for (const { userId, deviceId } of entries) {
      const devices = this.devices(userId);
      const cur = devices.get(deviceId);
      if (cur && cur.gatewayId !== gatewayId && cur.expiresAtMs > now) continue;
      devices.set(deviceId, { gatewayId, expiresAtMs: now + this.ttlMs });
    }
  }

  async remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    for (const { userId, deviceId } of entries) {
      const devices = this.users.get(userId);
      if (devices?.get(deviceId)?.gatewayId !== gatewayId) continue;
      devices.delete(deviceId);
      if (devices.size === 0) this.users.delete(userId);
    }
  }

  async removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void> {
    for (const userId of userIds) {
      const devices = this.users.get(userId);
      if (!devices) continue;
      for (const [deviceId, e] of devices) if (e.gatewayId === gatewayId) devices.delete(deviceId);
      if (devices.size === 0) this.users.delete(userId);
    }
  }

  async lookup(userIds: readonly string[]): Promise<Map<string, string[]>> {
    return gatewaysOf(await this.lookupDevices(userIds));
  }

  async lookupDevices(userIds: readonly string[]): Promise<Map<string, DeviceLocation[]>> {
    const now = this.clock();
    const out = new Map<string, DeviceLocation[]>();
    for (const userId of new Set(userIds)) {
      const devices = this.users.get(userId);
      if (!devices) continue;
      const found: DeviceLocation[] = [];
      for (const [deviceId, e] of devices) {
        if (e.expiresAtMs <= now) devices.delete(deviceId);
        else found.push({ deviceId, gatewayId: e.gatewayId });
      }
      if (devices.size === 0) this.users.delete(userId);
      if (found.length > 0) out.set(userId, found);
    }
    return out;
  }

  async addTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void> {
    const expiresAtMs = this.clock() + this.ttlMs;
    for (const id of conversationIds) {
      let gateways = this.topics.get(id);
      if (!gateways) this.topics.set(id, (gateways = new Map()));
      gateways.set(gatewayId, expiresAtMs);
    }
  }

  async removeTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void> {
    for (const id of conversationIds) {
      const gateways = this.topics.get(id);
      if (!gateways) continue;
      gateways.delete(gatewayId);
      if (gateways.size === 0) this.topics.delete(id);
    }
  }

  async lookupTopics(conversationIds: readonly string[]): Promise<Map<string, string[]>> {
    const now = this.clock();
    const out = new Map<string, string[]>();
    for (const id of conversationIds) {
      const gateways = this.topics.get(id);
      if (!gateways) continue;
      const live: string[] = [];
      for (const [gatewayId, expiresAtMs] of gateways) {
        if (expiresAtMs <= now) gateways.delete(gatewayId);
        else live.push(gatewayId);
      }
      if (gateways.size === 0) this.topics.delete(id);
      if (live.length > 0) out.set(id, live);
    }
    return out;
  }

  async close(): Promise<void> {}

  private devices(userId: string): Map<string, Entry> {
    let devices = this.users.get(userId);
    if (!devices) this.users.set(userId, (devices = new Map()));
    return devices;
  }
}
