export type ConversationKind = "direct" | "group";

/** A member's role in a group (direct conversations: both are `member`). */
export type Role = "owner" | "admin" | "member";

/** `left`: left, was removed, or the group was deleted; reads history up to `leftSeq`. */
export type MemberState = "active" | "left";

export interface Conversation {
  conversationId: string;
  kind: ConversationKind;
  /** Direct conversations: both users (sorted). Groups: empty (page through the members). */
  memberIds: string[];
  createdAtMs: number;
  /** Bumped on every change of membership or settings (blocks of a direct pair included). */
  version: number;
  /** Groups only ("" for direct conversations). */
  name: string;
  topic: string;
  createdBy: string;
  /** Active members. */
  memberCount: number;
  /** Direct conversations with a block in either direction: both users; else empty. */
  blockedUserIds: string[];
}

export interface Member {
  userId: string;
  role: Role;
  state: MemberState;
  joinedAtMs: number;
  /** State `left`: the last sequence number readable (0 while the leave event is not stored yet). */
  leftSeq: number;
  readSeq: number;
  muted: boolean;
}

export interface ReadCursor {
  userId: string;
  conversationId: string;
  seq: number;
}

/**
 * One committed change waiting in the outbox: `payload` is what the router is sent
 * (an encoded parley.router.v1.ApplyConversationChangeRequest; opaque to the store).
 */
export interface PendingChange {
  changeId: string;
  conversationId: string;
  payload: Uint8Array;
}

/** A change to record in the outbox, in the transaction of the mutation it describes. */
export interface ChangeRecord {
  changeId: string;
  payload: Uint8Array;
  atMs: number;
}

/**
 * One device's report for one conversation (receipts): what it received and what its
 * user read. 0: not reported. Both are cut to `maxSeq` (the conversation's newest seq).
 */
export interface DeviceCursor {
  userId: string;
  deviceId: string;
  conversationId: string;
  deliveredSeq: number;
  readSeq: number;
  maxSeq: number;
}

/**
 * A cursor that moved: the device's delivered cursor and/or its user's read cursor
 * (from === to for the one that did not move), with what is needed to tell others.
 */
export interface CursorMove {
  userId: string;
  deviceId: string;
  conversationId: string;
  kind: ConversationKind;
  /** Direct conversations: both users (sorted). Groups: empty. */
  memberIds: string[];
  /** Active members. */
  memberCount: number;
  deliveredFrom: number;
  deliveredTo: number;
  readFrom: number;
  readTo: number;
}

/** Receipts of one message (`seq`) of a conversation, over its active members. */
export interface Receipts {
  memberCount: number;
  /** Members with a device that received it, or who read it. */
  deliveredCount: number;
  /** Members whose read cursor is at or past it. */
  readCount: number;
  /** When asked: readers after `afterUserId`, by user id, at most `limit`. */
  readerIds: string[];
}
