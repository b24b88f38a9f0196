import type { Discovery } from "../../../lib/discovery/discovery.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { openRedis } from "../../../lib/redis.js";
import { MemoryConnectionRegistry } from "../../../lib/registry/connection-registry-memory.js";
import { RedisConnectionRegistry } from "../../../lib/registry/connection-registry-redis.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import { PROBE_ID, registryCheck, type ReadinessCheck } from "../../../lib/readiness.js";
import { dialGrpc, type OwnedTransport } from "../../../lib/rpc.js";
import type { PresenceConfig } from "./config.js";
import { PresenceFanOut } from "./presence-fan-out.js";
import type { PresenceStore } from "./presence-store.js";
import { MemoryPresenceStore } from "./presence-store-memory.js";
import { RedisPresenceStore } from "./presence-store-redis.js";
import { GatewayClients, type DialGateway } from "../../../lib/gateway-clients.js";

/** What the one-process platform and tests may pass in instead of building it from config. */
export interface PresenceOverrides {
  store?: PresenceStore;
  /** The connection registry: its topic index says which gateways follow whom (`presence:<userId>`). */
  registry?: ConnectionRegistry;
  /** Where gateways are (`resolve("gateway", id)`). Default: the static `PARLEY_GATEWAYS` table. */
  discovery?: Discovery;
  /** The transport to a gateway's internal port. Default: gRPC over HTTP/2 to its URL. */
  dialGateway?: DialGateway;
  clock?: () => number;
  logger?: Logger;
  /** false: no sweep timer (tests call `fanOut.sweep()` themselves with their clock). */
  sweepTimer?: boolean;
}

export class PresenceContext {
  private readonly gatewayClients: GatewayClients;
  readonly fanOut: PresenceFanOut;

  private constructor(
    readonly store: PresenceStore,
    readonly registry: ConnectionRegistry,
    discovery: Discovery,
    dialGateway: DialGateway,
    readonly clock: () => number,
    readonly logger: Logger,
    private readonly ownsRegistry: boolean,
  ) {
    this.gatewayClients = new GatewayClients(discovery, dialGateway);
    this.fanOut = new PresenceFanOut(store, registry, (id) => this.gatewayClients.get(id), clock, logger);
  }

  static async fromConfig(cfg: PresenceConfig, o: PresenceOverrides = {}): Promise<PresenceContext> {
    const logger = o.logger ?? createLogger("presence", cfg.logLevel);
    const timing = { ttlMs: cfg.ttlMs, dampMs: cfg.dampMs };
    const store =
      o.store ??
      (cfg.redisUrl
        ? new RedisPresenceStore(await openRedis(cfg.redisUrl, { name: "parley-presence", logger }), timing, { prefix: cfg.redisPrefix })
        : new MemoryPresenceStore(timing));
    // The presence service only reads the topic index (and the gateways' TTL applies).
    const registry =
      o.registry ??
      (cfg.redisUrl
        ? new RedisConnectionRegistry(await openRedis(cfg.redisUrl, { name: "parley-presence-registry", logger }), { prefix: cfg.redisPrefix })
        : new MemoryConnectionRegistry());
    const ctx = new PresenceContext(
      store,
      registry,
      o.discovery ?? new StaticDiscovery(cfg.gateways),
      o.dialGateway ?? ((url) => dialGrpc(url)),
      o.clock ?? Date.now,
      logger,
      !o.registry,
    );
    if (o.sweepTimer !== false) ctx.fanOut.start(cfg.sweepMs);
    return ctx;
  }

  /**
   * The backends this service needs to be ready (lib/readiness.ts): the presence store
   * and the registry's topic index (both Redis in a cluster, over their own connections).
   */
  readinessChecks(): ReadinessCheck[] {
    const redis = this.store instanceof RedisPresenceStore;
    return [
      { name: redis ? "redis" : "presence-store", check: () => this.store.get([PROBE_ID], this.clock()) },
      registryCheck(this.registry instanceof RedisConnectionRegistry ? "redis-registry" : "registry", this.registry),
    ];
  }

  async close(): Promise<void> {
    await this.fanOut.stop();
    this.gatewayClients.close();
    await this.store.close();
    if (this.ownsRegistry) await this.registry.close();
  }
}
