import type { Discovery } from "../../../lib/discovery/discovery.js";
import { UuidV7Generator } from "../../../lib/ids.js";
import { createLogger, type Logger } from "../../../lib/logger.js";
import { peer } from "../../../lib/process-discovery.js";
import type { OwnedTransport } from "../../../lib/rpc.js";
import { sqlCheck, type ReadinessCheck } from "../../../lib/readiness.js";
import type { Sql } from "../../../lib/sql.js";
import { openPostgres } from "../../../lib/sql-pg.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { NotifyConfig } from "./config.js";
import { LogSender } from "./log-sender.js";
import { PLATFORMS, type Platform } from "./model.js";
import { PushPipeline } from "./pipeline.js";
import { ApnsSender } from "./providers/apns.js";
import { FcmSender } from "./providers/fcm.js";
import type { PushSender } from "./providers/push-sender.js";
import { WebhookSender } from "./providers/webhook.js";
import { WebPushSender } from "./providers/webpush.js";
import type { PushCandidates } from "./push-candidates.js";
import { GrpcPushCandidates } from "./push-candidates-grpc.js";
import type { PushStore } from "./push-store.js";
import { SqlPushStore } from "./push-store-sql.js";
import { CachedUserDirectory, type UserDirectory } from "./user-directory.js";
import { GrpcUserDirectory } from "./user-directory-grpc.js";

export interface NotifyOverrides {
  /** A shared database (the one-process platform); else PGlite or PARLEY_POSTGRES_URL. */
  sql?: Sql;
  store?: PushStore;
  /** Transport to the groups service (push candidates). Default: `peer("groups", cfg.groupsUrl, discovery)`. */
  groups?: OwnedTransport;
  /** Transport to the session service (display names). Default: `peer("session", cfg.sessionUrl, discovery)`. */
  session?: OwnedTransport;
  /** Instead of the groups transport (tests). */
  candidates?: PushCandidates;
  /** Instead of the session transport (tests). */
  users?: UserDirectory;
  discovery?: Discovery;
  /** Senders by platform (they count as configured); the others come from the provider configs, else log senders. */
  senders?: Partial<Record<Platform, PushSender>>;
  clock?: () => number;
  random?: () => number;
  logger?: Logger;
  /** False: the pipeline loop is not started (tests call `ctx.pipeline.tick()`). Default true. */
  start?: boolean;
}

export class NotifyContext {
  /** Ids of new devices (UUIDv7). */
  readonly ids: UuidV7Generator;

  private constructor(
    readonly store: PushStore,
    readonly pipeline: PushPipeline,
    /** Platforms with a real provider (configured or passed in); the others are served by log senders. */
    readonly configuredPlatforms: ReadonlySet<Platform>,
    readonly maxDevicesPerUser: number,
    readonly requireProviders: boolean,
    readonly webPushAllowedHosts: readonly string[],
    readonly clock: () => number,
    readonly logger: Logger,
    private readonly closers: (() => Promise<void> | void)[],
    /** The database the store uses, when built here or passed in (readiness checks it). */
    private readonly database: { name: string; sql: Sql } | undefined,
  ) {
    this.ids = new UuidV7Generator(clock);
  }

