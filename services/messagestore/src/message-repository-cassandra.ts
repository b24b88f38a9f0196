/**
 * The message repository on Apache Cassandra (5.0; `cassandra-driver`).
 *
 * Tables (keyspace from config, created at start when missing, see `schemaStatements`):
 *   messages            PRIMARY KEY ((conversation_id, bucket), seq) CLUSTERING ORDER BY (seq DESC)
 *                       bucket = floor(seq / bucketSize): a partition holds at most bucketSize
 *                       messages (default 10,000), so no partition grows without bound.
 *   message_keys        PRIMARY KEY ((conversation_id), sender_id, client_msg_id) → seq:
 *                       the idempotency index (optionally with a TTL, `idempotencyTtlSeconds`).
 *   conversation_heads  PRIMARY KEY (conversation_id) → last_seq, last_sent_at, pending:
 *                       the allocation point of sequence numbers.
 *   schema_version      the applied schema version and the bucket size the data was written with.
 *
 * Schema versions: 1 the tables above; 2 adds `messages.event` (blob: an encoded client
 * ConversationEvent of event messages; `sender_device_id` is then null when the event has
 * no sender device). A keyspace of version 1 is upgraded at start (`ALTER TABLE ... ADD`,
 * guarded by system_schema.columns, so instances starting together do no harm).
 *
 * Sequence allocation: a conditional write (Paxos lightweight transaction) on the head,
 * one per batch, not one per message. A batch of seqs e+1..n (the sequencer chose them
 * from lastSeq = e) is reserved by `UPDATE conversation_heads SET last_seq = n, pending = <batch>
 * ... IF last_seq = e` (`INSERT ... IF NOT EXISTS` for the first batch). Paxos linearizes
 * every conditional write on the row, so of two writers that read e only one can move the
 * head from e: the other gets `[applied] = false` → SeqConflictError, and the sequencer
 * reloads lastSeq and retries. That holds whatever the number of message store instances,
 * whether they race, or one fails over to another: no lease, no ring, no fencing token is
 * needed, because the fence is the compare-and-set itself (the head value is the token).
 * A single owner per conversation (hash ring over live instances) would save the Paxos
 * round, but an owner that is paused (GC, partition) and does not know it lost the
 * conversation still needs a fence in the store, i.e. a conditional write anyway.
 *
 * The crash window: a writer that won the head and died before writing its messages would
 * leave seqs reserved and never written (a gap, which clients wait on). So the winning
 * conditional write also stores the batch itself in the head (`pending`: the messages and
 * the write timestamp, JSON). Whoever finds a pending batch rolls it forward: writes its
 * message and key rows again, with the batch's own write timestamp (so a roll-forward is
 * idempotent and can never resurrect a row deleted later). `lastSeq()` does that before it
 * answers (the sequencer calls it when it loads a conversation and after every conflict
 * or failure), and `findByClientMsgIds` does it when it meets a key whose message is
 * missing. Invariant: when an instance learns lastSeq = e (from `lastSeq()`, or from its
 * own insert that completed), every batch up to e is fully written. The next winning
 * conditional write replaces `pending`; it is never cleared otherwise (clearing would cost
 * another Paxos round), so a roll-forward of a finished batch is a harmless rewrite, and
 * the repository remembers which batches it knows to be written to skip those.
 *
 * What is guaranteed:
 * - No seq is assigned twice: a seq belongs to the batch whose conditional write moved the
 *   head over it; message rows at a seq are only ever written with that batch's content.
 * - No acknowledged message is lost: `insert` resolves (and the sequencer acknowledges) only
 *   after the message and key rows are written at QUORUM, after the head moved at SERIAL.
 *   A batch that was reserved but not acknowledged (crash, timeout) is still stored by the
 *   roll-forward: the client's resend with the same client_msg_id then finds it (duplicate)
 *   with the seq it was given, instead of creating a second message.
 * - Idempotency: a batch commits only at `IF last_seq = e` where e is the lastSeq the
 *   writer observed before it looked its keys up (sequencer: lastSeq → insert, which checks
 *   the keys before its conditional write). Every batch ≤ e was fully written before that
 *   lookup (invariant above), and no batch > e exists when the conditional write applies,
 *   so a key taken by any committed batch is seen; a writer that raced with the same key
 *   loses the head, reloads (rolling the winner forward) and finds the key on retry. One
 *   Paxos round per batch instead of one `INSERT ... IF NOT EXISTS` per key.
 * - An outcome-unknown conditional write (WriteTimeout of type CAS, a client timeout) is
 *   settled with a SERIAL read of the head, which finishes or voids the in-flight Paxos
 *   round: our batch in `pending` → it applied, go on writing; anything else → it did not
 *   (SeqConflictError, the sequencer retries). If even that read fails the insert fails
 *   with StoreUnavailableError; the sequencer drops its cached lastSeq, the client resends
 *   with the same key, and the reload rolls the batch forward if it had applied.
 *
 * Consistency levels (configurable for multi-datacenter clusters):
 * - head conditional write and `lastSeq()`: serial consistency SERIAL (global Paxos: two
 *   datacenters allocating seqs of one conversation with LOCAL_SERIAL could both win),
 *   commit at QUORUM.
 * - message/key writes and reads: QUORUM (on one datacenter = LOCAL_QUORUM; with several,
 *   LOCAL_QUORUM is the usual choice: an acknowledged message survives the loss of any
 *   minority of replicas in its datacenter; EACH_QUORUM if it must survive losing a whole
 *   datacenter at once). QUORUM writes + QUORUM reads overlap, so a read sees every
 *   acknowledged write.
 * - Replication: SimpleStrategy RF 1 is only for a one-node test server; production uses
 *   `NetworkTopologyStrategy` with RF 3 per datacenter (`replication` option, or create the
 *   keyspace beforehand: the repository only creates it when missing). Enable Paxos v2
 *   (`paxos_variant: v2` in cassandra.yaml) for fewer round trips per conditional write.
 */
