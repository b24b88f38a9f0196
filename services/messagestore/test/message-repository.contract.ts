import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { randomUuid, UuidV7Generator } from "../../../lib/ids.js";
import { SeqConflictError } from "../src/errors.js";
import type { MessageRepository, StoredMessage } from "../src/message-repository.js";

export interface MessageRepositoryFixture {
  repository: MessageRepository;
  /** Releases what the factory opened (the repository and its database). */
  close(): Promise<void>;
}

const ids = new UuidV7Generator();

/** Messages seq from..to of one conversation, sent one second apart. */
export function messages(conversationId: string, from: number, to: number, senderId = randomUuid()): StoredMessage[] {
  const out: StoredMessage[] = [];
  for (let seq = from; seq <= to; seq++) {
    out.push({
      conversationId,
      seq,
      messageId: ids.next(),
      senderId,
      senderDeviceId: randomUuid(),
      clientMsgId: randomUuid(),
      body: `message ${seq}`,
      sentAtMs: 1_700_000_000_000 + seq * 1000 + 7,
    });
  }
  return out;
}

/** `n` random bytes (zero bytes and high bytes included), as an encoded event would be. */
export function eventBytes(n: number): Uint8Array {
  const b = new Uint8Array(randomBytes(n));
  if (n > 1) [b[0], b[n - 1]] = [0, 0xff];
  return b;
}

/**
 * Messages seq from..to of one conversation that are event messages: empty body and no
 * sender device (every other one has a body and a device, which events may have too).
 */
export function eventMessages(conversationId: string, from: number, to: number, senderId = randomUuid()): StoredMessage[] {
  return messages(conversationId, from, to, senderId).map((m, i) =>
    i % 2 === 0 ? { ...m, body: "", senderDeviceId: "", event: eventBytes(20 + i) } : { ...m, event: eventBytes(3) },
  );
}

/**
 * The contract every MessageRepository adapter keeps. The factory is called once per
 * suite; tests isolate themselves with fresh conversation ids.
 */
