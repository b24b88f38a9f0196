import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { AuthService } from "../../gen/parley/client/v1/auth_service_pb.js";
import { ChatService } from "../../gen/parley/client/v1/chat_service_pb.js";
import { ContactsService } from "../../gen/parley/client/v1/contacts_service_pb.js";
import { NotificationService } from "../../gen/parley/client/v1/notification_service_pb.js";
import { GroupService } from "../../gen/parley/client/v1/group_service_pb.js";
import { DeliveryService } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { MessageStoreService } from "../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { PresenceService } from "../../gen/parley/presence/v1/presence_service_pb.js";
import { RouterService, type EphemeralEventSchema, type SendRequestSchema, type SendResponse } from "../../gen/parley/router/v1/router_service_pb.js";
import { ShardedBatcher } from "../../lib/batcher.js";
import { NotifyService } from "../../gen/parley/notify/v1/notify_service_pb.js";
import { SessionService } from "../../gen/parley/session/v1/session_service_pb.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { RedisConnectionRegistry } from "../../lib/registry/connection-registry-redis.js";
import { openRedis } from "../../lib/redis.js";
import type { ConnectionRegistry } from "../../lib/registry/connection-registry.js";
import type { Discovery, Registrar, Registration } from "../../lib/discovery/discovery.js";
import { peer } from "../../lib/process-discovery.js";
import { startGrpcServer, type GrpcServer, type OwnedTransport, type Routes } from "../../lib/rpc.js";
import type { GatewayConfig } from "./config.js";
import { GatewayCore, type RouterEphemeral, type RouterSend } from "./core/gateway-core.js";
import { authService } from "./public-api/auth-service.js";
import { chatService } from "./public-api/chat-service.js";
import { contactsService } from "./public-api/contacts-service.js";
import { groupService } from "./public-api/group-service.js";
import { notificationService } from "./public-api/notification-service.js";
import { startPublicServer, type PublicServer } from "./uws/server.js";
import { tracedBatch } from "../../lib/telemetry/tracing.js";
import { discoveryChecks, followReadiness, Readiness, registryCheck, untilDeregistered } from "../../lib/readiness.js";
import { drainGateway } from "./core/drain.js";

export interface GatewayOverrides {
  session?: OwnedTransport;
  router?: OwnedTransport;
  groups?: OwnedTransport;
  messagestore?: OwnedTransport;
  presence?: OwnedTransport;
  notify?: OwnedTransport;
  registry?: ConnectionRegistry;
  /** Cluster mode: peers are balanced over discovery, and the gateway registers itself. */
  discovery?: Discovery & Registrar;
  clock?: () => number;
  logger?: Logger;
}

/** A running gateway: public port (WebSocket + Connect) and internal port (Deliver). */
export class Gateway {
  private constructor(
    readonly cfg: GatewayConfig,
    readonly core: GatewayCore,
    readonly publicServer: PublicServer,
    readonly internalServer: GrpcServer,
    private readonly transports: OwnedTransport[],
    private readonly logger: Logger,
    /** The registry this gateway built (closed by stop()); undefined when passed in. */
    private readonly ownRegistry: ConnectionRegistry | undefined,
    private readonly registration: Registration | undefined,
    /** Ready while the registry (and etcd) answer; not ready from the drain on (/readyz, gRPC health). */
    readonly readiness: Readiness,
    private readonly discovery: Discovery | undefined,
  ) {}

  get publicPort(): number {
    return this.publicServer.port;
  }

  get internalUrl(): string {
    return this.internalServer.url;
  }

  static async start(cfg: GatewayConfig, o: GatewayOverrides = {}): Promise<Gateway> {
    const logger = o.logger ?? createLogger("gateway", cfg.logLevel);
    const d = o.discovery;
    const t = {
      session: o.session ?? peer("session", cfg.sessionUrl, d),
      router: o.router ?? peer("router", cfg.routerUrl, d),
      groups: o.groups ?? peer("groups", cfg.groupsUrl, d),
      messagestore: o.messagestore ?? peer("messagestore", cfg.messagestoreUrl, d),
      presence: o.presence ?? peer("presence", cfg.presenceUrl, d),
      notify: o.notify ?? peer("notify", cfg.notifyUrl, d),
    };
    let registration: Registration | undefined;
    const session = createClient(SessionService, t.session);
    const groups = createClient(GroupsService, t.groups);
    const registry = o.registry ?? (await openRegistry(cfg, logger));
    const ownRegistry = o.registry ? undefined : registry;
    const messagestore = createClient(MessageStoreService, t.messagestore);
    const core = new GatewayCore(cfg, {
      session,
      send: batchedRouterSend(t.router),
      sendEphemeral: batchedRouterEphemeral(t.router),
      presence: createClient(PresenceService, t.presence),
      groups,
      messagestore,
      registry,
      clock: o.clock ?? Date.now,
      logger,
      onConnections: (n) => registration?.setLoad(n),
    });
    const deps = {
      session,
      groups,
      messagestore,
      notify: createClient(NotifyService, t.notify),
      authenticate: (token: string) => core.authenticate(token),
      sessionRevoked: (sessionId: string) => void core.closeSession(sessionId),
      self: () => ({ gatewayId: cfg.id, publicUrl: publicUrlOf(cfg, publicServer.port) }),
    };
    const api: Routes = (router) => {
      router.service(AuthService, authService(deps));
      router.service(ChatService, chatService(deps));
      router.service(ContactsService, contactsService(deps));
      router.service(GroupService, groupService(deps));
      router.service(NotificationService, notificationService(deps));
    };
    let internalServer: GrpcServer | undefined;
    let publicServer: PublicServer;
    // Its readiness is its own backends only: the services it calls are not (docs/operations.md).
    const readiness = new Readiness();
    readiness.begin([registryCheck(cfg.redisUrl ? "redis" : "registry", registry), ...discoveryChecks(d)]);
    const first = await readiness.report();
    if (!first.ready) logger.warn({ failing: first.failing, checks: first.checks }, "not ready yet: serving anyway, readiness follows the backends");
    try {
      internalServer = await startGrpcServer({
        host: cfg.host,
        advertiseHost: cfg.advertiseHost,
        port: cfg.internalPort,
        routes: deliveryRoutes(core),
        services: [DeliveryService],
        logger,
      });
      publicServer = await startPublicServer(cfg, core, api, logger, readiness);
      followReadiness(internalServer.health, [DeliveryService.typeName], readiness);
      registration = await d?.register({
        kind: "gateway",
        id: cfg.id,
        url: internalServer.url,
        publicUrl: publicUrlOf(cfg, publicServer.port),
        load: 0,
      });
    } catch (err) {
      await internalServer?.close();
      for (const tr of Object.values(t)) tr.close();
      await ownRegistry?.close();
      throw err;
    }
    readiness.watch(5000);
    return new Gateway(cfg, core, publicServer, internalServer, Object.values(t), logger, ownRegistry, registration, readiness, d);
  }

