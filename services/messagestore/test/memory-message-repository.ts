import { SeqConflictError } from "../src/errors.js";
import {
  idempotencyKey,
  type ConversationHead,
  type IdempotencyKey,
  type MessageRepository,
  type StoredMessage,
} from "../src/message-repository.js";

/** Lets other tasks run, as a round trip to a database would. */
const yieldTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A copy that shares nothing with the stored message (the event bytes included). */
function copy(m: StoredMessage): StoredMessage {
  return m.event ? { ...m, event: new Uint8Array(m.event) } : { ...m };
}

/**
 * A MessageRepository in memory, for fast sequencer tests. Every call yields once
 * before it acts, so concurrent writers interleave as they would over a network.
 * It keeps the same contract as the SQL adapter (message-repository.test.ts checks).
 */
export class MemoryMessageRepository implements MessageRepository {
  private readonly logs = new Map<string, { bySeq: Map<number, StoredMessage>; byKey: Map<string, StoredMessage>; last: number }>();

  private log(conversationId: string) {
    let l = this.logs.get(conversationId);
    if (!l) this.logs.set(conversationId, (l = { bySeq: new Map(), byKey: new Map(), last: 0 }));
    return l;
  }

  async lastSeq(conversationId: string): Promise<number> {
    await yieldTurn();
    return this.logs.get(conversationId)?.last ?? 0;
  }

  async findByClientMsgIds(conversationId: string, keys: readonly IdempotencyKey[]): Promise<StoredMessage[]> {
    await yieldTurn();
    const l = this.logs.get(conversationId);
    if (!l) return [];
    const out = new Map<string, StoredMessage>();
    for (const k of keys) {
      const key = idempotencyKey(k.senderId, k.clientMsgId);
      const m = l.byKey.get(key);
      if (m) out.set(key, copy(m));
    }
    return [...out.values()];
  }

  async insert(conversationId: string, messages: readonly StoredMessage[]): Promise<void> {
    await yieldTurn();
    const l = this.log(conversationId);
    const seqs = new Set<number>();
    const keys = new Set<string>();
    for (const m of messages) {
      const key = idempotencyKey(m.senderId, m.clientMsgId);
      if (l.bySeq.has(m.seq) || seqs.has(m.seq) || l.byKey.has(key) || keys.has(key)) throw new SeqConflictError();
      seqs.add(m.seq);
      keys.add(key);
    }
    for (const m of messages) {
      const stored = copy(m);
      l.bySeq.set(m.seq, stored);
      l.byKey.set(idempotencyKey(m.senderId, m.clientMsgId), stored);
      l.last = Math.max(l.last, m.seq);
    }
  }

  async history(conversationId: string, beforeSeq: number, limit: number): Promise<StoredMessage[]> {
    await yieldTurn();
    const l = this.logs.get(conversationId);
    if (!l) return [];
    return [...l.bySeq.values()]
      .filter((m) => beforeSeq === 0 || m.seq < beforeSeq)
      .sort((a, b) => b.seq - a.seq)
      .slice(0, limit)
      .map(copy);
  }

  async range(conversationId: string, afterSeq: number, limit: number): Promise<StoredMessage[]> {
    await yieldTurn();
    const l = this.logs.get(conversationId);
    if (!l) return [];
    const out: StoredMessage[] = [];
    for (let seq = afterSeq + 1; out.length < limit; seq++) {
      const m = l.bySeq.get(seq);
      if (!m) break;
      out.push(copy(m));
    }
    return out;
  }

  async heads(conversationIds: readonly string[], withLastMessage = false): Promise<ConversationHead[]> {
    await yieldTurn();
    const out: ConversationHead[] = [];
    for (const id of new Set(conversationIds)) {
      const l = this.logs.get(id);
      const m = l?.bySeq.get(l.last);
      if (!m) continue;
      const head: ConversationHead = { conversationId: id, lastSeq: m.seq, lastSentAtMs: m.sentAtMs };
      if (withLastMessage) head.lastMessage = copy(m);
      out.push(head);
    }
    return out;
  }
}