  static async fromConfig(cfg: NotifyConfig, o: NotifyOverrides = {}): Promise<NotifyContext> {
    const logger = o.logger ?? createLogger("notify", cfg.logLevel);
    const clock = o.clock ?? Date.now;
    // Closed in reverse order of construction: only what is built here.
    const closers: (() => Promise<void> | void)[] = [];
    const closeAll = async () => {
      for (const close of closers.splice(0).reverse()) {
        try {
          await close();
        } catch (err) {
          logger.warn({ err }, "closing the notify context failed");
        }
      }
    };
    try {
      let store = o.store;
      let database: { name: string; sql: Sql } | undefined;
      if (!store) {
        let sql = o.sql;
        if (!sql) {
          const owned = cfg.postgresUrl
            ? await openPostgres(cfg.postgresUrl, { onIdleError: (err) => logger.warn({ err }, "postgres connection lost") })
            : await openPglite(cfg.dataDir);
          closers.push(() => owned.close());
          sql = owned;
        }
        database = { name: o.sql ? "database" : cfg.postgresUrl ? "postgres" : "pglite", sql };
        const opened = await SqlPushStore.open(sql);
        closers.push(() => opened.close());
        store = opened;
      }

      let candidates = o.candidates;
      if (!candidates) {
        const groups = o.groups ?? peer("groups", cfg.groupsUrl, o.discovery);
        if (!o.groups) closers.push(() => groups.close());
        candidates = new GrpcPushCandidates(groups);
      }
      let users = o.users;
      if (!users) {
        const session = o.session ?? peer("session", cfg.sessionUrl, o.discovery);
        if (!o.session) closers.push(() => session.close());
        users = new CachedUserDirectory(new GrpcUserDirectory(session), { clock });
      }

      const { senders, configured } = buildSenders(cfg, o.senders ?? {}, logger, closers);
      for (const p of PLATFORMS) {
        if (!configured.has(p)) {
          logger.info({ platform: p, requireProviders: cfg.requireProviders }, cfg.requireProviders
            ? "push platform not configured: its devices are refused"
            : "push platform not configured: its pushes are logged (log sender)");
        }
      }

      const pipeline = new PushPipeline(
        { store, candidates, users, senders, logger: logger.child({ subsystem: "pipeline" }), clock, ...(o.random ? { random: o.random } : {}) },
        {
          delayMs: cfg.delayMs,
          maxAttempts: cfg.maxAttempts,
          retryBaseMs: cfg.retryBaseMs,
          retryMaxMs: cfg.retryMaxMs,
          leaseMs: cfg.leaseMs,
          pollMs: cfg.pollMs,
          webPushAllowedHosts: cfg.webPushAllowedHosts,
        },
      );
      // The pipeline is closed first: it uses everything else.
      closers.push(() => pipeline.close());
      if (o.start !== false) pipeline.start();
      return new NotifyContext(
        store,
        pipeline,
        configured,
        cfg.maxDevicesPerUser,
        cfg.requireProviders,
        cfg.webPushAllowedHosts,
        clock,
        logger,
        closers,
        database,
      );
    } catch (err) {
      await closeAll();
      throw err;
    }
  }

  /**
   * The backends this service needs to be ready (lib/readiness.ts): its database. Groups
   * and session are not: without them pushes wait (jobs are retried), devices and
   * hand-overs are still accepted.
   */
  readinessChecks(): ReadinessCheck[] {
    return this.database ? [sqlCheck(this.database.name, this.database.sql)] : [];
  }

  /** Stops the pipeline (waiting for its round), then closes what was built here. */
  async close(): Promise<void> {
    for (const close of this.closers.splice(0).reverse()) {
      try {
        await close();
      } catch (err) {
        this.logger.warn({ err }, "closing the notify context failed");
      }
    }
  }
}

function buildSenders(
  cfg: NotifyConfig,
  given: Partial<Record<Platform, PushSender>>,
  logger: Logger,
  closers: (() => Promise<void> | void)[],
): { senders: Record<Platform, PushSender>; configured: Set<Platform> } {
  const configured = new Set<Platform>();
  const owned = (s: PushSender): PushSender => {
    closers.push(() => s.close());
    configured.add(s.platform);
    return s;
  };
  const pick = (platform: Platform, make: (() => PushSender) | undefined): PushSender => {
    const g = given[platform];
    if (g) {
      configured.add(platform);
      return g;
    }
    return make ? owned(make()) : new LogSender(platform, logger.child({ subsystem: "log-sender" }));
  };
  const p = cfg.providers;
  return {
    senders: {
      fcm: pick("fcm", p.fcm && (() => new FcmSender(p.fcm!))),
      apns: pick("apns", p.apns && (() => new ApnsSender(p.apns!))),
      webpush: pick("webpush", p.webpush && (() => new WebPushSender(p.webpush!))),
      webhook: pick("webhook", p.webhook && (() => new WebhookSender(p.webhook!))),
    },
    configured,
  };
}
