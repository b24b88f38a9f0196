import assert from "node:assert/strict";
import { execFile as execFileCb } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { randomUuid } from "../ids.js";
import { openPglite } from "../sql-pglite.js";
import { openPostgres, openPostgresInNewSchema } from "../sql-pg.js";
import { isUnavailable, migrate, SqlUnavailableError, type Migration, type Sql } from "../sql.js";
import { realBackend } from "../testing/backends.js";

const execFile = promisify(execFileCb);

/** The contract of the `Sql` port: what the stores rely on, the same on every adapter. */
function describeSqlPort(name: string, open: () => Promise<Sql>): void {
  describe(`Sql port contract: ${name}`, () => {
    let sql: Sql;
    before(async () => {
      sql = await open();
    });
    after(() => sql.close());

    it("round-trips parameters and returns the same JS shapes", async () => {
      const id = randomUuid();
      const at = new Date(1_700_000_000_123);
      const [row] = await sql.query<Record<string, unknown>>(
        `SELECT $1::uuid AS id, $2::text AS text, $3::bigint AS big, $4::timestamptz AS at, $5::uuid[] AS ids,
                $6::text[] AS texts, $7::bigint[] AS bigs, $8::text AS nothing, $9::bigint AS from_bigint,
                9007199254740993::bigint AS huge, 1.5::float8 AS float, 2::int4 AS int, true AS bool,
                '12.50'::numeric AS numeric, '{"a":[1]}'::jsonb AS json, '\\x0102'::bytea AS bytes,
                '2024-01-02 03:04:05'::timestamp AS local, ARRAY[$4::timestamptz] AS ats`,
        [id, "héllo 👋 'quoted' \\ ;", 42, at, [id], ["a", "b,c", '"d"', "{e}"], [1, 2], null, 7n],
      );
      assert.deepEqual(row, {
        id,
        text: "héllo 👋 'quoted' \\ ;",
        big: 42,
        at,
        ids: [id],
        texts: ["a", "b,c", '"d"', "{e}"],
        bigs: [1, 2],
        nothing: null,
        from_bigint: 7,
        huge: 9007199254740993n,
        float: 1.5,
        int: 2,
        bool: true,
        numeric: "12.50",
        json: { a: [1] },
        bytes: new Uint8Array([1, 2]),
        local: new Date("2024-01-02T03:04:05Z"),
        ats: [at],
      });
    });

    it("returns aggregates as the stores read them (count, max, array_agg)", async () => {
      await sql.exec(`CREATE TABLE agg_t (k uuid NOT NULL, v bigint NOT NULL)`);
      const k = randomUuid();
      await sql.query("INSERT INTO agg_t (k, v) SELECT $1, * FROM unnest($2::bigint[])", [k, [3, 1, 2]]);
      const [row] = await sql.query(
        "SELECT count(*) AS n, max(v) AS top, array_agg(v ORDER BY v) AS vs, array_agg(k::text) AS ks FROM agg_t",
      );
      assert.deepEqual(row, { n: 3, top: 3, vs: [1, 2, 3], ks: [k, k, k] });
    });

    it("commits a transaction and returns its value", async () => {
      await sql.exec("CREATE TABLE tx_commit (id uuid PRIMARY KEY)");
      const id = randomUuid();
      const result = await sql.transaction(async (tx) => {
        await tx.query("INSERT INTO tx_commit (id) VALUES ($1)", [id]);
        return (await tx.query<{ id: string }>("SELECT id FROM tx_commit")).map((r) => r.id);
      });
      assert.deepEqual(result, [id]);
      assert.deepEqual(await sql.query("SELECT id FROM tx_commit"), [{ id }]);
    });

    it("rolls a transaction back when it throws, rethrowing the same error", async () => {
      await sql.exec("CREATE TABLE tx_rollback (id uuid PRIMARY KEY)");
      const boom = new Error("boom");
      await assert.rejects(
        sql.transaction(async (tx) => {
          await tx.query("INSERT INTO tx_rollback (id) VALUES ($1)", [randomUuid()]);
          throw boom;
        }),
        (err) => err === boom,
      );
      // A failing statement also rolls back, and keeps its SQLSTATE.
      const id = randomUuid();
      await assert.rejects(
        sql.transaction(async (tx) => {
          await tx.query("INSERT INTO tx_rollback (id) VALUES ($1)", [id]);
          await tx.query("INSERT INTO tx_rollback (id) VALUES ($1)", [id]);
        }),
        (err: unknown) => (err as { code?: string }).code === "23505" && !isUnavailable(err),
      );
      assert.deepEqual(await sql.query("SELECT id FROM tx_rollback"), []);
      // The database is still usable afterwards (the connection went back clean).
      for (let i = 0; i < 12; i++) assert.deepEqual(await sql.query("SELECT 1 AS one"), [{ one: 1 }]);
    });

    it("runs several statements with exec", async () => {
      await sql.exec(`
        CREATE TABLE exec_t (n int NOT NULL);
        INSERT INTO exec_t VALUES (1);
        INSERT INTO exec_t VALUES (2);
      `);
      assert.deepEqual(await sql.query("SELECT n FROM exec_t ORDER BY n"), [{ n: 1 }, { n: 2 }]);
    });

    it("migrates idempotently: each migration once, in version order", async () => {
      const component = `c_${randomUuid()}`;
      const migrations: Migration[] = [
        { version: 2, name: "second", sql: "ALTER TABLE mig_a ADD COLUMN b int;\nINSERT INTO mig_a (a, b) VALUES (2, 2);" },
        { version: 1, name: "first", sql: "CREATE TABLE mig_a (a int);\nINSERT INTO mig_a (a) VALUES (1);" },
      ];
      await migrate(sql, component, migrations);
      await migrate(sql, component, migrations);
      assert.deepEqual(await sql.query("SELECT a, b FROM mig_a ORDER BY a"), [
        { a: 1, b: null },
        { a: 2, b: 2 },
      ]);
      const applied = await sql.query("SELECT version, name FROM schema_migrations WHERE component = $1 ORDER BY version", [
        component,
      ]);
      assert.deepEqual(applied, [
        { version: 1, name: "first" },
        { version: 2, name: "second" },
      ]);
    });

    it("migrates safely when several instances start at once", async () => {
      const component = `c_${randomUuid()}`;
      const migrations: Migration[] = [
        { version: 1, name: "table", sql: "CREATE TABLE mig_c (n int);\nINSERT INTO mig_c VALUES (1);" },
        { version: 2, name: "row", sql: "INSERT INTO mig_c VALUES (2);" },
      ];
      await Promise.all(Array.from({ length: 5 }, () => migrate(sql, component, migrations)));
      assert.deepEqual(await sql.query("SELECT n FROM mig_c ORDER BY n"), [{ n: 1 }, { n: 2 }]);
      const [count] = await sql.query("SELECT count(*) AS n FROM schema_migrations WHERE component = $1", [component]);
      assert.deepEqual(count, { n: 2 });
    });
  });
}

