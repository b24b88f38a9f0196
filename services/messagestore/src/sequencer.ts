import { UuidV7Generator } from "../../../lib/ids.js";
import type { Logger } from "../../../lib/logger.js";
import { instruments } from "../../../lib/telemetry/metrics.js";
import { inBatchSpan, runIn, tracing, type Context } from "../../../lib/telemetry/tracing.js";
import { AppendContentionError, SeqConflictError, SequencerClosedError, StoreUnavailableError } from "./errors.js";
import { idempotencyKey, type IdempotencyKey, type MessageRepository, type StoredMessage } from "./message-repository.js";

export interface AppendInput {
  conversationId: string;
  senderId: string;
  senderDeviceId: string;
  clientMsgId: string;
  body: string;
  /** Event messages: the encoded event (non-empty), stored as given. */
  event?: Uint8Array;
  /**
   * The append's span while tracing (lib/telemetry): the repository calls of the batch
   * it is written in are traced under it (the batch links the other appends' spans).
   */
  trace?: Context;
}

export interface AppendResult {
  message: StoredMessage;
  /** True when an earlier append with the same idempotency key stored the message. */
  duplicate: boolean;
}

export interface SequencerOptions {
  repository: MessageRepository;
  /** Milliseconds since the epoch; sentAt and the UUIDv7 message ids come from it. */
  clock?: () => number;
  logger?: Logger;
  /** Most appends written in one repository insert. */
  maxBatch?: number;
  /**
   * Most body and event bytes (roughly) in one insert; a single larger append still goes
   * alone. Keeps a batch (and Cassandra's copy of it in the head row) well below the
   * store's mutation size limit when event messages are large. Default 2 MiB.
   */
  maxBatchBytes?: number;
  /** Insert attempts of one batch that lose a race before it fails with AppendContentionError. */
  maxAttempts?: number;
  /** Idle conversation logs kept in memory (least recently used ones are dropped). */
  maxCachedLogs?: number;
  /** Approximate memory for recently stored messages that answer quick resends without a read. */
  recentCacheBytes?: number;
}

interface Pending {
  input: AppendInput;
  key: string;
  resolve(r: AppendResult): void;
  reject(err: Error): void;
}

/** Memory (and, within a factor, storage) taken by a message's body and event. */
function messageBytes(m: { body: string; event?: Uint8Array }): number {
  return 2 * m.body.length + (m.event?.length ?? 0);
}

/** One conversation's write state in this instance. */
class ConversationLog {
  /** The highest seq known stored; undefined until loaded (and after a failure). */
  lastSeq: number | undefined;
  readonly queue: Pending[] = [];
  writing = false;

  constructor(readonly conversationId: string) {}

  get idle(): boolean {
    return !this.writing && this.queue.length === 0;
  }
}

/**
 * Recently stored messages by (conversation, sender, client msg id), oldest evicted
 * first, bounded by an approximate byte budget shared by all conversations. Stored
 * messages never change, so an entry is always right; a miss only costs a read.
 */
class RecentMessages {
  private readonly entries = new Map<string, { message: StoredMessage; cost: number }>();
  private bytes = 0;

  constructor(private readonly budget: number) {}

  get(conversationId: string, key: string): StoredMessage | undefined {
    return this.entries.get(`${conversationId}/${key}`)?.message;
  }

  add(m: StoredMessage): void {
    const k = `${m.conversationId}/${idempotencyKey(m.senderId, m.clientMsgId)}`;
    if (this.entries.has(k)) return;
    const cost = messageBytes(m) + 400; // the object and its id strings, roughly
    if (cost > this.budget) return;
    this.entries.set(k, { message: m, cost });
    this.bytes += cost;
    for (const [oldKey, old] of this.entries) {
      if (this.bytes <= this.budget) break;
      this.entries.delete(oldKey);
      this.bytes -= old.cost;
    }
  }
}

/**
 * Assigns per-conversation sequence numbers and stores appends durably, with group
 * commit: while one insert of a conversation is in flight, the appends that arrive
 * queue up and go to the repository together in the next batch (one insert per batch;
 * the idempotency keys are looked up only when an insert found one taken).
 *
 * The cached lastSeq is only a guess: the repository rejects a seq that is taken
 * (SeqConflictError), and then the batch is retried from the reloaded lastSeq. So
 * several instances may write one conversation without ever assigning a seq twice.
 */