import cassandra from "cassandra-driver";
import { backendCall, statementOperation } from "../../../lib/telemetry/backend.js";
import { SeqConflictError, StoreUnavailableError } from "./errors.js";
import { plainBytes, type ConversationHead, type IdempotencyKey, type MessageRepository, type StoredMessage } from "./message-repository.js";

const { consistencies } = cassandra.types;

/** The schema version this code writes; a newer one in the keyspace refuses to start. */
export const CASSANDRA_SCHEMA_VERSION = 2;
export const DEFAULT_BUCKET_SIZE = 10_000;

export interface CassandraMessageRepositoryOptions {
  /** `host:port` (or `host`, port 9042) of one or more nodes. */
  contactPoints: readonly string[];
  /** The driver's local datacenter (e.g. `datacenter1`). */
  localDataCenter: string;
  keyspace: string;
  /** Replication of the keyspace when it has to be created (CQL map literal). */
  replication?: string;
  /** Messages per partition (fixed for the life of the keyspace). */
  bucketSize?: number;
  /** Idempotency keys expire after this many seconds; 0 (the default) keeps them forever. */
  idempotencyTtlSeconds?: number;
  /** Consistency of message/key writes and reads; default QUORUM. */
  consistency?: number;
  /** Serial consistency of the head's conditional write and read; default SERIAL. */
  serialConsistency?: number;
  /** Client-side request timeout in ms (default 5000: above Cassandra's own 2 s write timeout). */
  requestTimeoutMs?: number;
  /** Delay between reconnection attempts to a node that is down, in ms (default 1000). */
  reconnectDelayMs?: number;
  /** More driver options (credentials, TLS, policies), applied over the repository's own. */
  driverOptions?: Partial<cassandra.ClientOptions>;
  /** Test hooks simulating failures between the steps of an insert. */
  faults?: CassandraFaults;
}

export interface CassandraFaults {
  /**
   * Called after the head's conditional write applied and before the message rows are
   * written; throwing (or never resolving) simulates a writer that crashed there.
   */
  afterReserve?(conversationId: string, messages: readonly StoredMessage[]): Promise<void> | void;
  /**
   * Called with the result of the head's conditional write; throwing a driver timeout
   * simulates a reply that was lost (the outcome is then unknown to the writer).
   */
  afterReserveAttempt?(conversationId: string, applied: boolean): Promise<void> | void;
}

