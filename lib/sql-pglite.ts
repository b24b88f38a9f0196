import { PGlite } from "@electric-sql/pglite";
import type { Sql, SqlExecutor } from "./sql.js";

/**
 * The embedded relational adapter. PGlite is one Postgres per data directory and
 * costs ~1 GB of memory, so a process opens one and every store shares it.
 * `dataDir` undefined keeps everything in memory (tests).
 */
export async function openPglite(dataDir?: string): Promise<Sql> {
  const db = await PGlite.create(dataDir);
  const executor = (q: Pick<PGlite, "query">): SqlExecutor => ({
    async query<R>(text: string, params?: readonly unknown[]) {
      const res = await q.query<R>(text, params as unknown[] | undefined);
      return res.rows;
    },
  });
  return {
    ...executor(db),
    transaction: (fn) => db.transaction((tx) => fn(executor(tx))),
    async exec(text) {
      await db.exec(text);
    },
    close: () => db.close(),
  };
}