describeSqlPort("PGlite (embedded)", () => openPglite());

const postgresUrl = realBackend("postgres");
if (postgresUrl) {
  describeSqlPort("Postgres (real server)", () => openPostgresInNewSchema(postgresUrl, "parley_test_sql"));

  describe("Postgres adapter (real server)", () => {
    it("migrates once when two pools (two service instances) start at once on fresh tables", async () => {
      const a = await openPostgresInNewSchema(postgresUrl, "parley_test_sql");
      const b = await openPostgres(postgresUrl, { searchPath: a.schema });
      try {
        const migrations: Migration[] = [
          { version: 1, name: "t", sql: "CREATE TABLE twin (n int);\nINSERT INTO twin VALUES (1);" },
        ];
        // Both also race to create schema_migrations itself.
        await Promise.all([migrate(a, "twin", migrations), migrate(b, "twin", migrations), migrate(a, "twin", migrations)]);
        assert.deepEqual(await b.query("SELECT n FROM twin"), [{ n: 1 }]);
      } finally {
        await b.close();
        await a.close();
      }
    });

    it("fails at open when the URL names no reachable server", async () => {
      const port = await freePort();
      const started = Date.now();
      await assert.rejects(openPostgres(`postgres://postgres@127.0.0.1:${port}/postgres`), SqlUnavailableError);
      assert.ok(Date.now() - started < 3000, "fails fast");
    });

    it("keeps the driver's error for a bad statement (not unavailable)", async () => {
      const sql = await openPostgres(postgresUrl, { poolSize: 1 });
      try {
        await assert.rejects(sql.query("SELECT * FROM no_such_table_anywhere"), (err: unknown) => {
          assert.equal((err as { code?: string }).code, "42P01");
          assert.equal(isUnavailable(err), false);
          return true;
        });
      } finally {
        await sql.close();
      }
    });
  });

  describe("Postgres adapter: server down and back (throwaway server)", () => {
    let server: ThrowawayPostgres;
    before(async () => {
      server = await ThrowawayPostgres.create();
    });
    after(() => server?.destroy());

    it("fails fast with an unavailable error while the server is down, then recovers by itself", async () => {
      const idleErrors: Error[] = [];
      const sql = await openPostgres(server.url, { poolSize: 3, onIdleError: (err) => idleErrors.push(err) });
      try {
        // Fill the pool with idle connections that the shutdown will break.
        await Promise.all([1, 2, 3].map(() => sql.query("SELECT pg_sleep(0.05)")));
        await server.stop();

        for (const call of [
          () => sql.query("SELECT 1"),
          () => sql.transaction((tx) => tx.query("SELECT 1")),
          () => sql.exec("SELECT 1; SELECT 2"),
        ]) {
          const started = Date.now();
          await assert.rejects(call(), (err: unknown) => {
            assert.ok(err instanceof SqlUnavailableError, `unavailable, got ${String(err)}`);
            assert.ok(isUnavailable(err));
            return true;
          });
          assert.ok(Date.now() - started < 3000, `failed after ${Date.now() - started} ms`);
        }

        await server.start();
        const deadline = Date.now() + 10_000;
        for (;;) {
          try {
            assert.deepEqual(await sql.query("SELECT 1 AS one"), [{ one: 1 }]);
            break;
          } catch (err) {
            if (!isUnavailable(err) || Date.now() > deadline) throw err;
          }
        }
        assert.deepEqual(await sql.transaction((tx) => tx.query("SELECT 2 AS two")), [{ two: 2 }]);
        await Promise.all([1, 2, 3, 4, 5].map((n) => sql.query("SELECT $1::int AS n", [n])));
      } finally {
        await sql.close();
      }
    });
  });
}

