import { createClient } from "@connectrpc/connect";
import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import type { Discovery } from "../../../lib/discovery/discovery.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { peer } from "../../../lib/process-discovery.js";
import type { OwnedTransport } from "../../../lib/rpc.js";
import type { Sql } from "../../../lib/sql.js";
import { sqlCheck, type ReadinessCheck } from "../../../lib/readiness.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgres } from "../../../lib/sql-pg.js";
import { UuidV7Generator } from "../../../lib/ids.js";
import { ChangePublisher } from "./change-publisher.js";
import type { GroupsConfig } from "./config.js";
import type { ConversationStore } from "./conversation-store.js";
import { SqlConversationStore } from "./conversation-store-sql.js";

export interface GroupsOverrides {
  sql?: Sql;
  store?: ConversationStore;
  /** The transport to the routers (changes are published there). Default: `peer("router", cfg.routerUrl, discovery)`. */
  router?: OwnedTransport;
  discovery?: Discovery;
  clock?: () => number;
  logger?: Logger;
}

export class GroupsContext {
  /** Ids of new groups (UUIDv7: time-ordered). */
  readonly ids: UuidV7Generator;

  private constructor(
    readonly store: ConversationStore,
    readonly publisher: ChangePublisher,
    /** Most active members of one group. */
    readonly memberCap: number,
    readonly clock: () => number,
    readonly logger: Logger,
    private readonly ownedSql: Sql | undefined,
    /** The router transport built here (overrides belong to the caller). */
    private readonly ownedRouter: OwnedTransport | undefined,
    /** The database the store uses, when built here or passed in (readiness checks it). */
    private readonly sql: { name: string; sql: Sql } | undefined,
  ) {
    this.ids = new UuidV7Generator(clock);
  }

  static async fromConfig(cfg: GroupsConfig, o: GroupsOverrides = {}): Promise<GroupsContext> {
    const logger = o.logger ?? createLogger("groups", cfg.logLevel);
    const clock = o.clock ?? Date.now;
    let ownedSql: Sql | undefined;
    let usedSql: Sql | undefined;
    let store = o.store;
    if (!store) {
      const sql = (usedSql =
        o.sql ??
        (ownedSql = cfg.postgresUrl
          ? await openPostgres(cfg.postgresUrl, { onIdleError: (err) => logger.warn({ err }, "postgres connection lost") })
          : await openPglite(cfg.dataDir)));
      try {
        store = await SqlConversationStore.open(sql);
      } catch (err) {
        await ownedSql?.close();
        throw err;
      }
    }
    const ownedRouter = o.router ? undefined : peer("router", cfg.routerUrl, o.discovery);
    const router = o.router ?? ownedRouter!;
    const publisher = new ChangePublisher(store, createClient(RouterService, router), logger.child({ subsystem: "outbox" }), {
      intervalMs: cfg.outboxIntervalMs,
      timeoutMs: cfg.publishTimeoutMs,
      clock,
    });
    publisher.start();
    const database = usedSql && { name: cfg.postgresUrl ? "postgres" : "pglite", sql: usedSql };
    return new GroupsContext(store, publisher, cfg.memberCap, clock, logger, ownedSql, ownedRouter, database);
  }

  /** The backends this service needs to be ready (lib/readiness.ts): its database. The router it publishes to is not one. */
  readinessChecks(): ReadinessCheck[] {
    return this.sql ? [sqlCheck(this.sql.name, this.sql.sql)] : [];
  }

  async close(): Promise<void> {
    await this.publisher.close();
    this.ownedRouter?.close();
    await this.store.close();
    await this.ownedSql?.close();
  }
}
