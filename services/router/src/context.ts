import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import {
  MessageStoreService,
  type AppendRequestSchema,
  type AppendResponse,
} from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { ShardedBatcher } from "../../../lib/batcher.js";
import { tracedBatch } from "../../../lib/telemetry/tracing.js";
import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Discovery } from "../../../lib/discovery/discovery.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../../lib/registry/connection-registry-memory.js";
import { RedisConnectionRegistry } from "../../../lib/registry/connection-registry-redis.js";
import { openRedis } from "../../../lib/redis.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import { registryCheck, type ReadinessCheck } from "../../../lib/readiness.js";
import { peer } from "../../../lib/process-discovery.js";
import { dialGrpc, type OwnedTransport } from "../../../lib/rpc.js";
import type { RouterConfig } from "./config.js";
import { FanOut } from "./fan-out.js";
import { NotifyQueue } from "./notify-queue.js";
import { MembershipCache } from "./membership-cache.js";
import { GatewayClients, type DialGateway } from "../../../lib/gateway-clients.js";

/** How the router reaches its peers; the one-process platform passes in-process transports. */
export interface RouterOverrides {
  groups?: OwnedTransport;
  messagestore?: OwnedTransport;
  notify?: OwnedTransport;
  /** The transport to a gateway's internal port. Default: gRPC over HTTP/2 to its URL. */
  dialGateway?: DialGateway;
  registry?: ConnectionRegistry;
  discovery?: Discovery;
  clock?: () => number;
  logger?: Logger;
}

export class RouterContext {
  private readonly gatewayClients: GatewayClients;

  /** Appends to the message store, batched per store instance (one batch in flight each). */
  readonly appends: ShardedBatcher<MessageInitShape<typeof AppendRequestSchema>, AppendResponse>;
  readonly membership: MembershipCache;
  readonly fanOut: FanOut;
  /** Stored messages on their way to notify (push decisions). */
  readonly notifyQueue: NotifyQueue;

  private constructor(
    private readonly transports: OwnedTransport[],
    readonly registry: ConnectionRegistry,
    discovery: Discovery,
    dialGateway: DialGateway,
    readonly clock: () => number,
    readonly logger: Logger,
    cfg: RouterConfig,
    /** Whether close() closes the registry (built here, not passed in). */
    private readonly ownsRegistry: boolean,
  ) {
    this.gatewayClients = new GatewayClients(discovery, dialGateway);
    const [groups, messagestore, notify] = transports as [OwnedTransport, OwnedTransport, OwnedTransport];
    this.appends = new ShardedBatcher(
      messagestore,
      (a) => a.conversationId ?? "",
      (t) => {
        const client = createClient(MessageStoreService, t);
        // Tracing: the call is traced under the first append's message, linked to the others.
        return async (appends) => (await tracedBatch("store batch", appends, () => client.appendBatch({ appends }))).results.map((r) => r.result);
      },
    );
    this.membership = new MembershipCache(createClient(GroupsService, groups), {
      maxEntries: cfg.membershipCacheEntries,
      groupTtlMs: cfg.groupMembershipTtlMs,
      directTtlMs: cfg.directMembershipTtlMs,
      negativeTtlMs: 1000,
      clock,
    });
    this.fanOut = new FanOut(registry, (id) => this.gatewayClients.get(id), logger);
    this.notifyQueue = new NotifyQueue(createClient(NotifyService, notify), logger.child({ subsystem: "notify-queue" }), {
      maxConversations: cfg.notifyQueueMax,
      retryBaseMs: cfg.notifyRetryMs,
      retryMaxMs: 30_000,
      callTimeoutMs: 5000,
    });
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

  /**
   * The backends this service needs to be ready (lib/readiness.ts): the connection
   * registry (Redis). The services it calls (groups, message store, notify, gateways) are
   * not: each has its own readiness, and a router taken out for their outage helps nobody.
   */
  readinessChecks(): ReadinessCheck[] {
    return [registryCheck(this.registry instanceof RedisConnectionRegistry ? "redis" : "registry", this.registry)];
  }

  async close(): Promise<void> {
    await this.fanOut.idle();
    await this.notifyQueue.close();
    this.gatewayClients.close();
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
