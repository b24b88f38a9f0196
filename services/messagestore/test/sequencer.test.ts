import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { randomUuid } from "../../../lib/ids.js";
import { AppendContentionError, SeqConflictError, SequencerClosedError, StoreUnavailableError } from "../src/errors.js";
import type { IdempotencyKey, MessageRepository, StoredMessage } from "../src/message-repository.js";
import { Sequencer, type AppendInput, type SequencerOptions } from "../src/sequencer.js";
import { MemoryMessageRepository } from "./memory-message-repository.js";

/** Wraps a repository: counts calls and fails on demand. */
class ProbeRepository implements MessageRepository {
  inserts: number[] = []; // batch sizes
  insertBytes: number[] = []; // body (UTF-16) and event bytes per batch
  finds = 0;
  lastSeqs = 0;
  conflicts = 0;
  /** Every call throws while set. */
  down = false;
  /** insert() stores, then throws (the outcome a lost reply leaves). */
  loseInsertReply = false;
  /** insert() throws SeqConflictError without storing. */
  alwaysConflict = false;

  constructor(readonly inner: MessageRepository = new MemoryMessageRepository()) {}

  private check(): void {
    if (this.down) throw new Error("repository down");
  }

  async lastSeq(conversationId: string): Promise<number> {
    this.lastSeqs++;
    this.check();
    return this.inner.lastSeq(conversationId);
  }

  async findByClientMsgIds(conversationId: string, keys: readonly IdempotencyKey[]): Promise<StoredMessage[]> {
    this.finds++;
    this.check();
    return this.inner.findByClientMsgIds(conversationId, keys);
  }

  async insert(conversationId: string, messages: readonly StoredMessage[]): Promise<void> {
    this.inserts.push(messages.length);
    this.insertBytes.push(messages.reduce((n, m) => n + 2 * m.body.length + (m.event?.length ?? 0), 0));
    this.check();
    if (this.alwaysConflict) {
      this.conflicts++;
      throw new SeqConflictError();
    }
    try {
      await this.inner.insert(conversationId, messages);
    } catch (err) {
      if (err instanceof SeqConflictError) this.conflicts++;
      throw err;
    }
    if (this.loseInsertReply) throw new Error("connection reset after commit");
  }

  history(conversationId: string, beforeSeq: number, limit: number) {
    return this.inner.history(conversationId, beforeSeq, limit);
  }

  range(conversationId: string, afterSeq: number, limit: number) {
    return this.inner.range(conversationId, afterSeq, limit);
  }

  heads(conversationIds: readonly string[], withLastMessage?: boolean) {
    return this.inner.heads(conversationIds, withLastMessage);
  }
}

function input(conversationId: string, body = "hi", senderId = randomUuid()): AppendInput {
  return { conversationId, senderId, senderDeviceId: randomUuid(), clientMsgId: randomUuid(), body };
}

function sequencer(repository: MessageRepository, opts: Partial<SequencerOptions> = {}): Sequencer {
  return new Sequencer({ repository, ...opts });
}

