import { openPglite } from "../../../lib/sql-pglite.js";
import { SqlMessageRepository } from "../src/message-repository-sql.js";
import { describeMessageRepository } from "./message-repository.contract.js";
import { MemoryMessageRepository } from "./memory-message-repository.js";

describeMessageRepository("sql on PGlite (embedded)", async () => {
  const sql = await openPglite();
  const repository = await SqlMessageRepository.create(sql);
  return { repository, close: () => sql.close() };
});

// The in-memory fake the sequencer tests use keeps the same contract.
describeMessageRepository("memory (test fake)", async () => ({
  repository: new MemoryMessageRepository(),
  close: async () => {},
}));
