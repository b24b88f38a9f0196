import assert from "node:assert/strict";
import { after, test } from "node:test";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { migrate, type Sql } from "../../../lib/sql.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { openSqlAccountStore, SESSION_MIGRATIONS } from "../src/account-store-sql.js";
import { describeAccountStore } from "./account-store.contract.js";

// One in-memory PGlite for the whole file (each instance costs ~1.7 s and ~1 GB), and
// with a real server a schema of this file's own on it, dropped at the end. Both are
// opened before any test is registered: node:test may start running tests (and the
// file's after hooks) at a top-level await.
const sql = await openPglite();
const postgresUrl = realBackend("postgres");
const postgres = postgresUrl ? await openPostgresInNewSchema(postgresUrl, "parley_test_session") : undefined;
after(() => sql.close());
if (postgres) after(() => postgres.close());

describeAccountStore("sql on PGlite", async () => ({
  store: await openSqlAccountStore(sql),
  close: async () => {},
}));

if (postgres) {
  describeAccountStore("sql on Postgres (real server)", async () => ({
    store: await openSqlAccountStore(postgres),
    close: async () => {},
  }));
}

const databases: [string, Sql][] = [["PGlite", sql]];
if (postgres) databases.push(["Postgres (real server)", postgres]);
for (const [name, db] of databases) {
  test(`migrations apply once and are safe to run at every start (${name})`, async () => {
    await openSqlAccountStore(db);
    await migrate(db, "session", SESSION_MIGRATIONS);
    const rows = await db.query<{ version: number }>(
      "SELECT version FROM schema_migrations WHERE component = 'session' ORDER BY version",
    );
    assert.deepEqual(
      rows.map((r) => r.version),
      SESSION_MIGRATIONS.map((m) => m.version),
    );
  });
}
