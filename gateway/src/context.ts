import { createClient, type Client } from "@connectrpc/connect";
import { AuthService } from "../../gen/parley/client/v1/auth_service_pb.js";
import { ChatService } from "../../gen/parley/client/v1/chat_service_pb.js";
import { DeliveryService } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { MessageStoreService } from "../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { PresenceService } from "../../gen/parley/presence/v1/presence_service_pb.js";
import { RouterService } from "../../gen/parley/router/v1/router_service_pb.js";
import { SessionService } from "../../gen/parley/session/v1/session_service_pb.js";
import { createLogger, type Logger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import type { ConnectionRegistry } from "../../lib/registry/connection-registry.js";
import { dialGrpc, startGrpcServer, type GrpcServer, type OwnedTransport, type Routes } from "../../lib/rpc.js";
import type { GatewayConfig } from "./config.js";
import { GatewayCore } from "./core/gateway-core.js";
import { authService } from "./public-api/auth-service.js";
import { chatService } from "./public-api/chat-service.js";
import { startPublicServer, type PublicServer } from "./uws/server.js";

export interface GatewayOverrides {
  session?: OwnedTransport;
  router?: OwnedTransport;
  groups?: OwnedTransport;
  messagestore?: OwnedTransport;
  presence?: OwnedTransport;
  registry?: ConnectionRegistry;
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
  ) {}

  get publicPort(): number {
    return this.publicServer.port;
  }

  get internalUrl(): string {
    return this.internalServer.url;
  }

  static async start(cfg: GatewayConfig, o: GatewayOverrides = {}): Promise<Gateway> {
    const logger = o.logger ?? createLogger("gateway", cfg.logLevel);
    const t = {
      session: o.session ?? dialGrpc(cfg.sessionUrl),
      router: o.router ?? dialGrpc(cfg.routerUrl),
      groups: o.groups ?? dialGrpc(cfg.groupsUrl),
      messagestore: o.messagestore ?? dialGrpc(cfg.messagestoreUrl),
      presence: o.presence ?? dialGrpc(cfg.presenceUrl),
    };
    const session = createClient(SessionService, t.session);
    const core = new GatewayCore(cfg, {
      session,
      router: createClient(RouterService, t.router),
      presence: createClient(PresenceService, t.presence),
      registry: o.registry ?? new MemoryConnectionRegistry(),
      clock: o.clock ?? Date.now,
      logger,
    });
    const deps = {
      session,
      groups: createClient(GroupsService, t.groups),
      messagestore: createClient(MessageStoreService, t.messagestore),
      authenticate: (token: string) => core.authenticate(token),
      sessionRevoked: (sessionId: string) => void core.closeSession(sessionId),
    };
    const api: Routes = (router) => {
      router.service(AuthService, authService(deps));
      router.service(ChatService, chatService(deps));
    };
    const internalServer = await startGrpcServer({
      host: cfg.host,
      port: cfg.internalPort,
      routes: deliveryRoutes(core),
      services: [DeliveryService],
      logger,
    });
    const publicServer = await startPublicServer(cfg, core, api, logger);
    return new Gateway(cfg, core, publicServer, internalServer, Object.values(t), logger);
  }

  /**
   * Graceful stop: refuse new connections, tell every client to reconnect elsewhere
   * (close code 1001), unregister them, then close the internal port and clients.
   */
  async stop(): Promise<void> {
    this.publicServer.stopListening();
    await this.core.drain();
    await this.internalServer.close();
    for (const t of this.transports) t.close();
    this.logger.info("gateway stopped");
  }
}

export function deliveryRoutes(core: GatewayCore): Routes {
  return (router) => router.service(DeliveryService, { deliver: async (req) => core.deliver(req) });
}

export type { Client };
