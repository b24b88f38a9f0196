import type { Discovery } from "../../../lib/discovery/discovery.js";
import { mkdir } from "node:fs/promises";
import { UuidV7Generator } from "../../../lib/ids.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { openPostgres } from "../../../lib/sql-pg.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { Sql } from "../../../lib/sql.js";
import { sqlCheck, type ReadinessCheck } from "../../../lib/readiness.js";
import type { AccountStore } from "./account-store.js";
import { openSqlAccountStore } from "./account-store-sql.js";
import { Accounts } from "./accounts.js";
import { systemClock, type Clock } from "./clock.js";
import { Contacts } from "./contacts.js";
import { sessionDbDir, type SessionConfig } from "./config.js";
import { ARGON2_OPTIONS, PasswordHasher } from "./passwords.js";
import { RevocationCache } from "./revocation-cache.js";
import { AccessTokens, newSigningKey } from "./tokens.js";

export interface SessionOverrides {
  /** A shared database (the one-process platform, tests); closing the context leaves it open. */
  sql?: Sql;
  clock?: Clock;
  logger?: Logger;
  /** Where the gateways are (cluster mode); without it every client stays on its gateway. */
  discovery?: Discovery;
}

/** The id of the access-token signing key. A rotation would add another id. */
const SIGNING_KEY_ID = "access-v1";

/** Everything the session service's handlers need; the one place adapters are built. */
export class SessionContext {
  private constructor(
    readonly config: SessionConfig,
    readonly accounts: Accounts,
    readonly contacts: Contacts,
    readonly store: AccountStore,
    readonly clock: Clock,
    readonly logger: Logger,
    private readonly ownedSql: Sql | undefined,
    readonly discovery: Discovery | undefined,
    private readonly sql: Sql,
  ) {}

  static async fromConfig(cfg: SessionConfig, overrides: SessionOverrides = {}): Promise<SessionContext> {
    const logger = overrides.logger ?? createLogger("session", cfg.logLevel);
    const clock = overrides.clock ?? systemClock;
    let ownedSql: Sql | undefined;
    let sql = overrides.sql;
    if (!sql && cfg.postgresUrl) {
      sql = ownedSql = await openPostgres(cfg.postgresUrl, {
        onIdleError: (err) => logger.warn({ err }, "postgres connection lost"),
      });
    } else if (!sql) {
      const dir = sessionDbDir(cfg);
      await mkdir(dir, { recursive: true });
      sql = ownedSql = await openPglite(dir);
    }
    try {
      const store = await openSqlAccountStore(sql);
      const key = await store.ensureSigningKey(newSigningKey(SIGNING_KEY_ID, clock.now()));
      const hasher = new PasswordHasher({ ...ARGON2_OPTIONS, memoryCost: cfg.passwordHashMemoryKib, timeCost: cfg.passwordHashIterations });
      await hasher.warmUp();
      const revocations = new RevocationCache(async (sessionId) => {
        const s = await store.getSession(sessionId);
        return !s || s.revokedAt !== null;
      }, clock);
      const accounts = new Accounts({
        store,
        hasher,
        accessTokens: new AccessTokens(key, cfg.accessTokenTtlSeconds * 1000),
        revocations,
        clock,
        ids: new UuidV7Generator(() => clock.now()),
        refreshTokenTtlMs: cfg.refreshTokenTtlSeconds * 1000,
        logger,
      });
      const contacts = new Contacts({ store, clock, max: cfg.contactsMax });
      return new SessionContext(cfg, accounts, contacts, store, clock, logger, ownedSql, overrides.discovery, sql);
    } catch (err) {
      await ownedSql?.close();
      throw err;
    }
  }

  /** The backends this service needs to be ready (lib/readiness.ts): its database. */
  readinessChecks(): ReadinessCheck[] {
    return [sqlCheck(this.config.postgresUrl ? "postgres" : "pglite", this.sql)];
  }

  async close(): Promise<void> {
    await this.ownedSql?.close();
  }
}
