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
