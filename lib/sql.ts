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

/** Postgres SQLSTATE of a unique violation. */
export const UNIQUE_VIOLATION = "23505";

export function sqlState(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err ? String((err as { code: unknown }).code) : undefined;
}

/**
 * Applies the migrations of one component (a service's schema) that are not applied
 * yet, each in its own transaction, in version order. Safe to call at every start.
 */
export async function migrate(sql: Sql, component: string, migrations: readonly Migration[]): Promise<void> {
  await sql.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    component text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
  )`);
  const done = new Set(
    (await sql.query<{ version: number }>("SELECT version FROM schema_migrations WHERE component = $1", [component])).map(
      (r) => r.version,
    ),
  );
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (done.has(m.version)) continue;
    await sql.transaction(async (tx) => {
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
