import { randomBytes } from "node:crypto";
import pg from "pg";
import { isUnavailable, SqlUnavailableError, type Sql, type SqlExecutor } from "./sql.js";
import { backendCall, statementOperation } from "./telemetry/backend.js";

export interface PostgresOptions {
  /** Most connections the pool opens (default 10). */
  poolSize?: number;
  /** How long to wait for a connection before failing with `SqlUnavailableError` (default 2000 ms). */
  connectTimeoutMs?: number;
  /** How long an unused connection stays open (default 30 000 ms). */
  idleTimeoutMs?: number;
  /** Schema search path of every connection (tests: a schema per test file). */
  searchPath?: string;
  /** Told about errors of idle connections (the server went away); the pool drops them. */
  onIdleError?: (err: Error) => void;
}

/**
 * The relational adapter for a Postgres server: a `pg` pool. Rows come back in the
 * shapes the embedded PGlite adapter returns (see `pgliteTypes`), so each store's
 * code is the same on both. Errors meaning "the server is unreachable" are rethrown as
 * `SqlUnavailableError`; the pool reconnects by itself when the server returns.
 * Resolves once one connection succeeded (a wrong URL fails here, not at first use).
 */
export async function openPostgres(url: string, opts: PostgresOptions = {}): Promise<Sql> {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.poolSize ?? 10,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 2000,
    idleTimeoutMillis: opts.idleTimeoutMs ?? 30_000,
    keepAlive: true,
    types: pgliteTypes(),
    ...(opts.searchPath !== undefined && { options: `-c search_path=${opts.searchPath}` }),
  });
  // An idle connection that breaks (server restart) emits here; without a listener the
  // process would crash. The pool has already discarded it.
  pool.on("error", (err) => opts.onIdleError?.(err));

  const database = databaseName(url);
  // Every statement is traced (under the caller's span) and measured (lib/telemetry/backend.ts).
  const run = (q: pg.Pool | pg.PoolClient, text: string, params?: readonly unknown[]) =>
    backendCall("postgresql", () => statementOperation(text), () => q.query(text, params as unknown[] | undefined), {
      attributes: () => ({ "db.query.text": text.length > 2000 ? `${text.slice(0, 2000)}…` : text, ...(database && { "db.namespace": database }) }),
    });
  const executor = (q: pg.Pool | pg.PoolClient): SqlExecutor => ({
    async query<R>(text: string, params?: readonly unknown[]) {
      try {
        const res = await run(q, text, params);
        return res.rows as R[];
      } catch (err) {
        throw classify(err);
      }
    },
  });

  const sql: Sql = {
    ...executor(pool),
    async transaction(fn) {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw classify(err);
      }
      let broken: Error | undefined;
      try {
        const tx = executor(client);
        await tx.query("BEGIN");
        let result;
        try {
          result = await fn(tx);
        } catch (err) {
          try {
            await run(client, "ROLLBACK");
          } catch (rollbackErr) {
            broken = rollbackErr as Error;
          }
          throw err;
        }
        await tx.query("COMMIT");
        return result;
      } catch (err) {
        if (isUnavailable(err)) broken ??= err as Error;
        throw err;
      } finally {
        // A connection that failed mid-transaction is destroyed, not reused.
        client.release(broken);
      }
    },
    async exec(text) {
      try {
        await run(pool, text);
      } catch (err) {
        throw classify(err);
      }
    },
    close: () => pool.end(),
  };
  // Fail at start when the server or the URL is wrong.
  await sql.query("SELECT 1").catch(async (err) => {
    await pool.end();
    throw err;
  });
  return sql;
}

/**
 * Opens `url` inside a new, empty schema `<prefix>_<random>` (its search path), so
 * several users of one server (test files) do not see each other's tables; `close()`
 * drops the schema with everything in it, then closes the pool.
 */
