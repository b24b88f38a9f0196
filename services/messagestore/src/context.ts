import { mkdir } from "node:fs/promises";
import { createLogger, type Logger } from "../../../lib/logger.js";
import type { Sql } from "../../../lib/sql.js";
import { PROBE_ID, type ReadinessCheck } from "../../../lib/readiness.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgres } from "../../../lib/sql-pg.js";
import type { MessageStoreConfig } from "./config.js";
import type { MessageRepository } from "./message-repository.js";
import { CassandraMessageRepository } from "./message-repository-cassandra.js";
import { SqlMessageRepository } from "./message-repository-sql.js";
import { Sequencer, type SequencerOptions } from "./sequencer.js";

export interface MessageStoreOverrides {
  /** A shared relational database (the one-process platform); the context does not close it. */
  sql?: Sql;
  /** A ready repository (tests); the context does not close it. */
  repository?: MessageRepository;
  clock?: () => number;
  logger?: Logger;
  /** Batching and cache limits of the sequencer. */
  sequencer?: Omit<SequencerOptions, "repository" | "clock" | "logger">;
}

/** Everything the message store's handlers use; the one place adapters are built. */
export class MessageStoreContext {
  private constructor(
    readonly repository: MessageRepository,
    readonly sequencer: Sequencer,
    readonly logger: Logger,
    private readonly ownedSql: Sql | undefined,
    private readonly ownedRepository?: MessageRepository,
    /** What the repository stores into, as readiness names it. */
    private readonly backend = "repository",
  ) {}

  static async fromConfig(cfg: MessageStoreConfig, overrides: MessageStoreOverrides = {}): Promise<MessageStoreContext> {
    const logger = overrides.logger ?? createLogger("messagestore", cfg.logLevel);
    let ownedSql: Sql | undefined;
    let repository = overrides.repository;
    let ownedRepository: MessageRepository | undefined;
    if (!repository && cfg.cassandra) {
      repository = ownedRepository = await CassandraMessageRepository.create(cfg.cassandra);
    }
    if (!repository) {
      let sql = overrides.sql;
      if (!sql && cfg.postgresUrl) {
        sql = ownedSql = await openPostgres(cfg.postgresUrl, {
          onIdleError: (err) => logger.warn({ err }, "postgres connection lost"),
        });
      } else if (!sql) {
        await mkdir(cfg.dataDir, { recursive: true });
        sql = ownedSql = await openPglite(cfg.dataDir);
      }
      try {
        repository = await SqlMessageRepository.create(sql);
      } catch (err) {
        await ownedSql?.close();
        throw err;
      }
    }
    const sequencer = new Sequencer({
      ...overrides.sequencer,
      repository,
      clock: overrides.clock,
      logger: logger.child({ subsystem: "sequencer" }),
    });
    const backend = overrides.repository ? "repository" : cfg.cassandra ? "cassandra" : overrides.sql ? "database" : cfg.postgresUrl ? "postgres" : "pglite";
    return new MessageStoreContext(repository, sequencer, logger, ownedSql, ownedRepository, backend);
  }

  /**
   * The backends this service needs to be ready (lib/readiness.ts): its message table
   * answers a read (one head lookup of an id no conversation has, in Cassandra or SQL).
   */
  readinessChecks(): ReadinessCheck[] {
    return [{ name: this.backend, check: () => this.repository.heads([PROBE_ID]) }];
  }

  /** Finishes the queued appends, then closes what the context opened. */
  async close(): Promise<void> {
    await this.sequencer.close();
    await this.ownedSql?.close();
    await this.ownedRepository?.close?.();
  }
}
