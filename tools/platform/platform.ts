import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createLogger, type Logger } from "../../lib/logger.js";
import { StaticDiscovery } from "../../lib/discovery/discovery-static.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { inProcess, lazyTransport, startGrpcServer, type GrpcServer, type Routes } from "../../lib/rpc.js";
import type { Sql } from "../../lib/sql.js";
import { openPglite } from "../../lib/sql-pglite.js";
import { loadConfig as gatewayConfig } from "../../gateway/src/config.js";
import { deliveryRoutes, Gateway } from "../../gateway/src/context.js";
import * as groups from "../../services/groups/src/index.js";
import * as messagestore from "../../services/messagestore/src/index.js";
import * as notify from "../../services/notify/src/index.js";
import * as presence from "../../services/presence/src/index.js";
import * as router from "../../services/router/src/index.js";
import * as session from "../../services/session/src/index.js";

export interface Platform {
  /** ws://host:port/ws and the Connect API. */
  readonly publicUrl: string;
  readonly publicPort: number;
  /** All six services over gRPC (reflection, health), for grpcurl / buf curl / grpc-js. */
  readonly internalUrl: string;
  readonly dataDir: string;
  readonly gateway: Gateway;
  stop(): Promise<void>;
}

/**
 * The embedded platform: the six services and one gateway in one process, sharing one
 * PGlite database under the data directory and an in-memory connection registry.
 * The services still call each other through their generated clients, over an
 * in-process transport of the same contract (messages are serialized as on the wire).
 * Every service is also served on one internal gRPC port.
 */
export async function startPlatform(env: Record<string, string | undefined>, logger?: Logger): Promise<Platform> {
  const level = env.PARLEY_LOG_LEVEL ?? "info";
  const child = (name: string) => logger?.child({ service: name }) ?? createLogger(name, level);
  const dataDir = resolve(env.PARLEY_DATA_DIR ?? "data");
  mkdirSync(dataDir, { recursive: true });
  const sql: Sql = await openPglite(join(dataDir, "pglite"));
  const closers: (() => Promise<void>)[] = [() => sql.close()];
  try {
    const sessionCtx = await session.SessionContext.fromConfig(session.loadConfig(env), { sql, logger: child("session") });
    closers.unshift(() => sessionCtx.close());
    // Groups publishes membership changes to the router, which is built below.
    let routerRoutes: Routes | undefined;
    const groupsCtx = await groups.GroupsContext.fromConfig(groups.loadConfig(env), {
      sql,
      router: lazyTransport(() => inProcess(routerRoutes!)),
      logger: child("groups"),
    });
    closers.unshift(() => groupsCtx.close());
    const storeCtx = await messagestore.MessageStoreContext.fromConfig(messagestore.loadConfig(env), {
      sql,
      logger: child("messagestore"),
    });
    closers.unshift(() => storeCtx.close());
    const registry = new MemoryConnectionRegistry();
    const discovery = new StaticDiscovery();
    let gateway: Gateway | undefined;
    const presenceCtx = await presence.PresenceContext.fromConfig(presence.loadConfig(env), {
      registry,
      discovery,
      // Presence changes go to the gateway of this process: in-process, same contract.
      dialGateway: () => inProcess(deliveryRoutes(gateway!.core)),
      logger: child("presence"),
    });
    closers.unshift(() => presenceCtx.close());
    // Notify asks groups who has not received a message, and session for display names.
    const notifyCtx = await notify.NotifyContext.fromConfig(notify.loadConfig(env), {
      sql,
      groups: inProcess(groups.groupsRoutes(groupsCtx)),
      session: inProcess(session.sessionRoutes(sessionCtx)),
      logger: child("notify"),
    });
    closers.unshift(() => notifyCtx.close());
    const routes = {
      session: session.sessionRoutes(sessionCtx),
      groups: groups.groupsRoutes(groupsCtx),
      messagestore: messagestore.messageStoreRoutes(storeCtx),
      presence: presence.presenceRoutes(presenceCtx),
      notify: notify.notifyRoutes(notifyCtx),
    };
    const gwCfg = gatewayConfig(env);
    const routerCtx = await router.RouterContext.fromConfig(router.loadConfig(env), {
      groups: inProcess(routes.groups),
      messagestore: inProcess(routes.messagestore),
      notify: inProcess(routes.notify),
      registry,
      discovery,
      // The gateway lives in this process: deliver in-process, same contract.
      dialGateway: () => inProcess(deliveryRoutes(gateway!.core)),
      logger: child("router"),
    });
    closers.unshift(() => routerCtx.close());
    routerRoutes = router.routerRoutes(routerCtx);

    const all: Routes = (r) => {
      for (const fn of [...Object.values(routes), routerRoutes!]) fn(r);
    };
    const internal: GrpcServer = await startGrpcServer({
      host: gwCfg.host,
      port: Number(env.PARLEY_INTERNAL_PORT ?? 7100),
      routes: all,
      services: [
        session.SessionService,
        router.RouterService,
        messagestore.MessageStoreService,
        presence.PresenceService,
        groups.GroupsService,
        notify.NotifyService,
      ],
      logger: child("internal"),
    });
    closers.unshift(() => internal.close());

    gateway = await Gateway.start(gwCfg, {
      session: inProcess(routes.session),
      router: inProcess(routerRoutes!),
      groups: inProcess(routes.groups),
      messagestore: inProcess(routes.messagestore),
      presence: inProcess(routes.presence),
      notify: inProcess(routes.notify),
      registry,
      logger: child("gateway"),
    });
    discovery.add({ kind: "gateway", id: gwCfg.id, url: gateway.internalUrl });
    const gw = gateway;
    closers.unshift(() => gw.stop());

    const publicUrl = `http://${gwCfg.host}:${gw.publicPort}`;
    return {
      publicUrl,
      publicPort: gw.publicPort,
      internalUrl: internal.url,
      dataDir,
      gateway: gw,
      async stop() {
        for (const close of closers.splice(0)) await close();
      },
    };
  } catch (err) {
    for (const close of closers.splice(0)) await close().catch(() => {});
    throw err;
  }
}