it("recognises unavailable errors by class, SQLSTATE, socket code and cause", () => {
  const withCode = (code: string) => Object.assign(new Error("x"), { code });
  assert.ok(isUnavailable(new SqlUnavailableError("down")));
  assert.ok(isUnavailable(withCode("ECONNREFUSED")));
  assert.ok(isUnavailable(withCode("57P01")));
  assert.ok(isUnavailable(withCode("08006")));
  assert.ok(isUnavailable(new Error("PGlite is closed")));
  assert.ok(isUnavailable(new Error("wrapped", { cause: new Error("Connection terminated unexpectedly") })));
  assert.ok(!isUnavailable(withCode("23505")));
  assert.ok(!isUnavailable(new Error("syntax")));
  assert.ok(!isUnavailable("ECONNREFUSED"));
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A Postgres server of its own (initdb in a temp dir, a free port) that a test may stop and start. */
class ThrowawayPostgres {
  private constructor(
    private readonly bin: string,
    private readonly dir: string,
    private readonly port: number,
  ) {}

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  static async create(): Promise<ThrowawayPostgres> {
    const bin = postgresBinDir();
    const asRoot = process.getuid?.() === 0;
    // initdb refuses to run as root: then the server belongs to the postgres user.
    const dir = asRoot
      ? (await execFile("runuser", ["-u", "postgres", "--", "mktemp", "-d", join(tmpdir(), "parley-pg-XXXXXX")])).stdout.trim()
      : await mkdtemp(join(tmpdir(), "parley-pg-"));
    const server = new ThrowawayPostgres(bin, dir, await freePort());
    await server.run("initdb", ["-D", join(dir, "data"), "-U", "postgres", "-A", "trust", "--no-sync"]);
    await server.start();
    return server;
  }

  async start(): Promise<void> {
    const options = `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
    await this.run("pg_ctl", ["-D", join(this.dir, "data"), "-l", join(this.dir, "log"), "-w", "-o", options, "start"]);
  }

  async stop(): Promise<void> {
    await this.run("pg_ctl", ["-D", join(this.dir, "data"), "-m", "fast", "-w", "stop"]);
  }

  async destroy(): Promise<void> {
    try {
      await this.stop();
    } catch {
      // already stopped
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  private async run(tool: string, args: string[]): Promise<void> {
    const exe = join(this.bin, tool);
    if (process.getuid?.() === 0) await execFile("runuser", ["-u", "postgres", "--", exe, ...args]);
    else await execFile(exe, args);
  }
}

/** Where initdb and pg_ctl live: $PARLEY_POSTGRES_BIN, else the newest /usr/lib/postgresql/<n>/bin. */
function postgresBinDir(): string {
  const configured = process.env.PARLEY_POSTGRES_BIN;
  if (configured) return configured;
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(join(root, v, "bin", "initdb")))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) throw new Error("no Postgres binaries found: set PARLEY_POSTGRES_BIN to the directory of initdb");
  return join(root, versions[0]!, "bin");
}
