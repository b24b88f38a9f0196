import { createLogger, type Logger } from "../../../lib/logger.js";
import type { PresenceConfig } from "./config.js";
import type { PresenceStore } from "./presence-store.js";
import { MemoryPresenceStore } from "./presence-store-memory.js";

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
    return new PresenceContext(
      o.store ?? new MemoryPresenceStore(cfg.ttlMs),
      o.clock ?? Date.now,
      o.logger ?? createLogger("presence", cfg.logLevel),
    );
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
