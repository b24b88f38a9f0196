/**
 * The message repository port: durable, per-conversation message logs, shaped for a
 * wide-column store (partitioned by conversation, clustered by seq). Adapters:
 * message-repository-sql.ts (PGlite / Postgres) and message-repository-cassandra.ts.
 *
 * A message is a chat message (a body of 1..4,000 characters) or an event message (an
 * encoded client ConversationEvent in `event`, opaque here; the body may be empty and
 * the sender device may be unknown, ""). The service validates that; adapters store
 * whatever they are given.
 */

export interface StoredMessage {
  conversationId: string;
  /** 1, 2, 3, ... per conversation, without gaps. */
  seq: number;
  /** UUIDv7, globally unique. */
  messageId: string;
  senderId: string;
  /** "" when the message has no sender device (event messages). */
  senderDeviceId: string;
  /** The sender's idempotency key: (conversationId, senderId, clientMsgId) is unique. */
  clientMsgId: string;
  body: string;
  sentAtMs: number;
  /**
   * Event messages only: an encoded parley.client.v1.ConversationEvent (non-empty).
   * Absent (the key left out, never undefined or empty) on chat messages, so adapters
   * return objects equal to the ones stored.
   */
  event?: Uint8Array;
}

export interface IdempotencyKey {
  senderId: string;
  clientMsgId: string;
}

export interface ConversationHead {
  conversationId: string;
  lastSeq: number;
  lastSentAtMs: number;
  /**
   * The newest stored message, only when asked for (`heads(ids, true)`). Its seq may be
   * below lastSeq while a batch is being written (Cassandra reserves seqs first).
   */
  lastMessage?: StoredMessage;
}

export interface MessageRepository {
  /** The highest stored seq of the conversation; 0 when it has no message. */
  lastSeq(conversationId: string): Promise<number>;
  /** The stored messages of the conversation having one of `keys` (any order). */
  findByClientMsgIds(conversationId: string, keys: readonly IdempotencyKey[]): Promise<StoredMessage[]>;
  /**
   * Stores `messages` (all of `conversationId`), all or nothing. Throws
   * SeqConflictError when a seq or an idempotency key is already taken (another
   * writer raced); then nothing of the batch is stored.
   */
  insert(conversationId: string, messages: readonly StoredMessage[]): Promise<void>;
  /** Up to `limit` messages with seq < beforeSeq (0 = from the newest), newest first. */
  history(conversationId: string, beforeSeq: number, limit: number): Promise<StoredMessage[]>;
  /**
   * Up to `limit` messages with seq > afterSeq, oldest first, with consecutive seqs: the
   * answer stops before the first seq that is not (yet) stored (resuming devices).
   */
  range(conversationId: string, afterSeq: number, limit: number): Promise<StoredMessage[]>;
  /**
   * The head of each conversation that has a message (any order; empty ones are left
   * out), with its newest message when `withLastMessage` is true.
   */
  heads(conversationIds: readonly string[], withLastMessage?: boolean): Promise<ConversationHead[]>;
  close?(): Promise<void>;
}

/** The map key of an idempotency key (UUIDs contain no "/"). */
export function idempotencyKey(senderId: string, clientMsgId: string): string {
  return `${senderId}/${clientMsgId}`;
}

/** A plain Uint8Array copy of the bytes a driver returned (pg and cassandra-driver give Buffers). */
export function plainBytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}