export class Sequencer {
  private readonly repo: MessageRepository;
  private readonly clock: () => number;
  private readonly ids: UuidV7Generator;
  private readonly logger: Logger | undefined;
  private readonly maxBatch: number;
  private readonly maxBatchBytes: number;
  private readonly maxAttempts: number;
  private readonly maxCachedLogs: number;
  private readonly recent: RecentMessages;
  /** Conversation logs in least-recently-used order (Map iteration order). */
  private readonly logs = new Map<string, ConversationLog>();
  private readonly draining = new Set<Promise<void>>();
  private closed = false;

  constructor(opts: SequencerOptions) {
    this.repo = opts.repository;
    this.clock = opts.clock ?? Date.now;
    this.ids = new UuidV7Generator(this.clock);
    this.logger = opts.logger;
    this.maxBatch = opts.maxBatch ?? 256;
    this.maxBatchBytes = opts.maxBatchBytes ?? 2 * 1024 * 1024;
    this.maxAttempts = opts.maxAttempts ?? 10;
    this.maxCachedLogs = opts.maxCachedLogs ?? 100_000;
    this.recent = new RecentMessages(opts.recentCacheBytes ?? 64 * 1024 * 1024);
    if (this.maxBatch < 1 || this.maxBatchBytes < 1 || this.maxAttempts < 1 || this.maxCachedLogs < 1) throw new RangeError("sequencer limits must be >= 1");
  }

  /** Conversation logs held in memory (for tests and metrics). */
  get cachedLogs(): number {
    return this.logs.size;
  }

  /**
   * Stores the message with the conversation's next seq, or returns the message an
   * earlier append with the same (senderId, clientMsgId) stored. Rejects with
   * StoreUnavailableError, AppendContentionError or SequencerClosedError; the caller
   * may retry with the same key.
   */
  append(input: AppendInput): Promise<AppendResult> {
    if (this.closed) return Promise.reject(new SequencerClosedError());
    const key = idempotencyKey(input.senderId, input.clientMsgId);
    const cached = this.recent.get(input.conversationId, key);
    if (cached) return Promise.resolve({ message: cached, duplicate: true });
    const log = this.touch(input.conversationId);
    return new Promise<AppendResult>((resolve, reject) => {
      log.queue.push({ input, key, resolve, reject });
      if (!log.writing) {
        const d = this.drain(log);
        this.draining.add(d);
        void d.finally(() => this.draining.delete(d));
      }
    });
  }

  /** Takes no new appends and waits for the queued ones to be written. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.draining.size > 0) await Promise.all(this.draining);
  }

  private touch(conversationId: string): ConversationLog {
    let log = this.logs.get(conversationId);
    if (log) {
      this.logs.delete(conversationId);
      this.logs.set(conversationId, log);
      return log;
    }
    log = new ConversationLog(conversationId);
    this.logs.set(conversationId, log);
    if (this.logs.size > this.maxCachedLogs) {
      for (const [id, l] of this.logs) {
        if (this.logs.size <= this.maxCachedLogs) break;
        if (l.idle && l !== log) this.logs.delete(id);
      }
    }
    return log;
  }

  private async drain(log: ConversationLog): Promise<void> {
    log.writing = true; // set before the first await: later appends only queue
    try {
      while (log.queue.length > 0) {
        if (log.lastSeq === undefined) {
          // Loaded before taking the batch, so appends arriving meanwhile join it.
          try {
            const first = log.queue[0]!.input.trace;
            log.lastSeq = await runIn(first, () => this.repo.lastSeq(log.conversationId));
          } catch (err) {
            this.fail(log, log.queue.splice(0), err);
            continue;
          }
        }
        const batch = log.queue.splice(0, this.batchLength(log.queue));
        const ins = instruments();
        if (ins.enabled) ins.recordBatch("write batch", batch.length);
        if (tracing()) {
          await inBatchSpan("write batch", batch.map((p) => p.input.trace), () => this.writeBatch(log, batch), {
            "parley.conversation_id": log.conversationId,
          });
        } else await this.writeBatch(log, batch);
      }
    } finally {
      log.writing = false;
    }
  }

  /** How many of the queued appends go in the next batch: at least one, within both limits. */
  private batchLength(queue: readonly Pending[]): number {
    let n = 0;
    let bytes = 0;
    for (const p of queue) {
      if (n >= this.maxBatch) break;
      bytes += messageBytes(p.input);
      if (n > 0 && bytes > this.maxBatchBytes) break;
      n++;
    }
    return n;
  }

