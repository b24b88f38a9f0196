import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { SqlPushStore } from "../src/push-store-sql.js";
import { describePushStore } from "./push-store.contract.js";

describePushStore("sql on PGlite (embedded)", async () => {
  const sql = await openPglite();
  const store = await SqlPushStore.open(sql);
  return Object.assign(store, { dispose: () => sql.close() });
});

const postgresUrl = realBackend("postgres");
if (postgresUrl) {
  describePushStore("sql on Postgres (real server)", async () => {
    // A schema of this suite's own on the shared server; closing drops it.
    const sql = await openPostgresInNewSchema(postgresUrl, "parley_test_notify");
    const store = await SqlPushStore.open(sql);
    return Object.assign(store, { dispose: () => sql.close() });
  });
}
