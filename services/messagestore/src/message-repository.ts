/**
 * The message repository port: durable, per-conversation message logs, shaped for a
 * wide-column store (partitioned by conversation, clustered by seq). Adapters:
 * message-repository-sql.ts (PGlite / Postgres); a Cassandra adapter comes later.
 */

export interface StoredMessage {
  conversationId: string;
  /** 1, 2, 3, ... per conversation, without gaps. */
  seq: number;
  /** UUIDv7, globally unique. */
  messageId: string;
  senderId: string;
  senderDeviceId: string;
  /** The sender's idempotency key: (conversationId, senderId, clientMsgId) is unique. */
  clientMsgId: string;
  body: string;
  sentAtMs: number;
}

export interface IdempotencyKey {
  senderId: string;
  clientMsgId: string;
}

export interface ConversationHead {
  conversationId: string;
  lastSeq: number;
  lastSentAtMs: number;
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
  /** The newest message of each conversation that has one (any order; empty ones are left out). */
  heads(conversationIds: readonly string[]): Promise<ConversationHead[]>;
  close?(): Promise<void>;
}

/** The map key of an idempotency key (UUIDs contain no "/"). */
export function idempotencyKey(senderId: string, clientMsgId: string): string {
  return `${senderId}/${clientMsgId}`;
}
