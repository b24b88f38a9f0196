import type { ConnectionRegistry, DeviceEntry } from "./connection-registry.js";

/** The embedded connection registry: in memory, shared by the gateway and router of one process. */
export class MemoryConnectionRegistry implements ConnectionRegistry {
  /** userId → deviceId → gatewayId */
  private readonly users = new Map<string, Map<string, string>>();

  async add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    for (const { userId, deviceId } of entries) {
      let devices = this.users.get(userId);
      if (!devices) this.users.set(userId, (devices = new Map()));
      devices.set(deviceId, gatewayId);
    }
  }

  async remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void> {
    for (const { userId, deviceId } of entries) {
      const devices = this.users.get(userId);
      if (devices?.get(deviceId) !== gatewayId) continue;
      devices.delete(deviceId);
      if (devices.size === 0) this.users.delete(userId);
    }
  }

  async removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void> {
    for (const userId of userIds) {
      const devices = this.users.get(userId);
      if (!devices) continue;
      for (const [deviceId, gw] of devices) if (gw === gatewayId) devices.delete(deviceId);
      if (devices.size === 0) this.users.delete(userId);
    }
  }

  async lookup(userIds: readonly string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const userId of userIds) {
      const devices = this.users.get(userId);
      if (!devices) continue;
      const gateways: string[] = [];
      for (const gw of devices.values()) if (!gateways.includes(gw)) gateways.push(gw);
      out.set(userId, gateways);
    }
    return out;
  }

  async close(): Promise<void> {}
}
