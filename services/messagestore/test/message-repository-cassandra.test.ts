/**
 * Cassandra-only behaviour of the message repository (the shared contract runs in
 * message-repository.test.ts): bucketed partitions, the crash window between reserving
 * seqs and writing the messages, an outcome-unknown reservation, two message store
 * instances racing and failing over, and a cluster that goes away and comes back.
 * Registered when PARLEY_TEST_CASSANDRA is set (required when PARLEY_REQUIRE_REAL_BACKENDS=1).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, connect, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import cassandra from "cassandra-driver";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { ConfigError } from "../../../lib/env.js";
import { createClient, inProcess } from "../../../lib/rpc.js";
import { loadConfig } from "../src/config.js";
import { MessageStoreContext } from "../src/context.js";
import { SeqConflictError, StoreUnavailableError } from "../src/errors.js";
import {
  CassandraMessageRepository,
  type CassandraFaults,
  type CassandraMessageRepositoryOptions,
} from "../src/message-repository-cassandra.js";
import { messageStoreRoutes } from "../src/routes.js";
import { toConnectError } from "../src/routes/errors.js";
import { Sequencer, type AppendInput, type AppendResult } from "../src/sequencer.js";
import { eventBytes, eventMessages, messages } from "./message-repository.contract.js";

const server = realBackend("cassandra");
const silent = createLogger("messagestore", "silent");
const BUCKET = 10;


function appendInput(conversationId: string, n: number): AppendInput {
  return { conversationId, senderId: randomUuid(), senderDeviceId: randomUuid(), clientMsgId: randomUuid(), body: `m${n}` };
}

/** Checks a conversation's stored log against the acknowledged appends: 1..n, each ack stored as acked. */
async function assertLog(repo: CassandraMessageRepository, conversationId: string, acks: readonly AppendResult[], expected: number) {
  const log = [];
  for (let before = 0; ; ) {
    const page = await repo.history(conversationId, before, 200);
    if (page.length === 0) break;
    log.push(...page);
    before = page[page.length - 1]!.seq;
  }
  assert.deepEqual(
    log.map((m) => m.seq),
    Array.from({ length: expected }, (_, i) => expected - i),
    "seqs 1..n, each once, no gap",
  );
  const bySeq = new Map(log.map((m) => [m.seq, m]));
  for (const a of acks) assert.deepEqual(bySeq.get(a.message.seq), a.message, "an acknowledged message is stored as acknowledged");
  assert.equal(new Set(log.map((m) => `${m.senderId}/${m.clientMsgId}`)).size, log.length, "one message per idempotency key");
  assert.equal(await repo.lastSeq(conversationId), expected);
}

/** A TCP proxy in front of the server: `stop()` is a cluster that went away, `start()` its return. */
class Proxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    const srv = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (srv.address() as { port: number }).port;
    this.server = srv;
  }

  async stop(): Promise<void> {
    const srv = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (srv) await new Promise<void>((resolve) => srv.close(() => resolve()));
  }
}

describe("message store config: Cassandra", () => {
  it("is off unless PARLEY_CASSANDRA_CONTACT_POINTS is set, with keyspace and datacenter defaults", () => {
    assert.equal(loadConfig({}).cassandra, undefined);
    assert.deepEqual(loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: "10.0.0.1:9042, cass-2" }).cassandra, {
      contactPoints: ["10.0.0.1:9042", "cass-2"],
      keyspace: "parley",
      localDataCenter: "datacenter1",
    });
    assert.deepEqual(
      loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: "h:1", PARLEY_CASSANDRA_KEYSPACE: "chat_eu", PARLEY_CASSANDRA_DATACENTER: "eu-west" }).cassandra,
      { contactPoints: ["h:1"], keyspace: "chat_eu", localDataCenter: "eu-west" },
    );
  });

  it("rejects a malformed contact point or keyspace", () => {
    assert.throws(() => loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: "h:1,,h2" }), ConfigError);
    assert.throws(() => loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: "http://h:1" }), ConfigError);
    assert.throws(() => loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: "h", PARLEY_CASSANDRA_KEYSPACE: "Parley-1" }), ConfigError);
  });
});

