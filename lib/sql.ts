import { ConfigError, type Env } from "./env.js";

/**
 * The relational port: the little of SQL that Parley's relational adapters need.
 * Two adapters serve it: PGlite (embedded, the default) and `pg` (a Postgres
 * server). Both speak the same Postgres dialect, so each store's SQL is written once.
 */
export interface SqlExecutor {
  query<R = Record<string, unknown>>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

export interface Sql extends SqlExecutor {
  /** Runs `fn` in one transaction; it commits when `fn` resolves and rolls back when it throws. */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  /** Runs several statements separated by semicolons (migrations). */
  exec(text: string): Promise<void>;
  close(): Promise<void>;
}

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * `PARLEY_POSTGRES_URL` (`postgres://user:password@host:port/database`): the Postgres
 * server the relational services use; undefined (unset) selects the embedded PGlite.
 */
export function postgresUrlFromEnv(env: Env): string | undefined {
  const url = env.PARLEY_POSTGRES_URL?.trim();
  if (!url) return undefined;
  if (!/^postgres(ql)?:\/\/./.test(url)) {
    throw new ConfigError("PARLEY_POSTGRES_URL: must be a postgres:// or postgresql:// URL");
  }
  return url;
}

/** Postgres SQLSTATE of a unique violation. */
export const UNIQUE_VIOLATION = "23505";

export function sqlState(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err ? String((err as { code: unknown }).code) : undefined;
}

/**
 * The database cannot be reached (down, restarting, refusing connections, closed): the
 * call may succeed later. Adapters throw it with the driver's error as `cause`; callers
 * test with `isUnavailable`, which also recognises the raw driver errors.
 */
export class SqlUnavailableError extends Error {
  override readonly name = "SqlUnavailableError";
}

/** Node socket errors that mean "no connection to the database server". */
const NETWORK_ERRORS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** Driver messages without a code that mean the same (pg's pool and client, PGlite). */
const UNAVAILABLE_MESSAGES = [
  /^timeout exceeded when trying to connect/i,
  /^Connection terminated/i,
  /connection error and is not queryable/i,
  /^Client was closed and is not queryable/i,
  /^Cannot use a pool after calling end/i,
  /^PGlite is closed/i,
];

/**
 * True when `err` (or an error in its `cause` chain) says the database is unreachable,
 * rather than that the statement is wrong: map it to UNAVAILABLE, not INTERNAL.
 * SQLSTATE classes 08 (connection exception), 57P01-57P03 (server shutting down or
 * starting) and 53300 (too many connections) count as unreachable.
 */
export function isUnavailable(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof SqlUnavailableError) return true;
    const code = sqlState(e);
    if (code !== undefined) {
      if (NETWORK_ERRORS.has(code) || code.startsWith("08") || /^57P0[123]$/.test(code) || code === "53300") return true;
    }
    if (UNAVAILABLE_MESSAGES.some((re) => re.test(e.message))) return true;
  }
  return false;
}

/**
 * Every migration transaction first takes this transaction-scoped advisory lock, so
 * service instances starting at once against one database apply each migration once
 * (the others wait, then see it applied). One key for all components: migrations are rare.
 */
const MIGRATION_LOCK_KEY = 0x7061726c; // "parl"

/**
 * Applies the migrations of one component (a service's schema) that are not applied
 * yet, each in its own transaction, in version order. Safe to call at every start, and
 * from several processes at once (advisory lock, re-checked inside each transaction).
 */
export async function migrate(sql: Sql, component: string, migrations: readonly Migration[]): Promise<void> {
  const lock = (tx: SqlExecutor) => tx.query("SELECT pg_advisory_xact_lock($1::bigint)", [MIGRATION_LOCK_KEY]);
  const applied = async (tx: SqlExecutor) =>
    new Set(
      (
        await tx.query<{ version: number }>("SELECT version FROM schema_migrations WHERE component = $1", [component])
      ).map((r) => r.version),
    );
  // CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin: hold the lock.
  const done = await sql.transaction(async (tx) => {
    await lock(tx);
    await tx.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      component text NOT NULL,
      version integer NOT NULL,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (component, version)
    )`);
    return applied(tx);
  });
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (done.has(m.version)) continue;
    await sql.transaction(async (tx) => {
      await lock(tx);
      if ((await applied(tx)).has(m.version)) return; // another instance got there first
      for (const stmt of splitStatements(m.sql)) await tx.query(stmt);
      await tx.query("INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)", [
        component,
        m.version,
        m.name,
      ]);
    });
  }
}

function splitStatements(text: string): string[] {
  return text
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