export async function openPostgresInNewSchema(
  url: string,
  prefix = "parley_test",
  opts: Omit<PostgresOptions, "searchPath"> = {},
): Promise<Sql & { schema: string }> {
  const schema = `${prefix}_${randomBytes(6).toString("hex")}`;
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new Error(`invalid schema name ${schema}`);
  // A search path naming a schema that does not exist yet is allowed; it applies once created.
  const sql = await openPostgres(url, { ...opts, searchPath: schema });
  try {
    await sql.exec(`CREATE SCHEMA ${schema}`);
  } catch (err) {
    await sql.close();
    throw err;
  }
  return {
    ...sql,
    schema,
    async close() {
      try {
        await sql.exec(`DROP SCHEMA ${schema} CASCADE`);
      } finally {
        await sql.close();
      }
    },
  };
}

/** The database a connection string names (for span attributes), if it parses. */
function databaseName(url: string): string | undefined {
  try {
    return decodeURIComponent(new URL(url).pathname.slice(1)) || undefined;
  } catch {
    return undefined;
  }
}

function classify(err: unknown): unknown {
  if (err instanceof SqlUnavailableError || !isUnavailable(err)) return err;
  const detail = err instanceof Error && err.message ? err.message : String(err);
  return new SqlUnavailableError(`database unavailable: ${detail}`, { cause: err });
}

/** OIDs of the Postgres types whose default `pg` parsing differs from PGlite's. */
const OID = {
  bytea: 17,
  byteaArray: 1001,
  int8: 20,
  int8Array: 1016,
  date: 1082,
  dateArray: 1182,
  timestamp: 1114,
  timestampArray: 1115,
  interval: 1186,
  intervalArray: 1187,
} as const;

/**
 * Type parsers for one pool (not the process-wide `pg.types`) that return what PGlite
 * returns: bigint as a number (a `bigint` beyond 2^53), bytea as a plain Uint8Array, timestamp and date without a
 * zone read as UTC, interval as its text. timestamptz → Date, uuid/text/numeric →
 * string, json(b) → value and arrays → JS arrays are the same in both already.
 */
export function pgliteTypes(): pg.CustomTypesConfig {
  const types = new pg.TypeOverrides();
  const textParser = (oid: number) => pg.types.getTypeParser(oid, "text") as (v: string) => unknown;
  const parseArray = textParser(1009) as (v: string) => string[]; // text[]: elements as raw strings
  const arrayOf =
    <T>(element: (v: string) => T) =>
    (v: string) =>
      nestedMap(parseArray(v), element);

  const int8 = (v: string): number | bigint => {
    const n = Number(v);
    return Number.isSafeInteger(n) ? n : BigInt(v);
  };
  const timestamptz = textParser(1184);
  // Only plain AD values get the UTC suffix; 'infinity' and BC dates keep the default.
  const timestamp = (v: string) => (/^\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?$/.test(v) ? timestamptz(`${v}+00`) : timestamptz(v));
  const date = (v: string) => (/^\d{4}-\d\d-\d\d$/.test(v) ? new Date(`${v}T00:00:00Z`) : textParser(OID.date)(v));
  const text = (v: string) => v;
  const parseBytea = textParser(OID.bytea) as (v: string) => Buffer;
  const bytea = (v: string) => {
    const b = parseBytea(v);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  };

  types.setTypeParser(OID.int8, int8);
  types.setTypeParser(OID.int8Array, arrayOf(int8));
  types.setTypeParser(OID.timestamp, timestamp);
  types.setTypeParser(OID.timestampArray, arrayOf(timestamp));
  types.setTypeParser(OID.date, date);
  types.setTypeParser(OID.dateArray, arrayOf(date));
  types.setTypeParser(OID.bytea, bytea);
  types.setTypeParser(OID.byteaArray, arrayOf(bytea));
  types.setTypeParser(OID.interval, text);
  types.setTypeParser(OID.intervalArray, arrayOf(text));
  return types;
}

type Nested<T> = T | null | Nested<T>[];

function nestedMap<T>(values: unknown[], f: (v: string) => T): Nested<T>[] {
  return values.map((v) => (v === null ? null : Array.isArray(v) ? nestedMap(v, f) : f(v as string)));
}