  /**
   * Graceful stop (core/drain.ts): not ready and out of discovery first, then every
   * client is closed with 4012 (reconnect elsewhere), spread over `drainMs` (default 0:
   * all at once), each once its sends in flight are acked; then the registry removals,
   * the internal port and the clients. Bounded by `deadlineMs` (default drainMs + 10 s).
   */
  async stop(o: { drainMs?: number; deadlineMs?: number } = {}): Promise<void> {
    const drainMs = o.drainMs ?? 0;
    await drainGateway(
      {
        core: this.core,
        notReady: () => this.readiness.drain(),
        // Leave discovery first, so that no client is assigned here any more.
        deregister: async () => {
          if (!this.registration) return;
          await this.registration.close();
          await untilDeregistered(this.discovery, "gateway", this.cfg.id, 2000);
        },
        logger: this.logger,
      },
      { spreadMs: drainMs, deadlineMs: o.deadlineMs ?? drainMs + 10_000 },
    );
    this.publicServer.stopListening();
    await this.internalServer.close();
    for (const t of this.transports) t.close();
    await this.ownRegistry?.close();
    this.logger.info("gateway stopped");
  }
}

/** The registry `PARLEY_REDIS_URL` selects: Redis, or in memory (one-process setups) when unset. */
async function openRegistry(cfg: GatewayConfig, logger: Logger): Promise<ConnectionRegistry> {
  const timing = { ttlMs: cfg.registryTtlMs };
  if (!cfg.redisUrl) return new MemoryConnectionRegistry(timing);
  const redis = await openRedis(cfg.redisUrl, { name: `parley-gateway-${cfg.id}`, logger });
  return new RedisConnectionRegistry(redis, { ...timing, prefix: cfg.redisPrefix });
}

export function deliveryRoutes(core: GatewayCore): Routes {
  return (router) =>
    router.service(DeliveryService, {
      deliver: async (req) => core.deliver(req),
      getStats: async () => {
        const s = core.stats;
        return {
          connections: s.connections,
          framesIn: BigInt(s.framesIn),
          framesOut: BigInt(s.framesOut),
          deliverCalls: BigInt(s.deliverCalls),
          envelopes: BigInt(s.envelopes),
          topicPublishes: BigInt(s.topicPublishes),
          typingForwarded: BigInt(s.typingForwarded),
          typingDropped: BigInt(s.typingDropped),
        };
      },
    });
}

export type { Client };

/**
 * Typing events to the router that owns each conversation, batched like sends: one
 * SendEphemeral in flight per router instance. Fire and forget: refusals are counted there.
 */
export function batchedRouterEphemeral(router: Transport): RouterEphemeral {
  const batcher = new ShardedBatcher<MessageInitShape<typeof EphemeralEventSchema>, void>(
    router,
    (e) => e.conversationId ?? "",
    (t) => {
      const client = createClient(RouterService, t);
      return async (events) => {
        await client.sendEphemeral({ events });
        return events.map(() => ({ case: "ok" as const, value: undefined }));
      };
    },
  );
  return (event) => batcher.submit(event);
}

/**
 * Sends to the router that owns each conversation, batched: one SendBatch in flight per
 * router instance, the sends received meanwhile (from every connection) in the next.
 */
export function batchedRouterSend(router: Transport): RouterSend {
  const batcher = new ShardedBatcher<MessageInitShape<typeof SendRequestSchema>, SendResponse>(
    router,
    (s) => s.conversationId ?? "",
    (t) => {
      const client = createClient(RouterService, t);
      // The batch call joins the first traced message's trace and links the others.
      return async (sends) => (await tracedBatch("send batch", sends, () => client.sendBatch({ sends }))).results.map((r) => r.result);
    },
  );
  return (req) => batcher.submit(req);
}

/** Where clients reach this gateway: the configured public URL, else the advertised host and the public port. */
function publicUrlOf(cfg: GatewayConfig, port: number): string {
  return cfg.publicUrl ?? `http://${cfg.advertiseHost}:${port}`;
}
