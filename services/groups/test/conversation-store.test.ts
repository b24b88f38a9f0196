import { openPglite } from "../../../lib/sql-pglite.js";
import { SqlConversationStore } from "../src/conversation-store-sql.js";
import { describeConversationStore } from "./conversation-store.contract.js";

describeConversationStore("sql on PGlite (embedded)", async () => {
  const sql = await openPglite();
  const store = await SqlConversationStore.open(sql);
  return Object.assign(store, { dispose: () => sql.close() });
});