async function allSeqs(repo: MessageRepository, conversationId: string): Promise<number[]> {
  return (await repo.history(conversationId, 0, 1_000_000)).map((m) => m.seq).reverse();
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe("Sequencer", () => {
  it("gives each conversation seqs 1..n without gap or duplicate under 2,000 concurrent appends, in few inserts", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo, { maxBatch: 64 });
    const conversations = Array.from({ length: 10 }, () => randomUuid());
    const inputs = Array.from({ length: 2000 }, (_, i) => input(conversations[i % 10]!, `m${i}`));
    const results = await Promise.all(inputs.map((i) => seq.append(i)));

    for (const c of conversations) {
      const mine = results.filter((r) => r.message.conversationId === c).map((r) => r.message);
      assert.deepEqual(mine.map((m) => m.seq).sort((a, b) => a - b), range(200));
      assert.deepEqual(await allSeqs(repo, c), range(200));
      // One generator: message ids grow with seq.
      const bySeq = [...mine].sort((a, b) => a.seq - b.seq).map((m) => m.messageId);
      assert.deepEqual([...bySeq].sort(), bySeq);
    }
    results.forEach((r, i) => {
      assert.equal(r.duplicate, false);
      assert.equal(r.message.body, inputs[i]!.body);
      assert.equal(r.message.clientMsgId, inputs[i]!.clientMsgId);
    });
    assert.equal(new Set(results.map((r) => r.message.messageId)).size, 2000);
    // Group commit: 200 appends per conversation go in batches of at most 64.
    assert.ok(repo.inserts.length <= 60, `${repo.inserts.length} inserts for 2000 appends`);
    assert.ok(Math.max(...repo.inserts) <= 64);
    assert.equal(repo.inserts.reduce((a, b) => a + b, 0), 2000);
    assert.equal(repo.finds, 0, "no idempotency lookup before an insert: the insert checks the keys itself");
    assert.equal(repo.lastSeqs, 10, "lastSeq loaded once per conversation");
    await seq.close();
  });

  it("batches appends that arrive while a write is in flight", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo);
    const c = randomUuid();
    const first = seq.append(input(c)); // starts a write at once
    await repo.inner.lastSeq(c); // one turn later: the first batch is in flight
    const rest = Array.from({ length: 50 }, () => seq.append(input(c)));
    await Promise.all([first, ...rest]);
    assert.deepEqual(await allSeqs(repo, c), range(51));
    assert.ok(repo.inserts.length <= 3, `inserts: ${repo.inserts.join(",")}`);
    await seq.close();
  });

  for (const cache of [true, false]) {
    it(`answers a resend of the same key with the stored message (recent cache ${cache ? "on" : "off"})`, async () => {
      const repo = new ProbeRepository();
      const seq = sequencer(repo, cache ? {} : { recentCacheBytes: 0 });
      const c = randomUuid();
      const a = input(c, "original");
      const first = await seq.append(a);
      assert.equal(first.duplicate, false);
      assert.equal(first.message.seq, 1);
      const finds = repo.finds;
      const again = await seq.append({ ...a, body: "edited on resend" });
      assert.equal(again.duplicate, true);
      assert.deepEqual(again.message, first.message);
      if (cache) assert.equal(repo.finds, finds, "a quick resend does not read the repository");
      const next = await seq.append(input(c));
      assert.equal(next.message.seq, 2);
      assert.deepEqual(await allSeqs(repo, c), [1, 2]);
      await seq.close();
    });
  }

  it("keeps a batch within maxBatchBytes (a larger append goes alone) and stores events as given", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo, { maxBatchBytes: 100_000 });
    const c = randomUuid();
    const event = (n: number, fill: number) => new Uint8Array(n).fill(fill);
    const first = seq.append(input(c)); // all queue before the first batch is taken
    const inputs = [
      ...Array.from({ length: 9 }, (_, i) => ({ ...input(c, ""), senderDeviceId: "", event: event(40_000, i) })),
      { ...input(c, ""), event: event(150_000, 9) },
      input(c, "after"),
    ];
    const results = await Promise.all([first, ...inputs.map((i) => seq.append(i))]);
    assert.deepEqual(results.map((r) => r.message.seq), range(12));
    inputs.forEach((i, n) => {
      assert.deepEqual(results[n + 1]!.message.event, i.event);
      assert.equal(results[n + 1]!.message.senderDeviceId, i.senderDeviceId);
    });
    // [chat, 40k, 40k] [40k, 40k] [40k, 40k] [40k, 40k] [40k] [150k alone] [chat]
    assert.deepEqual(repo.inserts, [3, 2, 2, 2, 1, 1, 1], `inserts: ${repo.inserts.join(",")}`);
    repo.insertBytes.forEach((b, n) => assert.ok(b <= 100_000 || repo.inserts[n] === 1));
    const stored = await repo.history(c, 0, 20);
    assert.deepEqual([...stored].reverse(), results.map((r) => r.message));
    await seq.close();
  });

  it("stores a key sent several times inside one batch once", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo);
    const c = randomUuid();
    const a = input(c, "a");
    const b = input(c, "b");
    const results = await Promise.all([seq.append(a), seq.append(b), seq.append(a), seq.append({ ...a }), seq.append(b)]);
    assert.equal(repo.inserts.length, 1);
    const [a1, b1, a2, a3, b2] = results;
    for (const r of [a2, a3]) assert.deepEqual(r!.message, a1!.message);
    assert.deepEqual(b2!.message, b1!.message);
    assert.deepEqual(
      results.map((r) => r.duplicate),
      [false, false, true, true, true],
    );
    assert.deepEqual(await allSeqs(repo, c), [1, 2]);
    await seq.close();
  });

  it("never assigns a seq twice when two instances race on one conversation", async () => {
    const repo = new ProbeRepository();
    const s1 = sequencer(repo);
    const s2 = sequencer(repo);
    const c = randomUuid();
    // Deterministic conflict: s1 caches lastSeq 1, s2 writes 2, s1 then tries 2 again.
    assert.equal((await s1.append(input(c))).message.seq, 1);
    assert.equal((await s2.append(input(c))).message.seq, 2);
    assert.equal((await s1.append(input(c))).message.seq, 3);
    assert.ok(repo.conflicts >= 1);

    // Then both hammer the conversation at once, and also receive the same keys (a router retrying elsewhere).
    const shared = Array.from({ length: 20 }, () => input(c, "shared"));
    const calls: Promise<{ message: StoredMessage; duplicate: boolean }>[] = [];
    for (let i = 0; i < 300; i++) calls.push((i % 2 ? s1 : s2).append(input(c, `m${i}`)));
    for (const s of shared) calls.push(s1.append(s), s2.append(s));
    for (let i = 0; i < 300; i++) calls.push((i % 3 ? s2 : s1).append(input(c, `n${i}`)));
    const results = await Promise.all(calls);

    const stored = await repo.history(c, 0, 10_000);
    assert.deepEqual(stored.map((m) => m.seq).reverse(), range(3 + 300 + 20 + 300));
    const bySeq = new Map(stored.map((m) => [m.seq, m]));
    for (const r of results) assert.deepEqual(bySeq.get(r.message.seq), r.message, "every acknowledged message is stored as acknowledged");
    for (let i = 0; i < shared.length; i++) {
      const pair = results.slice(300 + 2 * i, 300 + 2 * i + 2);
      assert.deepEqual(pair[0]!.message, pair[1]!.message);
      assert.equal(pair.filter((r) => !r.duplicate).length, 1);
    }
    assert.ok(repo.conflicts > 1, "the race went through the conflict retry path");
    await Promise.all([s1.close(), s2.close()]);
  });

  it("continues at lastSeq + 1 after a restart, and still knows the old keys", async () => {
    const repo = new ProbeRepository();
    const c = randomUuid();
    const before = sequencer(repo);
    const inputs = Array.from({ length: 5 }, () => input(c));
    for (const i of inputs) await before.append(i);
    await before.close();
    const after = sequencer(repo);
    assert.equal((await after.append(input(c))).message.seq, 6);
    const resend = await after.append(inputs[2]!);
    assert.equal(resend.duplicate, true);
    assert.equal(resend.message.seq, 3);
    assert.deepEqual(await allSeqs(repo, c), range(6));
    await after.close();
  });

  it("fails the batch with StoreUnavailableError while the repository is down, and recovers", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo);
    const c = randomUuid();
    for (let i = 0; i < 3; i++) await seq.append(input(c));
    repo.down = true;
    const failing = await Promise.allSettled([seq.append(input(c)), seq.append(input(c)), seq.append(input(c))]);
    for (const r of failing) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof StoreUnavailableError);
    }
    // A conversation not loaded yet fails on its lastSeq load.
    await assert.rejects(seq.append(input(randomUuid())), StoreUnavailableError);
    repo.down = false;
    assert.equal((await seq.append(input(c))).message.seq, 4);
    assert.deepEqual(await allSeqs(repo, c), range(4));
    await seq.close();
  });

  it("keeps seqs gapless when an insert committed but its reply was lost", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo, { recentCacheBytes: 0 });
    const c = randomUuid();
    await seq.append(input(c));
    const lost = input(c);
    repo.loseInsertReply = true;
    await assert.rejects(seq.append(lost), StoreUnavailableError);
    repo.loseInsertReply = false;
    const retried = await seq.append(lost);
    assert.equal(retried.duplicate, true);
    assert.equal(retried.message.seq, 2);
    assert.equal((await seq.append(input(c))).message.seq, 3);
    assert.deepEqual(await allSeqs(repo, c), range(3));
    await seq.close();
  });

  it("gives up with AppendContentionError after bounded retries", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo, { maxAttempts: 4 });
    repo.alwaysConflict = true;
    await assert.rejects(seq.append(input(randomUuid())), AppendContentionError);
    assert.equal(repo.inserts.length, 4);
    repo.alwaysConflict = false;
    const c = randomUuid();
    assert.equal((await seq.append(input(c))).message.seq, 1);
    await seq.close();
  });

  it("evicts idle conversation logs beyond the limit and reloads them", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo, { maxCachedLogs: 2, recentCacheBytes: 0 });
    const [a, b, c] = [randomUuid(), randomUuid(), randomUuid()];
    await seq.append(input(a));
    await seq.append(input(b));
    await seq.append(input(c));
    assert.equal(seq.cachedLogs, 2);
    const loads = repo.lastSeqs;
    assert.equal((await seq.append(input(a))).message.seq, 2);
    assert.equal(repo.lastSeqs, loads + 1, "the evicted log reloads its lastSeq");
    assert.equal(seq.cachedLogs, 2);
    await seq.close();
  });

  it("finishes queued appends on close, then refuses new ones", async () => {
    const repo = new ProbeRepository();
    const seq = sequencer(repo);
    const c = randomUuid();
    const pending = Array.from({ length: 10 }, () => seq.append(input(c)));
    await seq.close();
    assert.equal((await Promise.all(pending)).length, 10);
    assert.deepEqual(await allSeqs(repo, c), range(10));
    await assert.rejects(seq.append(input(c)), SequencerClosedError);
  });

  it("takes sentAt and the message id time from the injected clock", async () => {
    const repo = new ProbeRepository();
    const now = 1_800_000_000_123;
    const seq = sequencer(repo, { clock: () => now });
    const { message } = await seq.append(input(randomUuid()));
    assert.equal(message.sentAtMs, now);
    assert.equal(parseInt(message.messageId.slice(0, 8) + message.messageId.slice(9, 13), 16), now);
    await seq.close();
  });
});