  /** Writes one batch and settles every append in it; never throws. */
  private async writeBatch(log: ConversationLog, batch: Pending[]): Promise<void> {
    const conversationId = log.conversationId;
    // Appends with the same key inside the batch share one message.
    const groups = new Map<string, Pending[]>();
    for (const p of batch) {
      const g = groups.get(p.key);
      if (g) g.push(p);
      else groups.set(p.key, [p]);
    }
    for (let attempt = 1; ; attempt++) {
      try {
        if (log.lastSeq === undefined) log.lastSeq = await this.repo.lastSeq(conversationId);
        const stored = new Map<string, StoredMessage>();
        const lookup: IdempotencyKey[] = [];
        for (const [key, g] of groups) {
          const cached = this.recent.get(conversationId, key);
          if (cached) stored.set(key, cached);
          else lookup.push({ senderId: g[0]!.input.senderId, clientMsgId: g[0]!.input.clientMsgId });
        }
        // The first attempt inserts without looking the keys up: the insert refuses a taken
        // key (SeqConflictError) by itself, so a lookup only pays off after a conflict,
        // when a key may belong to a stored message (a resend whose answer was lost).
        // Fresh messages, nearly all of them, save a round trip to the store.
        if (attempt > 1 && lookup.length > 0) {
          for (const m of await this.repo.findByClientMsgIds(conversationId, lookup)) {
            stored.set(idempotencyKey(m.senderId, m.clientMsgId), m);
            this.recent.add(m);
          }
        }
        const fresh: StoredMessage[] = [];
        const sentAtMs = this.clock();
        let seq = log.lastSeq;
        for (const [key, g] of groups) {
          if (stored.has(key)) continue;
          const i = g[0]!.input;
          const m: StoredMessage = {
            conversationId,
            seq: ++seq,
            messageId: this.ids.next(),
            senderId: i.senderId,
            senderDeviceId: i.senderDeviceId,
            clientMsgId: i.clientMsgId,
            body: i.body,
            sentAtMs,
          };
          if (i.event && i.event.length > 0) m.event = i.event;
          fresh.push(m);
        }
        if (fresh.length > 0) await this.repo.insert(conversationId, fresh);
        log.lastSeq = seq;
        const freshKeys = new Set<string>();
        for (const m of fresh) {
          const key = idempotencyKey(m.senderId, m.clientMsgId);
          stored.set(key, m);
          freshKeys.add(key);
          this.recent.add(m);
        }
        for (const [key, g] of groups) {
          const message = stored.get(key)!;
          g.forEach((p, n) => p.resolve({ message, duplicate: n > 0 || !freshKeys.has(key) }));
        }
        return;
      } catch (err) {
        log.lastSeq = undefined; // reload: another writer advanced it, or the outcome is unknown
        if (err instanceof SeqConflictError && attempt < this.maxAttempts) {
          this.logger?.debug({ conversationId, attempt }, "seq conflict, retrying batch");
          continue;
        }
        this.fail(log, batch, err);
        return;
      }
    }
  }

  private fail(log: ConversationLog, batch: Pending[], err: unknown): void {
    const conversationId = log.conversationId;
    let e: Error;
    if (err instanceof SeqConflictError) {
      this.logger?.warn({ conversationId, attempts: this.maxAttempts }, "append batch lost the race too often");
      e = new AppendContentionError(undefined, { cause: err });
    } else {
      this.logger?.warn({ conversationId, err }, "message repository failed");
      e = new StoreUnavailableError(undefined, { cause: err });
    }
    for (const p of batch) p.reject(e);
  }
}
