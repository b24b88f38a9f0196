import { randomBytes } from "node:crypto";
import { realBackend } from "../../../lib/testing/backends.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { CassandraMessageRepository } from "../src/message-repository-cassandra.js";
import { SqlMessageRepository } from "../src/message-repository-sql.js";
import { describeMessageRepository } from "./message-repository.contract.js";
import { MemoryMessageRepository } from "./memory-message-repository.js";

describeMessageRepository("sql on PGlite (embedded)", async () => {
  const sql = await openPglite();
  const repository = await SqlMessageRepository.create(sql);
  return { repository, close: () => sql.close() };
});

const postgresUrl = realBackend("postgres");
if (postgresUrl) {
  describeMessageRepository("sql on Postgres (real server)", async () => {
    // A schema of this suite's own on the shared server; closing drops it.
    const sql = await openPostgresInNewSchema(postgresUrl, "parley_test_messagestore");
    const repository = await SqlMessageRepository.create(sql);
    return { repository, close: () => sql.close() };
  });
}

// The in-memory fake the sequencer tests use keeps the same contract.
describeMessageRepository("memory (test fake)", async () => ({
  repository: new MemoryMessageRepository(),
  close: async () => {},
}));

const cassandra = realBackend("cassandra");
if (cassandra) {
  // A fresh keyspace for this file, dropped at the end.
  describeMessageRepository("cassandra (real server)", async () => {
    const repository = await CassandraMessageRepository.create({
      contactPoints: cassandra.split(","),
      localDataCenter: process.env.PARLEY_TEST_CASSANDRA_DATACENTER ?? "datacenter1",
      keyspace: `parley_test_${randomBytes(6).toString("hex")}`,
    });
    return {
      repository,
      close: async () => {
        try {
          await repository.dropKeyspace();
        } finally {
          await repository.close();
        }
      },
    };
  });
}
