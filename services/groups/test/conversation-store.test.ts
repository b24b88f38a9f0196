import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { SqlConversationStore } from "../src/conversation-store-sql.js";
import { describeConversationStore } from "./conversation-store.contract.js";

describeConversationStore("sql on PGlite (embedded)", async () => {
  const sql = await openPglite();
  const store = await SqlConversationStore.open(sql);
  return Object.assign(store, { dispose: () => sql.close() });
});

const postgresUrl = realBackend("postgres");
if (postgresUrl) {
  describeConversationStore("sql on Postgres (real server)", async () => {
    // A schema of this suite's own on the shared server; closing drops it.
    const sql = await openPostgresInNewSchema(postgresUrl, "parley_test_groups");
    const store = await SqlConversationStore.open(sql);
    return Object.assign(store, { dispose: () => sql.close() });
  });
}