export function describeMessageRepository(name: string, factory: () => Promise<MessageRepositoryFixture>) {
  describe(`MessageRepository contract: ${name}`, () => {
    let fx: MessageRepositoryFixture;
    let repo: MessageRepository;
    before(async () => {
      fx = await factory();
      repo = fx.repository;
    });
    after(async () => {
      await fx.close();
    });

    it("knows nothing of a new conversation", async () => {
      const c = randomUuid();
      assert.equal(await repo.lastSeq(c), 0);
      assert.deepEqual(await repo.history(c, 0, 50), []);
      assert.deepEqual(await repo.heads([c]), []);
      assert.deepEqual(await repo.findByClientMsgIds(c, [{ senderId: randomUuid(), clientMsgId: randomUuid() }]), []);
    });

    it("stores a batch and returns it newest first, every field intact", async () => {
      const c = randomUuid();
      const batch = messages(c, 1, 5);
      batch[2]!.body = "héllo 👋🏽 \"quoted\", {braces} \\ back\nslash";
      await repo.insert(c, batch);
      assert.equal(await repo.lastSeq(c), 5);
      assert.deepEqual(await repo.history(c, 0, 50), [...batch].reverse());
      await repo.insert(c, messages(c, 6, 7));
      assert.equal(await repo.lastSeq(c), 7);
      assert.deepEqual(
        (await repo.history(c, 0, 50)).map((m) => m.seq),
        [7, 6, 5, 4, 3, 2, 1],
      );
    });

    it("pages history backwards with beforeSeq and limit", async () => {
      const c = randomUuid();
      await repo.insert(c, messages(c, 1, 5));
      const seqs = async (before: number, limit: number) => (await repo.history(c, before, limit)).map((m) => m.seq);
      assert.deepEqual(await seqs(0, 2), [5, 4]);
      assert.deepEqual(await seqs(4, 2), [3, 2]);
      assert.deepEqual(await seqs(2, 10), [1]);
      assert.deepEqual(await seqs(1, 10), []);
      assert.deepEqual(await seqs(100, 1), [5]);
    });

    it("pages forward with afterSeq and limit, oldest first, every field intact", async () => {
      const c = randomUuid();
      const batch = [...messages(c, 1, 3), ...eventMessages(c, 4, 5), ...messages(c, 6, 9)];
      await repo.insert(c, batch.slice(0, 5));
      await repo.insert(c, batch.slice(5));
      const seqs = async (after: number, limit: number) => (await repo.range(c, after, limit)).map((m) => m.seq);
      assert.deepEqual(await repo.range(c, 0, 50), batch, "oldest first, events included");
      assert.deepEqual(await seqs(0, 4), [1, 2, 3, 4]);
      assert.deepEqual(await seqs(4, 4), [5, 6, 7, 8]);
      assert.deepEqual(await seqs(8, 4), [9]);
      assert.deepEqual(await seqs(9, 4), []);
      assert.deepEqual(await seqs(1000, 4), []);
      assert.deepEqual(await repo.range(randomUuid(), 0, 10), [], "an unknown conversation");
      const other = randomUuid();
      await repo.insert(other, messages(other, 1, 2));
      assert.deepEqual(
        (await repo.range(other, 0, 10)).map((m) => m.conversationId),
        [other, other],
        "only the asked conversation",
      );
    });

    it("keeps conversations apart", async () => {
      const [a, b] = [randomUuid(), randomUuid()];
      await repo.insert(a, messages(a, 1, 3));
      await repo.insert(b, messages(b, 1, 1));
      assert.equal(await repo.lastSeq(a), 3);
      assert.equal(await repo.lastSeq(b), 1);
      assert.deepEqual(
        (await repo.history(b, 0, 50)).map((m) => m.conversationId),
        [b],
      );
    });

    it("gives the head of each conversation that has messages", async () => {
      const [a, b, empty] = [randomUuid(), randomUuid(), randomUuid()];
      const ma = messages(a, 1, 4);
      const mb = messages(b, 1, 2);
      await repo.insert(a, ma);
      await repo.insert(b, mb);
      const heads = await repo.heads([a, empty, b]);
      assert.deepEqual(
        [...heads].sort((x, y) => x.lastSeq - y.lastSeq),
        [
          { conversationId: b, lastSeq: 2, lastSentAtMs: mb[1]!.sentAtMs },
          { conversationId: a, lastSeq: 4, lastSentAtMs: ma[3]!.sentAtMs },
        ],
      );
      assert.deepEqual(await repo.heads([]), []);
    });

    it("rejects a taken seq with SeqConflictError and stores nothing of that batch", async () => {
      const c = randomUuid();
      await repo.insert(c, messages(c, 1, 2));
      const clash = messages(c, 2, 3); // seq 2 is taken, seq 3 is free
      await assert.rejects(repo.insert(c, [clash[1]!, clash[0]!]), SeqConflictError);
      assert.equal(await repo.lastSeq(c), 2);
      assert.deepEqual(await repo.findByClientMsgIds(c, clash), []);
      assert.deepEqual(
        (await repo.history(c, 0, 50)).map((m) => m.seq),
        [2, 1],
      );
    });

    it("rejects a taken idempotency key with SeqConflictError and stores nothing of that batch", async () => {
      const c = randomUuid();
      const [first] = messages(c, 1, 1);
      await repo.insert(c, [first!]);
      const [other, again] = messages(c, 2, 3);
      again!.senderId = first!.senderId;
      again!.clientMsgId = first!.clientMsgId;
      await assert.rejects(repo.insert(c, [other!, again!]), SeqConflictError);
      assert.equal(await repo.lastSeq(c), 1);
      assert.deepEqual(await repo.findByClientMsgIds(c, [other!]), []);
    });

    it("allows the same client msg id from two senders, and in two conversations", async () => {
      const [a, b] = [randomUuid(), randomUuid()];
      const [m1, m2] = messages(a, 1, 2);
      m2!.clientMsgId = m1!.clientMsgId; // another sender (messages() draws one sender per call)
      m2!.senderId = randomUuid();
      await repo.insert(a, [m1!, m2!]);
      const [n1] = messages(b, 1, 1, m1!.senderId);
      n1!.clientMsgId = m1!.clientMsgId;
      await repo.insert(b, [n1!]);
      assert.equal(await repo.lastSeq(a), 2);
      assert.equal(await repo.lastSeq(b), 1);
    });

    it("finds stored messages by idempotency key, only in the asked conversation", async () => {
      const [c, other] = [randomUuid(), randomUuid()];
      const batch = messages(c, 1, 4);
      await repo.insert(c, batch);
      const elsewhere = messages(other, 1, 1, batch[0]!.senderId);
      elsewhere[0]!.clientMsgId = batch[0]!.clientMsgId;
      await repo.insert(other, elsewhere);
      const found = await repo.findByClientMsgIds(c, [
        { senderId: batch[0]!.senderId, clientMsgId: batch[0]!.clientMsgId },
        { senderId: batch[2]!.senderId, clientMsgId: batch[2]!.clientMsgId },
        { senderId: randomUuid(), clientMsgId: batch[1]!.clientMsgId }, // right id, wrong sender
        { senderId: batch[3]!.senderId, clientMsgId: randomUuid() },
      ]);
      assert.deepEqual(
        [...found].sort((x, y) => x.seq - y.seq),
        [batch[0], batch[2]],
      );
      assert.deepEqual(await repo.findByClientMsgIds(c, []), []);
    });

    it("stores event messages (bytes intact, empty body, no sender device) next to chat messages", async () => {
      const c = randomUuid();
      const [chat] = messages(c, 1, 1);
      const events = eventMessages(c, 2, 5);
      const big = { ...messages(c, 6, 6)[0]!, body: "", senderDeviceId: "", event: eventBytes(64 * 1024) };
      await repo.insert(c, [chat!, ...events]);
      await repo.insert(c, [big]);
      const all = [chat!, ...events, big];
      const history = await repo.history(c, 0, 50);
      assert.deepEqual(history, [...all].reverse());
      assert.ok(!("event" in history[5]!), "a chat message has no event key");
      for (const m of history.slice(0, 5)) assert.equal(Object.getPrototypeOf(m.event), Uint8Array.prototype, "a plain Uint8Array");
      assert.deepEqual(
        [...(await repo.findByClientMsgIds(c, [events[0]!, big, chat!]))].sort((x, y) => x.seq - y.seq),
        [chat, events[0], big],
      );
      assert.equal(await repo.lastSeq(c), 6);
    });

    it("gives each head's newest message when asked, and only then", async () => {
      const [a, b, empty] = [randomUuid(), randomUuid(), randomUuid()];
      const ma = messages(a, 1, 3);
      const mb = [...messages(b, 1, 1), ...eventMessages(b, 2, 2)];
      await repo.insert(a, ma);
      await repo.insert(b, mb);
      const heads = await repo.heads([a, empty, b, a], true);
      assert.deepEqual(
        [...heads].sort((x, y) => x.lastSeq - y.lastSeq),
        [
          { conversationId: b, lastSeq: 2, lastSentAtMs: mb[1]!.sentAtMs, lastMessage: mb[1] },
          { conversationId: a, lastSeq: 3, lastSentAtMs: ma[2]!.sentAtMs, lastMessage: ma[2] },
        ],
      );
      for (const h of await repo.heads([a, b], false)) assert.ok(!("lastMessage" in h));
      assert.deepEqual(await repo.heads([], true), []);
      assert.deepEqual(await repo.heads([empty], true), []);
    });

    it("stores a batch of 256 in one insert", async () => {
      const c = randomUuid();
      const batch = messages(c, 1, 256);
      await repo.insert(c, batch);
      assert.equal(await repo.lastSeq(c), 256);
      assert.equal((await repo.findByClientMsgIds(c, batch)).length, 256);
      assert.deepEqual(await repo.history(c, 0, 200), batch.slice(56).reverse());
      assert.deepEqual(await repo.range(c, 0, 200), batch.slice(0, 200));
      assert.deepEqual(await repo.range(c, 200, 1000), batch.slice(200));
    });
  });
}