/** A batch reserved in the head row, rolled forward by whoever finds it unwritten. */
interface PendingBatch {
  /** The write timestamp of the batch's rows (microseconds since the epoch). */
  ts: number;
  m: PendingMessage[];
}
/** `event` is base64 (left out for chat messages, and in batches written by schema version 1 code). */
type PendingMessage = [
  seq: number,
  messageId: string,
  senderId: string,
  senderDeviceId: string,
  clientMsgId: string,
  body: string,
  sentAtMs: number,
  event?: string,
];

const KEYSPACE_NAME = /^[a-z][a-z0-9_]{0,47}$/;
const DEFAULT_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/** Server answers that mean "not now, try again": unavailable, timeouts, overload, bootstrapping, failures. */
const UNAVAILABLE_CODES = new Set([0x1000, 0x1001, 0x1002, 0x1100, 0x1200, 0x1300, 0x1500, 0x1700]);

/** True for errors that mean the cluster could not be reached or did not answer in time. */
export function isCassandraUnavailable(err: unknown): boolean {
  const e = cassandra.errors;
  if (err instanceof e.NoHostAvailableError || err instanceof e.OperationTimedOutError) return true;
  if (err instanceof e.ResponseError) return UNAVAILABLE_CODES.has(err.code);
  if (err instanceof e.DriverError && /not connected|socket|closed|shutdown/i.test(err.message)) return true;
  return false;
}

function unavailable(err: unknown): unknown {
  return isCassandraUnavailable(err) ? new StoreUnavailableError(`cassandra: ${(err as Error).message}`, { cause: err }) : err;
}

/** `quorum`, `serial`, ...: a consistency level's name (span attributes). */
function consistencyName(level: number): string {
  for (const [name, value] of Object.entries(consistencies)) if (value === level) return name.toLowerCase();
  return String(level);
}

/** The statements that create the schema (idempotent). */
export function schemaStatements(keyspace: string, replication = DEFAULT_REPLICATION): string[] {
  const ks = keyspace;
  return [
    `CREATE KEYSPACE IF NOT EXISTS ${ks} WITH replication = ${replication}`,
    `CREATE TABLE IF NOT EXISTS ${ks}.schema_version (
       component text PRIMARY KEY, version int, bucket_size int, applied_at timestamp)`,
    `CREATE TABLE IF NOT EXISTS ${ks}.messages (
       conversation_id uuid, bucket bigint, seq bigint,
       message_id uuid, sender_id uuid, sender_device_id uuid, client_msg_id uuid,
       body text, sent_at timestamp, event blob,
       PRIMARY KEY ((conversation_id, bucket), seq)
     ) WITH CLUSTERING ORDER BY (seq DESC)`,
    `CREATE TABLE IF NOT EXISTS ${ks}.message_keys (
       conversation_id uuid, sender_id uuid, client_msg_id uuid, seq bigint,
       PRIMARY KEY ((conversation_id), sender_id, client_msg_id))`,
    `CREATE TABLE IF NOT EXISTS ${ks}.conversation_heads (
       conversation_id uuid PRIMARY KEY, last_seq bigint, last_sent_at timestamp, pending text)`,
  ];
}

type Row = cassandra.types.Row;

/** The columns of a message row, as `toMessage` reads them. */
const MESSAGE_COLUMNS = "seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at, event";

function toMessage(conversationId: string, r: Row): StoredMessage {
  const m: StoredMessage = {
    conversationId,
    seq: Number(r.get("seq")),
    messageId: r.get("message_id").toString(),
    senderId: r.get("sender_id").toString(),
    senderDeviceId: r.get("sender_device_id")?.toString() ?? "",
    clientMsgId: r.get("client_msg_id").toString(),
    body: r.get("body") ?? "",
    sentAtMs: (r.get("sent_at") as Date).getTime(),
  };
  const event = r.get("event") as Buffer | null;
  if (event && event.length > 0) m.event = plainBytes(event);
  return m;
}

function toPending(m: StoredMessage): PendingMessage {
  const p: PendingMessage = [m.seq, m.messageId, m.senderId, m.senderDeviceId, m.clientMsgId, m.body, m.sentAtMs];
  if (m.event && m.event.length > 0) p.push(Buffer.from(m.event.buffer, m.event.byteOffset, m.event.byteLength).toString("base64"));
  return p;
}

