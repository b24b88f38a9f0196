import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { DeliveryService } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import {
  MessageStoreService,
  type AppendRequestSchema,
  type AppendResponse,
} from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { ShardedBatcher } from "../../../lib/batcher.js";
import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Discovery } from "../../../lib/discovery/discovery.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../../lib/registry/connection-registry-memory.js";
import { RedisConnectionRegistry } from "../../../lib/registry/connection-registry-redis.js";
import { openRedis } from "../../../lib/redis.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import { peer } from "../../../lib/process-discovery.js";
import { dialGrpc, type OwnedTransport } from "../../../lib/rpc.js";
import type { RouterConfig } from "./config.js";
import { FanOut } from "./fan-out.js";
import { MembershipCache } from "./membership-cache.js";

/** How the router reaches its peers; the one-process platform passes in-process transports. */
export interface RouterOverrides {
  groups?: OwnedTransport;
  messagestore?: OwnedTransport;
  notify?: OwnedTransport;
  /** The transport to a gateway's internal port. Default: gRPC over HTTP/2 to its URL. */
  dialGateway?: (url: string, gatewayId: string) => OwnedTransport;
  registry?: ConnectionRegistry;
  discovery?: Discovery;
  clock?: () => number;
  logger?: Logger;
}

export class RouterContext {
  private readonly gatewayClients = new Map<string, { url: string; transport: OwnedTransport; client: Client<typeof DeliveryService> }>();

  /** Appends to the message store, batched per store instance (one batch in flight each). */
  readonly appends: ShardedBatcher<MessageInitShape<typeof AppendRequestSchema>, AppendResponse>;
  readonly membership: MembershipCache;
  readonly fanOut: FanOut;

  private constructor(
    private readonly transports: OwnedTransport[],
    readonly registry: ConnectionRegistry,
    private readonly discovery: Discovery,
    private readonly dialGateway: (url: string, gatewayId: string) => OwnedTransport,
    readonly clock: () => number,
    readonly logger: Logger,
    cfg: RouterConfig,
    /** Whether close() closes the registry (built here, not passed in). */
    private readonly ownsRegistry: boolean,
  ) {
    const [groups, messagestore, notify] = transports as [OwnedTransport, OwnedTransport, OwnedTransport];
    this.appends = new ShardedBatcher(
      messagestore,
      (a) => a.conversationId ?? "",
      (t) => {
        const client = createClient(MessageStoreService, t);
        return async (appends) => (await client.appendBatch({ appends })).results.map((r) => r.result);
      },
    );
    this.membership = new MembershipCache(createClient(GroupsService, groups), {
      maxEntries: cfg.membershipCacheEntries,
      groupTtlMs: cfg.groupMembershipTtlMs,
      directTtlMs: cfg.directMembershipTtlMs,
      negativeTtlMs: 1000,
      clock,
    });
    this.fanOut = new FanOut(registry, (id) => this.gateway(id), createClient(NotifyService, notify), logger);
  }

  static async fromConfig(cfg: RouterConfig, o: RouterOverrides = {}): Promise<RouterContext> {
    const transports = [
      o.groups ?? peer("groups", cfg.groupsUrl, o.discovery),
      o.messagestore ?? peer("messagestore", cfg.messagestoreUrl, o.discovery),
      o.notify ?? peer("notify", cfg.notifyUrl, o.discovery),
    ];
    const logger = o.logger ?? createLogger("router", cfg.logLevel);
    return new RouterContext(
      transports,
      o.registry ?? (await openRegistry(cfg, logger)),
      o.discovery ?? new StaticDiscovery(cfg.gateways),
      o.dialGateway ?? ((url) => dialGrpc(url)),
      o.clock ?? Date.now,
      logger,
      cfg,
      !o.registry,
    );
  }

  /** The Deliver client of a gateway, or undefined when discovery does not know it. */
  private gateway(gatewayId: string): Client<typeof DeliveryService> | undefined {
    const instance = this.discovery.resolve("gateway", gatewayId);
    if (!instance) return undefined;
    const cached = this.gatewayClients.get(gatewayId);
    if (cached?.url === instance.url) return cached.client;
    cached?.transport.close();
    const transport = this.dialGateway(instance.url, gatewayId);
    const client = createClient(DeliveryService, transport);
    this.gatewayClients.set(gatewayId, { url: instance.url, transport, client });
    return client;
  }

  async close(): Promise<void> {
    await this.fanOut.idle();
    for (const g of this.gatewayClients.values()) g.transport.close();
    for (const t of this.transports) t.close();
    if (this.ownsRegistry) await this.registry.close();
  }
}

/**
 * The registry `PARLEY_REDIS_URL` selects: Redis, or in memory when unset (only useful
 * when something in the same process writes it). The router only reads and deletes
 * stale entries, so the registry TTL is the gateways' setting, not the router's.
 */
async function openRegistry(cfg: RouterConfig, logger: Logger): Promise<ConnectionRegistry> {
  if (!cfg.redisUrl) return new MemoryConnectionRegistry();
  const redis = await openRedis(cfg.redisUrl, { name: "parley-router", logger });
  return new RedisConnectionRegistry(redis, { prefix: cfg.redisPrefix });
}
