import assert from "node:assert/strict";
import { after, test } from "node:test";
import { openPglite } from "../../../lib/sql-pglite.js";
import { migrate } from "../../../lib/sql.js";
import { openSqlAccountStore, SESSION_MIGRATIONS } from "../src/account-store-sql.js";
import { describeAccountStore } from "./account-store.contract.js";

// One in-memory PGlite for the whole file (each instance costs ~1.7 s and ~1 GB).
const sql = await openPglite();
after(() => sql.close());

describeAccountStore("sql on PGlite", async () => ({
  store: await openSqlAccountStore(sql),
  close: async () => {},
}));

test("migrations apply once and are safe to run at every start", async () => {
  await openSqlAccountStore(sql);
  await migrate(sql, "session", SESSION_MIGRATIONS);
  const rows = await sql.query<{ version: number }>(
    "SELECT version FROM schema_migrations WHERE component = 'session' ORDER BY version",
  );
  assert.deepEqual(
    rows.map((r) => r.version),
    SESSION_MIGRATIONS.map((m) => m.version),
  );
});