function fromPending(conversationId: string, p: PendingMessage): StoredMessage {
  const [seq, messageId, senderId, senderDeviceId, clientMsgId, body, sentAtMs, event] = p;
  const m: StoredMessage = { conversationId, seq, messageId, senderId, senderDeviceId, clientMsgId, body, sentAtMs };
  if (event) m.event = plainBytes(Buffer.from(event, "base64"));
  return m;
}

/**
 * Adds `messages.event` to a keyspace created by schema version 1 (idempotent). Two
 * instances may both find the column missing: the loser's ALTER fails because the column
 * exists, which the second look settles.
 */
async function addEventColumn(client: cassandra.Client, ks: string): Promise<void> {
  const hasColumn = async () =>
    (
      await client.execute(
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'messages' AND column_name = 'event'",
        [ks],
      )
    ).rowLength > 0;
  if (await hasColumn()) return;
  try {
    await client.execute(`ALTER TABLE ${ks}.messages ADD event blob`);
  } catch (err) {
    if (!(await hasColumn())) throw err;
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** See the file comment for the data model and the sequence-allocation protocol. */
export class CassandraMessageRepository implements MessageRepository {
  readonly bucketSize: number;
  private readonly ks: string;
  private readonly consistency: number;
  private readonly serial: number;
  private readonly ttl: number;
  private readonly faults: CassandraFaults;
  /** Pending batches (by first message id) this instance knows to be fully written; bounded. */
  private readonly written = new Set<string>();
  private lastTs = 0;

  private constructor(
    private readonly client: cassandra.Client,
    opts: CassandraMessageRepositoryOptions,
    bucketSize: number,
  ) {
    this.ks = opts.keyspace;
    this.bucketSize = bucketSize;
    this.consistency = opts.consistency ?? consistencies.quorum;
    this.serial = opts.serialConsistency ?? consistencies.serial;
    this.ttl = opts.idempotencyTtlSeconds ?? 0;
    this.faults = opts.faults ?? {};
  }

  /** Connects, creates or checks the schema, and returns the repository. */
  static async create(opts: CassandraMessageRepositoryOptions): Promise<CassandraMessageRepository> {
    if (!KEYSPACE_NAME.test(opts.keyspace)) throw new RangeError(`cassandra keyspace "${opts.keyspace}": must match ${KEYSPACE_NAME}`);
    if (opts.contactPoints.length === 0) throw new RangeError("cassandra: no contact points");
    const wantBucket = opts.bucketSize ?? DEFAULT_BUCKET_SIZE;
    if (!Number.isSafeInteger(wantBucket) || wantBucket < 1) throw new RangeError("cassandra bucketSize must be >= 1");
    const client = new cassandra.Client({
      contactPoints: [...opts.contactPoints],
      localDataCenter: opts.localDataCenter,
      encoding: { useBigIntAsLong: true },
      socketOptions: { connectTimeout: 3000, readTimeout: opts.requestTimeoutMs ?? 5000 },
      policies: { reconnection: new cassandra.policies.reconnection.ConstantReconnectionPolicy(opts.reconnectDelayMs ?? 1000) },
      queryOptions: { prepare: true, consistency: opts.consistency ?? consistencies.quorum },
      protocolOptions: { maxSchemaAgreementWaitSeconds: 20 },
      ...opts.driverOptions,
    });
    // cassandra-driver 4.10 replaces the Host of a node that was unreachable and came back
    // without closing the old one, whose pool and timers then live on (and keep the
    // process from exiting): close every host the client drops.
    client.on("hostRemove", (host: { shutdown?(waitForPending: boolean): Promise<void> }) => {
      host.shutdown?.(false).catch(() => {});
    });
    try {
      await client.connect();
      const ks = opts.keyspace;
      for (const stmt of schemaStatements(ks, opts.replication)) await client.execute(stmt);
      await addEventColumn(client, ks);
      const found = await client.execute(`SELECT version, bucket_size FROM ${ks}.schema_version WHERE component = 'messagestore'`, [], {
        consistency: consistencies.quorum,
      });
      const row = found.first();
      let bucketSize = wantBucket;
      if (row) {
        const version = Number(row.get("version"));
        if (version > CASSANDRA_SCHEMA_VERSION) {
          throw new Error(`cassandra keyspace ${ks} has schema version ${version}, newer than this code's ${CASSANDRA_SCHEMA_VERSION}`);
        }
        bucketSize = Number(row.get("bucket_size"));
        if (opts.bucketSize !== undefined && bucketSize !== opts.bucketSize) {
          throw new Error(`cassandra keyspace ${ks} was written with bucket size ${bucketSize}, not ${opts.bucketSize}`);
        }
      }
      if (!row) {
        // IF NOT EXISTS: instances starting together agree on one bucket size.
        const r = await client.execute(
          `INSERT INTO ${ks}.schema_version (component, version, bucket_size, applied_at) VALUES ('messagestore', ?, ?, toTimestamp(now())) IF NOT EXISTS`,
          [CASSANDRA_SCHEMA_VERSION, bucketSize],
        );
        if (!r.wasApplied()) bucketSize = Number(r.first().get("bucket_size"));
      } else if (Number(row.get("version")) < CASSANDRA_SCHEMA_VERSION) {
        // The upgrade above is done: record it (conditional, so the version never goes back).
        await client.execute(
          `UPDATE ${ks}.schema_version SET version = ?, applied_at = toTimestamp(now()) WHERE component = 'messagestore' IF version < ?`,
          [CASSANDRA_SCHEMA_VERSION, CASSANDRA_SCHEMA_VERSION],
        );
      }
      return new CassandraMessageRepository(client, opts, bucketSize);
    } catch (err) {
      await client.shutdown().catch(() => {});
      throw unavailable(err);
    }
  }

  private bucket(seq: number): number {
    return Math.floor(seq / this.bucketSize);
  }

  /** A write timestamp (µs) unique within this instance. */
  private nextTs(): number {
    this.lastTs = Math.max(this.lastTs + 1, Date.now() * 1000);
    return this.lastTs;
  }

  /**
   * One statement, traced under the caller's span (the message store's write batch or
   * request) and measured, with the database conventions (lib/telemetry/backend.ts).
   */
  private execute(query: string, params: unknown[], options: cassandra.QueryOptions): Promise<cassandra.types.ResultSet> {
    return backendCall("cassandra", () => statementOperation(query), () => this.client.execute(query, params, options), {
      attributes: () => this.spanAttributes(query, options),
    });
  }

  /** An unlogged single-partition batch of one statement, traced and measured as `BATCH <table>`. */
  private batch(queries: { query: string; params: unknown[] }[], options: cassandra.QueryOptions): Promise<cassandra.types.ResultSet> {
    const first = queries[0]?.query ?? "";
    return backendCall("cassandra", () => `BATCH ${statementOperation(first).split(" ")[1] ?? ""}`.trim(), () => this.client.batch(queries, options), {
      attributes: () => ({ ...this.spanAttributes(first, options), "db.operation.batch.size": queries.length }),
    });
  }

  private spanAttributes(query: string, options: cassandra.QueryOptions): Record<string, string | number> {
    const op = statementOperation(query).split(" ");
    // No db.query.text: the operation and table name the statement (this file's own), and
    // the text would be most of each span's export size on the hot path.
    const attrs: Record<string, string | number> = { "db.namespace": this.ks };
    if (op[1]) attrs["db.collection.name"] = op[1];
    const consistency = options.consistency ?? this.consistency;
    attrs["cassandra.consistency.level"] = consistencyName(consistency);
    if (options.serialConsistency !== undefined) attrs["cassandra.serial_consistency.level"] = consistencyName(options.serialConsistency);
    return attrs;
  }

  private async run(query: string, params: unknown[], options: cassandra.QueryOptions = {}): Promise<cassandra.types.ResultSet> {
    try {
      return await this.execute(query, params, options);
    } catch (err) {
      throw unavailable(err);
    }
  }

  /** The head row: with its pending batch at SERIAL (settles in-flight Paxos rounds), or without it at QUORUM. */
  private async readHead(conversationId: string, serial: boolean): Promise<Row | undefined> {
    const rs = await this.run(
      serial
        ? `SELECT last_seq, last_sent_at, pending FROM ${this.ks}.conversation_heads WHERE conversation_id = ?`
        : `SELECT last_seq, last_sent_at FROM ${this.ks}.conversation_heads WHERE conversation_id = ?`,
      [conversationId],
      { consistency: serial ? this.serial : this.consistency },
    );
    return rs.first() ?? undefined;
  }

  async lastSeq(conversationId: string): Promise<number> {
    const head = await this.readHead(conversationId, true);
    if (!head) return 0;
    await this.rollForward(conversationId, head.get("pending"));
    return Number(head.get("last_seq"));
  }

  /** Writes the head's pending batch (again) unless this instance knows it is written. */
  private async rollForward(conversationId: string, pendingJson: string | null, force = false): Promise<void> {
    if (!pendingJson) return;
    const pending = JSON.parse(pendingJson) as PendingBatch;
    if (pending.m.length === 0 || (!force && this.written.has(pending.m[0]![1]))) return;
    await this.writeRows(
      conversationId,
      pending.m.map((p) => fromPending(conversationId, p)),
      pending.ts,
    );
  }

  private rememberWritten(firstMessageId: string): void {
    if (this.written.size >= 100_000) this.written.clear();
    this.written.add(firstMessageId);
  }

  /** Message rows (one unlogged batch per partition) and key rows (one batch), all at `ts`. */
  private async writeRows(conversationId: string, messages: readonly StoredMessage[], ts: number): Promise<void> {
    const byBucket = new Map<number, StoredMessage[]>();
    for (const m of messages) {
      const b = this.bucket(m.seq);
      const list = byBucket.get(b);
      if (list) list.push(m);
      else byBucket.set(b, [m]);
    }
    const insertMessage = `INSERT INTO ${this.ks}.messages (conversation_id, bucket, seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at, event) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;
    // Absent values are left unset (no tombstone); the row is new, so unset reads as null.
    const unset = cassandra.types.unset;
    const insertKey =
      `INSERT INTO ${this.ks}.message_keys (conversation_id, sender_id, client_msg_id, seq) VALUES (?, ?, ?, ?)` +
      (this.ttl > 0 ? ` USING TTL ${this.ttl}` : "");
    // Single-partition batches: applied atomically per partition, and safe to retry
    // (same rows, same timestamp).
    const options: cassandra.QueryOptions = { prepare: true, logged: false, timestamp: ts, consistency: this.consistency, isIdempotent: true };
    const batches: Promise<unknown>[] = [];
    for (const [bucket, list] of byBucket) {
      batches.push(
        this.batch(
          list.map((m) => ({
            query: insertMessage,
            params: [
              conversationId,
              BigInt(bucket),
              BigInt(m.seq),
              m.messageId,
              m.senderId,
              m.senderDeviceId === "" ? unset : m.senderDeviceId,
              m.clientMsgId,
              m.body,
              new Date(m.sentAtMs),
              m.event && m.event.length > 0 ? Buffer.from(m.event.buffer, m.event.byteOffset, m.event.byteLength) : unset,
            ],
          })),
          options,
        ),
      );
    }
    batches.push(
      this.batch(
        messages.map((m) => ({ query: insertKey, params: [conversationId, m.senderId, m.clientMsgId, BigInt(m.seq)] })),
        options,
      ),
    );
    const results = await Promise.allSettled(batches);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw unavailable(failed.reason);
    this.rememberWritten(messages[0]!.messageId);
  }

  /** The seqs stored under `keys` (key → seq). */
  private async keySeqs(conversationId: string, keys: readonly IdempotencyKey[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    // Multi-column IN on the clustering key: one single-partition read per chunk.
    const chunks: IdempotencyKey[][] = [];
    for (let i = 0; i < keys.length; i += 100) chunks.push(keys.slice(i, i + 100));
    await Promise.all(
      chunks.map(async (chunk) => {
        const tuples = chunk.map((k) => new cassandra.types.Tuple(k.senderId, k.clientMsgId));
        const rs = await this.run(
          `SELECT sender_id, client_msg_id, seq FROM ${this.ks}.message_keys WHERE conversation_id = ? AND (sender_id, client_msg_id) IN ?`,
          [conversationId, tuples],
        );
        for (const r of rs.rows) out.set(`${r.get("sender_id")}/${r.get("client_msg_id")}`, Number(r.get("seq")));
      }),
    );
    return out;
  }

  /** The messages at `seqs` that exist (one read per bucket). */
  private async messagesAt(conversationId: string, seqs: readonly number[]): Promise<StoredMessage[]> {
    const byBucket = new Map<number, number[]>();
    for (const s of seqs) {
      const b = this.bucket(s);
      const list = byBucket.get(b);
      if (list) list.push(s);
      else byBucket.set(b, [s]);
    }
    const out: StoredMessage[] = [];
    await Promise.all(
      [...byBucket].map(async ([bucket, list]) => {
        const rs = await this.run(
          `SELECT ${MESSAGE_COLUMNS} FROM ${this.ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq IN ?`,
          [conversationId, BigInt(bucket), list.map(BigInt)],
        );
        for (const r of rs.rows) out.push(toMessage(conversationId, r));
      }),
    );
    return out;
  }

  async findByClientMsgIds(conversationId: string, keys: readonly IdempotencyKey[]): Promise<StoredMessage[]> {
    if (keys.length === 0) return [];
    const seqs = [...new Set((await this.keySeqs(conversationId, keys)).values())];
    if (seqs.length === 0) return [];
    let found = await this.messagesAt(conversationId, seqs);
    if (found.length < seqs.length) {
      // A key row without its message: a batch reserved and half written (crashed
      // writer, or its rows are being written right now). Roll it forward, read again.
      const head = await this.readHead(conversationId, true);
      await this.rollForward(conversationId, head?.get("pending") ?? null, true);
      found = await this.messagesAt(conversationId, seqs);
      if (found.length < seqs.length) throw new StoreUnavailableError(`cassandra: idempotency keys without messages in ${conversationId}`);
    }
    return found;
  }

  async insert(conversationId: string, messages: readonly StoredMessage[]): Promise<void> {
    if (messages.length === 0) return;
    const batch = [...messages].sort((a, b) => a.seq - b.seq);
    const expected = batch[0]!.seq - 1;
    const keys = new Set<string>();
    for (const [i, m] of batch.entries()) {
      if (m.conversationId !== conversationId) throw new Error("insert: every message must belong to the conversation");
      if (m.seq !== expected + 1 + i) {
        // Two messages with one seq are a conflict like a taken seq; a hole is a caller bug.
        if (i > 0 && m.seq === batch[i - 1]!.seq) throw new SeqConflictError("insert: two messages with one seq");
        throw new RangeError("insert: the seqs of a batch must be consecutive");
      }
      const key = `${m.senderId}/${m.clientMsgId}`;
      if (keys.has(key)) throw new SeqConflictError("insert: two messages with one idempotency key");
      keys.add(key);
    }
    if (expected < 0) throw new RangeError("insert: seqs start at 1");
    const last = batch[batch.length - 1]!;

    // Keys taken by a committed batch (see the file comment for why this check plus the
    // head's compare-and-set is enough against racing writers).
    if ((await this.keySeqs(conversationId, batch)).size > 0) throw new SeqConflictError();

    const ts = this.nextTs();
    const pending: PendingBatch = {
      ts,
      m: batch.map(toPending),
    };
    const pendingJson = JSON.stringify(pending);
    const lastSentAt = new Date(last.sentAtMs);
    const lwt =
      expected === 0
        ? {
            query: `INSERT INTO ${this.ks}.conversation_heads (conversation_id, last_seq, last_sent_at, pending) VALUES (?, ?, ?, ?) IF NOT EXISTS`,
            params: [conversationId, BigInt(last.seq), lastSentAt, pendingJson],
          }
        : {
            query: `UPDATE ${this.ks}.conversation_heads SET last_seq = ?, last_sent_at = ?, pending = ? WHERE conversation_id = ? IF last_seq = ?`,
            params: [BigInt(last.seq), lastSentAt, pendingJson, conversationId, BigInt(expected)],
          };
    let applied: boolean;
    try {
      const rs = await this.execute(lwt.query, lwt.params, {
        consistency: this.consistency,
        serialConsistency: this.serial,
        isIdempotent: false,
      });
      applied = rs.wasApplied();
      await this.faults.afterReserveAttempt?.(conversationId, applied);
    } catch (err) {
      if (!isCassandraUnavailable(err)) throw err;
      // Outcome unknown: a SERIAL read settles the Paxos round either way.
      const head = await this.readHead(conversationId, true);
      const p = head?.get("pending") as string | null | undefined;
      applied = !!p && (JSON.parse(p) as PendingBatch).m[0]?.[1] === batch[0]!.messageId;
    }
    if (!applied) throw new SeqConflictError();

    await this.faults.afterReserve?.(conversationId, batch);
    await this.writeRows(conversationId, batch, ts);
  }

  async history(conversationId: string, beforeSeq: number, limit: number): Promise<StoredMessage[]> {
    if (limit <= 0) return [];
    const head = await this.readHead(conversationId, false);
    if (!head) return [];
    let top = Number(head.get("last_seq"));
    if (beforeSeq > 0) top = Math.min(top, beforeSeq - 1);
    return this.historyFrom(conversationId, top, limit);
  }

  /** Up to `limit` messages with seq <= top, newest first. */
  private async historyFrom(conversationId: string, top: number, limit: number): Promise<StoredMessage[]> {
    const out: StoredMessage[] = [];
    // Newest bucket first; a bucket may hold fewer rows than its range (an unrepaired
    // reservation), so keep walking down until the limit is met or bucket 0 is read.
    for (let b = this.bucket(top); b >= 0 && top > 0 && out.length < limit; b--) {
      const rs = await this.run(
        `SELECT ${MESSAGE_COLUMNS} FROM ${this.ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq <= ? LIMIT ?`,
        [conversationId, BigInt(b), BigInt(top), limit - out.length],
      );
      for (const r of rs.rows) out.push(toMessage(conversationId, r));
    }
    return out;
  }

  /**
   * Oldest first: the buckets from afterSeq's upward, each read in ascending order (the
   * reverse of its clustering order, still one slice of one partition), up to the head.
   * Stops before the first missing seq (a reserved batch whose rows are not written yet).
   */
  async range(conversationId: string, afterSeq: number, limit: number): Promise<StoredMessage[]> {
    if (limit <= 0) return [];
    const head = await this.readHead(conversationId, false);
    if (!head) return [];
    const top = Number(head.get("last_seq"));
    const out: StoredMessage[] = [];
    let next = afterSeq + 1;
    for (let b = this.bucket(next); next <= top && out.length < limit; b++) {
      const rs = await this.run(
        `SELECT ${MESSAGE_COLUMNS} FROM ${this.ks}.messages WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ? ORDER BY seq ASC LIMIT ?`,
        [conversationId, BigInt(b), BigInt(next), BigInt(top), limit - out.length],
      );
      for (const r of rs.rows) {
        const m = toMessage(conversationId, r);
        if (m.seq !== next) return out;
        out.push(m);
        next++;
      }
      // The bucket ended early (not at its last seq): a gap.
      if (next <= top && this.bucket(next) === b && out.length < limit) return out;
    }
    return out;
  }

  async heads(conversationIds: readonly string[], withLastMessage = false): Promise<ConversationHead[]> {
    const ids = [...new Set(conversationIds)];
    const out: ConversationHead[] = [];
    // Concurrent single-partition reads (bounded) rather than one IN over many partitions,
    // which would load one coordinator with the fan-out.
    await eachLimited(ids, 32, async (id) => {
      const head = await this.readHead(id, false);
      const lastSeq = head ? Number(head.get("last_seq")) : 0;
      if (lastSeq === 0) return;
      const h: ConversationHead = { conversationId: id, lastSeq, lastSentAtMs: (head!.get("last_sent_at") as Date).getTime() };
      if (withLastMessage) {
        // The history read with limit 1 from the head. While a reserved batch is being
        // written this is the newest written message (a lower seq), or none.
        const [last] = await this.historyFrom(id, lastSeq, 1);
        if (last) h.lastMessage = last;
      }
      out.push(h);
    });
    return out;
  }

  /** Drops the keyspace (tests). */
  async dropKeyspace(): Promise<void> {
    await this.run(`DROP KEYSPACE IF EXISTS ${this.ks}`, []);
  }

  async close(): Promise<void> {
    await this.client.shutdown();
  }
}