if (server) {
  const contactPoints = server.split(",");
  const localDataCenter = process.env.PARLEY_TEST_CASSANDRA_DATACENTER ?? "datacenter1";
  const keyspace = `parley_test_${randomBytes(6).toString("hex")}`;
  const open = (extra: Partial<CassandraMessageRepositoryOptions> = {}) =>
    CassandraMessageRepository.create({ contactPoints, localDataCenter, keyspace, bucketSize: BUCKET, ...extra });

  describe("CassandraMessageRepository (real server)", () => {
    let repo: CassandraMessageRepository;
    /** A second instance of the message store (its own driver connections). */
    let other: CassandraMessageRepository;
    let raw: cassandra.Client;
    before(async () => {
      repo = await open();
      other = await open();
      raw = new cassandra.Client({ contactPoints, localDataCenter, keyspace, encoding: { useBigIntAsLong: true } });
      await raw.connect();
    });
    after(async () => {
      try {
        await repo.dropKeyspace();
      } finally {
        await Promise.all([repo.close(), other.close(), raw.shutdown()]);
      }
    });

    it("partitions a conversation into buckets of bucketSize seqs and pages history across them", async () => {
      const c = randomUuid();
      const all = [...messages(c, 1, 9), ...messages(c, 10, 10), ...messages(c, 11, 35)];
      await repo.insert(c, all.slice(0, 9)); // bucket 0
      await repo.insert(c, all.slice(9, 10)); // the first of bucket 1
      await repo.insert(c, all.slice(10)); // 11..35: buckets 1, 2, 3 in one insert
      const rows = await raw.execute("SELECT bucket, seq FROM messages WHERE conversation_id = ? AND bucket IN ?", [c, [0n, 1n, 2n, 3n]], {
        prepare: true,
      });
      for (const r of rows.rows) assert.equal(Number(r.get("bucket")), Math.floor(Number(r.get("seq")) / BUCKET));
      assert.equal(rows.rowLength, 35);

      const seqs = async (before: number, limit: number) => (await other.history(c, before, limit)).map((m) => m.seq);
      const range = (hi: number, lo: number) => Array.from({ length: hi - lo + 1 }, (_, i) => hi - i);
      assert.deepEqual(await seqs(0, 7), range(35, 29));
      assert.deepEqual(await seqs(29, 10), range(28, 19), "crosses 20 → 19");
      assert.deepEqual(await seqs(11, 100), range(10, 1), "crosses 10 → 9 down to the first bucket");
      assert.deepEqual(await seqs(0, 200), range(35, 1));
      assert.deepEqual(await seqs(Number.MAX_SAFE_INTEGER, 3), range(35, 33), "a huge beforeSeq starts at the head");
      assert.deepEqual(await other.history(c, 0, 200), [...all].reverse(), "every field intact across buckets");
      const forward = async (after: number, limit: number) => (await other.range(c, after, limit)).map((m) => m.seq);
      assert.deepEqual(await forward(0, 7), range(7, 1).reverse(), "range: oldest first");
      assert.deepEqual(await forward(7, 5), range(12, 8).reverse(), "range crosses 9 → 10");
      assert.deepEqual(await forward(8, 100), range(35, 9).reverse(), "range crosses every bucket up to the head");
      assert.deepEqual(await forward(19, 1), [20], "range starts at the first seq of a bucket");
      assert.deepEqual(await forward(35, 10), []);
      assert.deepEqual(await other.range(c, 0, 200), all, "every field intact across buckets");
      const found = await other.findByClientMsgIds(c, [all[3]!, all[9]!, all[34]!]);
      assert.deepEqual([...found].sort((x, y) => x.seq - y.seq), [all[3], all[9], all[34]]);
    });

    it("keeps the bucket size the keyspace was written with", async () => {
      await assert.rejects(open({ bucketSize: BUCKET + 1 }), /bucket size 10/);
      const reopened = await open({ bucketSize: undefined });
      try {
        assert.equal(reopened.bucketSize, BUCKET);
      } finally {
        await reopened.close();
      }
    });

    it("rolls forward a batch whose writer crashed after reserving its seqs: no gap, nothing lost", async () => {
      const c = randomUuid();
      await repo.insert(c, messages(c, 1, 2));
      const crashed = messages(c, 3, 12);
      const dying = await open({
        faults: {
          afterReserve: () => {
            throw new Error("crash");
          },
        },
      });
      try {
        await assert.rejects(dying.insert(c, crashed), /crash/);
      } finally {
        await dying.close();
      }
      // The head moved, the rows are missing: a reader sees the hole...
      assert.deepEqual((await other.history(c, 0, 50)).map((m) => m.seq), [2, 1]);
      assert.deepEqual((await other.range(c, 0, 50)).map((m) => m.seq), [1, 2], "range stops before the hole");
      // ... until a writer loads the conversation, which writes the reserved batch.
      assert.equal(await other.lastSeq(c), 12);
      assert.deepEqual((await other.range(c, 1, 50)).map((m) => m.seq), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "range after the roll-forward");
      assert.deepEqual(await other.history(c, 0, 50), [...crashed].reverse().concat(await repo.history(c, 3, 50)));
      assert.deepEqual((await other.findByClientMsgIds(c, crashed)).length, 10);
      await other.insert(c, messages(c, 13, 13));
      assert.deepEqual((await repo.history(c, 0, 50)).map((m) => m.seq), Array.from({ length: 13 }, (_, i) => 13 - i));
      // A reserved seq is never given again.
      await assert.rejects(repo.insert(c, messages(c, 12, 12)), SeqConflictError);
    });

    it("rolls forward a crashed batch of event messages with their events", async () => {
      const c = randomUuid();
      await repo.insert(c, messages(c, 1, 1));
      const crashed = [...eventMessages(c, 2, 4), { ...messages(c, 5, 5)[0]!, body: "", senderDeviceId: "", event: eventBytes(64 * 1024) }];
      const dying = await open({
        faults: {
          afterReserve: () => {
            throw new Error("crash");
          },
        },
      });
      try {
        await assert.rejects(dying.insert(c, crashed), /crash/);
      } finally {
        await dying.close();
      }
      assert.equal(await other.lastSeq(c), 5);
      const history = await other.history(c, 0, 10);
      assert.deepEqual(history.slice(0, 4), [...crashed].reverse(), "events, empty bodies and missing devices as reserved");
      assert.deepEqual(await other.findByClientMsgIds(c, [crashed[0]!]), [crashed[0]]);
      const [head] = await other.heads([c], true);
      assert.deepEqual(head?.lastMessage, crashed[3]);
    });

    it("upgrades a keyspace of schema version 1 (no event column, an old pending batch) in place", async () => {
      const ks = `${keyspace}_v1`;
      const c = randomUuid();
      const [m1, m2] = messages(c, 1, 2);
      const v1 = [
        `CREATE KEYSPACE ${ks} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`,
        `CREATE TABLE ${ks}.schema_version (component text PRIMARY KEY, version int, bucket_size int, applied_at timestamp)`,
        `CREATE TABLE ${ks}.messages (conversation_id uuid, bucket bigint, seq bigint, message_id uuid, sender_id uuid,
           sender_device_id uuid, client_msg_id uuid, body text, sent_at timestamp,
           PRIMARY KEY ((conversation_id, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)`,
        `CREATE TABLE ${ks}.message_keys (conversation_id uuid, sender_id uuid, client_msg_id uuid, seq bigint,
           PRIMARY KEY ((conversation_id), sender_id, client_msg_id))`,
        `CREATE TABLE ${ks}.conversation_heads (conversation_id uuid PRIMARY KEY, last_seq bigint, last_sent_at timestamp, pending text)`,
        `INSERT INTO ${ks}.schema_version (component, version, bucket_size, applied_at) VALUES ('messagestore', 1, ${BUCKET}, toTimestamp(now()))`,
      ];
      for (const q of v1) await raw.execute(q);
      try {
        // Message 1 written; message 2 reserved by version 1 code (a 7-field pending entry) and never written.
        await raw.execute(
          `INSERT INTO ${ks}.messages (conversation_id, bucket, seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at) VALUES (?, 0, 1, ?, ?, ?, ?, ?, ?)`,
          [c, m1!.messageId, m1!.senderId, m1!.senderDeviceId, m1!.clientMsgId, m1!.body, new Date(m1!.sentAtMs)],
          { prepare: true },
        );
        const pending = { ts: Date.now() * 1000, m: [[2, m2!.messageId, m2!.senderId, m2!.senderDeviceId, m2!.clientMsgId, m2!.body, m2!.sentAtMs]] };
        await raw.execute(`INSERT INTO ${ks}.conversation_heads (conversation_id, last_seq, last_sent_at, pending) VALUES (?, 2, ?, ?)`, [
          c,
          new Date(m2!.sentAtMs),
          JSON.stringify(pending),
        ], { prepare: true });

        // Two instances starting together both upgrade.
        const [x, y] = await Promise.all([open({ keyspace: ks }), open({ keyspace: ks })]);
        try {
          const cols = await raw.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'messages' AND column_name = 'event'",
            [ks],
          );
          assert.equal(cols.rowLength, 1);
          const version = await raw.execute(`SELECT version FROM ${ks}.schema_version WHERE component = 'messagestore'`);
          assert.equal(version.first().get("version"), 2);
          assert.equal(await x.lastSeq(c), 2, "the old pending batch rolls forward");
          const [e3] = eventMessages(c, 3, 3);
          await y.insert(c, [e3!]);
          assert.deepEqual(await x.history(c, 0, 10), [e3, m2, m1]);
        } finally {
          await Promise.all([x.close(), y.close()]);
        }
        // A keyspace of a newer version than the code refuses to start.
        await raw.execute(`UPDATE ${ks}.schema_version SET version = 3 WHERE component = 'messagestore'`);
        await assert.rejects(open({ keyspace: ks }), /schema version 3/);
      } finally {
        await raw.execute(`DROP KEYSPACE IF EXISTS ${ks}`);
      }
    });

    it("finds a message whose key row was written but not its message row (half-written batch)", async () => {
      const c = randomUuid();
      const batch = messages(c, 1, 3);
      const dying = await open({
        faults: {
          async afterReserve(conversationId, ms) {
            // Only the key batch lands before the crash.
            const q = "INSERT INTO message_keys (conversation_id, sender_id, client_msg_id, seq) VALUES (?, ?, ?, ?)";
            for (const m of ms) await raw.execute(q, [conversationId, m.senderId, m.clientMsgId, BigInt(m.seq)], { prepare: true });
            throw new Error("crash");
          },
        },
      });
      try {
        await assert.rejects(dying.insert(c, batch), /crash/);
      } finally {
        await dying.close();
      }
      const found = await other.findByClientMsgIds(c, [batch[1]!]);
      assert.deepEqual(found, [batch[1]]);
      assert.deepEqual(await other.history(c, 0, 10), [...batch].reverse());
    });

    it("settles a reservation whose reply was lost with a serial read", async () => {
      const timeout = () => {
        throw new cassandra.errors.OperationTimedOutError("simulated: reply lost");
      };
      const lossy = await open({ faults: { afterReserveAttempt: timeout } });
      try {
        const c = randomUuid();
        const batch = messages(c, 1, 4);
        await lossy.insert(c, batch); // applied, reply "lost": settled as applied, rows written
        assert.deepEqual(await other.history(c, 0, 10), [...batch].reverse());
        await assert.rejects(lossy.insert(c, messages(c, 4, 5)), SeqConflictError, "not applied, reply lost: a conflict");
        assert.equal(await other.lastSeq(c), 4);
      } finally {
        await lossy.close();
      }
    });

    it("two instances racing on the same conversations never give a seq twice and store every acknowledged message", async () => {
      const a = new Sequencer({ repository: repo, logger: silent, maxAttempts: 50 });
      const b = new Sequencer({ repository: other, logger: silent, maxAttempts: 50 });
      try {
        const conversations = Array.from({ length: 8 }, () => randomUuid());
        const PER = 60;
        const calls: Promise<AppendResult>[] = [];
        const sentTwice: [Promise<AppendResult>, Promise<AppendResult>][] = [];
        for (let n = 0; n < PER; n++) {
          for (const c of conversations) {
            const input = appendInput(c, n);
            if (n % 10 === 0) {
              // A client that resends to the other instance before the first answered.
              const pair: [Promise<AppendResult>, Promise<AppendResult>] = [a.append(input), b.append(input)];
              sentTwice.push(pair);
              calls.push(...pair);
            } else calls.push((n % 2 === 0 ? a : b).append(input));
          }
        }
        const acks = await Promise.all(calls);
        for (const [x, y] of sentTwice) {
          const [r1, r2] = [await x, await y];
          assert.deepEqual(r1.message, r2.message, "one message for one idempotency key");
          assert.equal([r1.duplicate, r2.duplicate].filter(Boolean).length, 1);
        }
        for (const c of conversations) {
          const mine = acks.filter((r) => r.message.conversationId === c);
          const fresh = mine.filter((r) => !r.duplicate);
          assert.equal(fresh.length, PER);
          assert.equal(new Set(fresh.map((r) => r.message.seq)).size, PER, "no seq twice");
          await assertLog(repo, c, mine, PER);
        }
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    it("fails over: an instance dies holding a reserved batch, the other continues without a gap or a lost ack", async () => {
      const c = randomUuid();
      let crashed!: () => void;
      const stuck = new Promise<void>((_, reject) => (crashed = () => reject(new Error("process died"))));
      let reserved!: () => void;
      const hasReserved = new Promise<void>((resolve) => (reserved = resolve));
      const faults: CassandraFaults = {
        async afterReserve() {
          reserved();
          await stuck; // frozen between the reservation and the writes, like a dead process
        },
      };
      const doomedRepo = await open({ faults });
      const doomed = new Sequencer({ repository: doomedRepo, logger: silent });
      const survivor = new Sequencer({ repository: other, logger: silent });
      try {
        const first = Array.from({ length: 5 }, (_, n) => appendInput(c, n));
        const lost = first.map((i) => doomed.append(i).catch((e: Error) => e));
        await Promise.race([
          hasReserved,
          Promise.all(lost).then(() => assert.fail("the doomed instance never reserved its batch")),
        ]);
        // The clients time out and resend to the surviving instance, with new messages.
        const resent = await Promise.all(first.map((i) => survivor.append(i)));
        assert.deepEqual(
          resent.map((r) => [r.message.seq, r.duplicate]),
          [1, 2, 3, 4, 5].map((s) => [s, true]),
          "the dead instance's reserved batch is stored once, with the seqs it reserved",
        );
        const more = await Promise.all(Array.from({ length: 20 }, (_, n) => survivor.append(appendInput(c, 100 + n))));
        assert.deepEqual(more.map((r) => r.message.seq).sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => 6 + i));
        await assertLog(other, c, [...resent, ...more], 25);
        crashed();
        for (const r of await Promise.all(lost)) assert.ok(r instanceof StoreUnavailableError, "the dead instance never acknowledged");
      } finally {
        crashed();
        await Promise.all([doomed.close(), survivor.close()]);
        await doomedRepo.close();
      }
    });

    it("is what the service context builds when the config names a cluster", async () => {
      const cfg = loadConfig({ PARLEY_CASSANDRA_CONTACT_POINTS: server, PARLEY_CASSANDRA_KEYSPACE: keyspace, PARLEY_CASSANDRA_DATACENTER: localDataCenter });
      const ctx = await MessageStoreContext.fromConfig(cfg, { logger: silent });
      try {
        assert.ok(ctx.repository instanceof CassandraMessageRepository);
        const client = createClient(MessageStoreService, inProcess(messageStoreRoutes(ctx)));
        const c = randomUuid();
        const res = await client.append(appendInput(c, 1));
        assert.equal(res.message?.seq, 1n);
        assert.deepEqual((await repo.history(c, 0, 10)).map((m) => m.messageId), [res.message?.messageId]);
      } finally {
        await ctx.close();
      }
    });

    it("answers Unavailable fast while the cluster is unreachable and recovers by itself", async () => {
      const [host, port] = contactPoints[0]!.split(":");
      const proxy = new Proxy({ host: host!, port: Number(port ?? 9042) });
      await proxy.start();
      // Every node address the cluster announces is reached through the proxy. (The
      // typings declare AddressTranslator an interface; the driver checks instanceof.)
      const Translator = (cassandra.policies.addressResolution as unknown as { AddressTranslator: new () => object }).AddressTranslator;
      class ThroughProxy extends Translator {
        translate(_address: string, _port: number, callback: (endpoint: string) => void): void {
          callback(`127.0.0.1:${proxy.port}`);
        }
      }
      let viaProxy: CassandraMessageRepository;
      try {
        viaProxy = await open({
          contactPoints: [`127.0.0.1:${proxy.port}`],
          reconnectDelayMs: 200,
          requestTimeoutMs: 2000,
          driverOptions: { policies: { addressResolution: new ThroughProxy() as cassandra.policies.addressResolution.AddressTranslator } },
        });
      } catch (err) {
        await proxy.stop();
        throw err;
      }
      const seq = new Sequencer({ repository: viaProxy, logger: silent });
      try {
        const c = randomUuid();
        assert.equal((await seq.append(appendInput(c, 1))).message.seq, 1);
        await proxy.stop();
        const t0 = Date.now();
        await assert.rejects(seq.append(appendInput(c, 2)), StoreUnavailableError);
        await assert.rejects(viaProxy.history(c, 0, 10), (err: unknown) => {
          assert.ok(err instanceof StoreUnavailableError);
          assert.equal(toConnectError(err, silent).code, Code.Unavailable);
          return true;
        });
        assert.ok(Date.now() - t0 < 5000, `failed fast (${Date.now() - t0} ms)`);
        await proxy.start();
        const deadline = Date.now() + 30_000;
        const retry = appendInput(c, 3);
        for (;;) {
          try {
            const r = await seq.append(retry);
            assert.equal(r.message.seq, 2);
            break;
          } catch (err) {
            assert.ok(err instanceof StoreUnavailableError, String(err));
            if (Date.now() > deadline) throw new Error("did not recover within 30 s", { cause: err });
            await new Promise((resolve) => setTimeout(resolve, 100)); // poll for reconnection
          }
        }
        assert.deepEqual((await viaProxy.history(c, 0, 10)).map((m) => m.seq), [2, 1]);
      } finally {
        await seq.close();
        await viaProxy.close();
        await proxy.stop();
      }
    });
  });
}
