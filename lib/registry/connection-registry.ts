/**
 * The connection registry port: which gateway holds which user's devices. Gateways
 * write it in batches (one call per flush for all their connections); routers read it
 * once per fan-out batch for all recipients.
 *
 * Every entry expires `ttlMs` after it was last added or refreshed: a gateway that dies
 * stops refreshing, and its entries vanish by themselves. A live gateway calls
 * `refresh` once per interval (well below the TTL) for all its connections in one call.
 * Adapters: memory (embedded, `connection-registry-memory.ts`) and Redis
 * (`connection-registry-redis.ts`).
 */
export interface DeviceEntry {
  userId: string;
  deviceId: string;
}

export interface DeviceLocation {
  deviceId: string;
  gatewayId: string;
}

/** The gateways of each user, each once, from their devices' locations. */
export function gatewaysOf(devices: Map<string, DeviceLocation[]>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [userId, list] of devices) out.set(userId, [...new Set(list.map((d) => d.gatewayId))]);
  return out;
}

/** How long an entry lives without a refresh, unless configured otherwise. */
export const DEFAULT_REGISTRY_TTL_MS = 60_000;
/** How often a gateway refreshes its entries, unless configured otherwise. */
export const DEFAULT_REGISTRY_REFRESH_MS = 20_000;

export interface ConnectionRegistry {
  /** Registers devices connected to `gatewayId` (taking them over from any other gateway). */
  add(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void>;
  /**
   * Extends the life of the entries of `gatewayId`, the devices it still holds. An entry
   * that is missing or expired is written again (the registry lost it: e.g. a restarted
   * Redis); an entry a different gateway owns and keeps alive is left alone (that device
   * reconnected there since).
   */
  refresh(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void>;
  /** Removes devices of `gatewayId`; an entry another gateway owns now is left alone. */
  remove(gatewayId: string, entries: readonly DeviceEntry[]): Promise<void>;
  /** Removes every entry of the given users that points at `gatewayId` (stale entries). */
  removeUsers(gatewayId: string, userIds: readonly string[]): Promise<void>;
  /**
   * For each user with at least one connected (unexpired) device: the gateways holding
   * them, each once, in no particular order. Users with none are absent from the map.
   * One round trip for all users.
   */
  lookup(userIds: readonly string[]): Promise<Map<string, string[]>>;
  /**
   * Like `lookup`, device by device: for each user with at least one connected device,
   * where each device is. Fan-out uses it to skip a gateway whose only device of the
   * sender is the sending device itself. One round trip for all users.
   */
  lookupDevices(userIds: readonly string[]): Promise<Map<string, DeviceLocation[]>>;

  /*
   * The conversation index: which gateways hold at least one device subscribed to a
   * group conversation's topic. Routers send a group message once to each of them;
   * the gateway fans it out to its own subscribers. Entries expire like device entries.
   */

  /**
   * Marks `gatewayId` as holding subscribers of these conversations, extending entries
   * that exist and re-creating missing or expired ones (gateways call it when a topic
   * gets its first local subscriber, and once per refresh interval for all their topics).
   */
  addTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void>;
  /** `gatewayId` holds no subscriber of these conversations any more. */
  removeTopics(gatewayId: string, conversationIds: readonly string[]): Promise<void>;
  /**
   * For each conversation with at least one live entry: the gateways holding its
   * subscribers. Conversations with none are absent. One round trip for all.
   */
  lookupTopics(conversationIds: readonly string[]): Promise<Map<string, string[]>>;
  close(): Promise<void>;
}

export interface RegistryTiming {
  /** Entry lifetime after an add or refresh. */
  ttlMs?: number;
  /** The clock entry expiry is decided by (tests inject one). */
  clock?: () => number;
}
