import { createLogger, type Logger } from "../../../lib/logger.js";
import type { Sql } from "../../../lib/sql.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgres } from "../../../lib/sql-pg.js";
import type { GroupsConfig } from "./config.js";
import type { ConversationStore } from "./conversation-store.js";
import { SqlConversationStore } from "./conversation-store-sql.js";

export interface GroupsOverrides {
  sql?: Sql;
  store?: ConversationStore;
  clock?: () => number;
  logger?: Logger;
}

export class GroupsContext {
  private constructor(
    readonly store: ConversationStore,
    readonly clock: () => number,
    readonly logger: Logger,
    private readonly ownedSql: Sql | undefined,
  ) {}

  static async fromConfig(cfg: GroupsConfig, o: GroupsOverrides = {}): Promise<GroupsContext> {
    const logger = o.logger ?? createLogger("groups", cfg.logLevel);
    let ownedSql: Sql | undefined;
    let store = o.store;
    if (!store) {
      const sql =
        o.sql ??
        (ownedSql = cfg.postgresUrl
          ? await openPostgres(cfg.postgresUrl, { onIdleError: (err) => logger.warn({ err }, "postgres connection lost") })
          : await openPglite(cfg.dataDir));
      try {
        store = await SqlConversationStore.open(sql);
      } catch (err) {
        await ownedSql?.close();
        throw err;
      }
    }
    return new GroupsContext(store, o.clock ?? Date.now, logger, ownedSql);
  }

  async close(): Promise<void> {
    await this.store.close();
    await this.ownedSql?.close();
  }
}
