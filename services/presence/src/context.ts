import { createLogger, type Logger } from "../../../lib/logger.js";
import { openRedis } from "../../../lib/redis.js";
import type { PresenceConfig } from "./config.js";
import type { PresenceStore } from "./presence-store.js";
import { MemoryPresenceStore } from "./presence-store-memory.js";
import { RedisPresenceStore } from "./presence-store-redis.js";

export class PresenceContext {
  private constructor(
    readonly store: PresenceStore,
    readonly clock: () => number,
    readonly logger: Logger,
  ) {}

  static async fromConfig(
    cfg: PresenceConfig,
    o: { store?: PresenceStore; clock?: () => number; logger?: Logger } = {},
  ): Promise<PresenceContext> {
    const logger = o.logger ?? createLogger("presence", cfg.logLevel);
    const store =
      o.store ??
      (cfg.redisUrl
        ? new RedisPresenceStore(await openRedis(cfg.redisUrl, { name: "parley-presence", logger }), cfg.ttlMs, {
            prefix: cfg.redisPrefix,
          })
        : new MemoryPresenceStore(cfg.ttlMs));
    return new PresenceContext(store, o.clock ?? Date.now, logger);
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
