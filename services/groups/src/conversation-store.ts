import type {
  ChangeRecord,
  Conversation,
  ConversationKind,
  CursorMove,
  DeviceCursor,
  Member,
  PendingChange,
  ReadCursor,
  Receipts,
  Role,
} from "./model.js";

/**
 * The work of one mutation of a group, inside one transaction that holds the group's
 * row lock (FOR UPDATE): concurrent mutations of one group run one after the other, so
 * checks made here (roles, "already a member", the member cap) cannot race. The
 * callback's rules decide; throwing rolls everything back.
 */
export interface GroupTransaction {
  /**
   * The locked conversation as it was when the lock was taken; undefined when unknown
   * or deleted. Direct conversations are returned too (the rules refuse to manage them).
   */
  readonly conversation: Conversation | undefined;
  /** The memberships (any state) of these users; missing users are not in the answer. */
  members(userIds: readonly string[]): Promise<Member[]>;
  /** Adds users as active `member`s; users who had left become active again (new joined_at, left_seq cleared). */
  addMembers(userIds: readonly string[], atMs: number): Promise<void>;
  /** Active members → left (left_seq unset until the change is published). */
  leave(userIds: readonly string[]): Promise<void>;
  setRole(userId: string, role: Role): Promise<void>;
  update(fields: { name?: string; topic?: string }): Promise<void>;
  /** Marks the group deleted; every active member → left. */
  markDeleted(atMs: number): Promise<void>;
  /** Bumps the group's version and records the change in the outbox. */
  recordChange(change: ChangeRecord): Promise<void>;
  /** The group as this transaction sees it now. */
  current(): Promise<Conversation>;
}

export interface NewGroup {
  conversationId: string;
  name: string;
  topic: string;
  createdBy: string;
  /** Other initial members (the creator becomes owner). */
  memberIds: readonly string[];
  atMs: number;
}

/** The conversations port: conversations, members, blocks and the change outbox (Postgres). */
export interface PushCandidateQuery {
  userIds?: readonly string[];
  excludeUserIds: readonly string[];
  afterUserId: string;
  limit: number;
}

export interface PushCandidates {
  kind: ConversationKind;
  name: string;
  candidates: { userId: string; deliveredSeq: number; readSeq: number }[];
}

export interface ConversationStore {
  /**
   * Creates the direct conversation `conversationId` of two users unless it exists.
   * Two concurrent calls for the same pair create it once. When it does not exist and a
   * block exists between the two (either way), nothing is created: `{ blocked: true }`.
   */
  getOrCreateDirect(
    conversationId: string,
    userA: string,
    userB: string,
    createdAtMs: number,
  ): Promise<{ conversation: Conversation; created: boolean } | { blocked: true }>;
  /** Undefined for unknown and deleted conversations. */
  get(conversationId: string): Promise<Conversation | undefined>;
  /**
   * The conversation and which of `userIds` are active members that may send (direct
   * conversations with a block: none). Undefined for unknown and deleted conversations.
   */
  checkMembers(conversationId: string, userIds: readonly string[]): Promise<{ conversation: Conversation; allowed: string[] } | undefined>;
  /** A user's membership, current or past; undefined when never a member or the conversation is unknown/deleted. */
  getMembership(conversationId: string, userId: string): Promise<{ conversation: Conversation; member: Member } | undefined>;
  /** Conversations the user is or was a member of (deleted ones omitted), newest first. */
  listForUser(userId: string, limit: number): Promise<{ conversation: Conversation; member: Member }[]>;
  /** For each user, the (not deleted) groups they are an active member of. Users without groups map to []. */
  listUserGroupIds(userIds: readonly string[]): Promise<Map<string, string[]>>;
  /** Active members ordered by user id, after `afterUserId` ("" = from the start). */
  listMembers(conversationId: string, afterUserId: string, limit: number): Promise<Member[]>;

  createGroup(group: NewGroup, change: ChangeRecord): Promise<Conversation>;
  /** Runs `fn` in a transaction holding the group's row lock (see GroupTransaction). */
  mutateGroup<T>(conversationId: string, fn: (tx: GroupTransaction) => Promise<T>): Promise<T>;

  /** False when the user has no membership (any state) of a live conversation. */
  setMuted(conversationId: string, userId: string, muted: boolean): Promise<boolean>;
  /** Moves cursors forward only; cursors of non-members are ignored. */
  advanceReadCursors(cursors: readonly ReadCursor[]): Promise<void>;
  /**
   * Receipts, in one transaction for the whole batch. For each cursor of a member (active,
   * or past with its left_seq set: cut to it; deleted conversations ignored): the device's
   * delivered cursor and the user's read cursor move to the reported values cut to
   * `maxSeq`, never back; a read counts as delivered for that device. Several cursors
   * of one (user, device, conversation) count as one with the highest values.
   * Answers one move per (user, device, conversation) whose cursor moved, in the order
   * of their first appearance. When several devices of one user move its read cursor in
   * one batch, the move is answered once, on the device that reported the highest read
   * (the others answer read from === to, the new value).
   */
  advanceCursors(cursors: readonly DeviceCursor[]): Promise<CursorMove[]>;
  /**
   * Receipts of message `seq` over the active members, counted in the database (never
   * loading the members), in one statement; with `readers`, one page of reader ids by
   * user id after `readers.afterUserId` ("" = from the start). Undefined for unknown
   * and deleted conversations.
   */
  getReceipts(
    conversationId: string,
    seq: number,
    readers?: { afterUserId: string; limit: number },
  ): Promise<Receipts | undefined>;

  /**
   * Who should get a push for the messages up to `seq`: active members whose delivered
   * and read cursors are both below `seq` and who have not muted the conversation,
   * ordered by user id after `q.afterUserId` ("" = from the start), at most `q.limit`;
   * only `q.userIds` when given; never `q.excludeUserIds`. Undefined for unknown and
   * deleted conversations.
   */
  listPushCandidates(conversationId: string, seq: number, q: PushCandidateQuery): Promise<PushCandidates | undefined>;

  /**
   * Records a block (idempotent). When it is new, bumps the pair's direct conversation
   * version (if it exists) and records `change` in the outbox; returns whether it was new.
   */
  block(blockerId: string, blockedId: string, directConversationId: string, change: ChangeRecord): Promise<boolean>;
  /** The reverse of `block`; returns whether a block was removed. */
  unblock(blockerId: string, blockedId: string, directConversationId: string, change: ChangeRecord): Promise<boolean>;
  /** The users `blockerId` blocked, by user id. */
  listBlocked(blockerId: string): Promise<string[]>;

  /** Unpublished changes of one conversation, oldest first. */
  pendingChanges(conversationId: string, limit: number): Promise<PendingChange[]>;
  /** Conversations with unpublished changes, the one with the oldest change first. */
  conversationsWithPendingChanges(limit: number): Promise<string[]>;
  /**
   * The router stored the change as `seq` (0: no event): marks it published and, when
   * seq > 0, sets left_seq = seq for the users who left with it (`"all"`: every left
   * member of the conversation) whose left_seq is still unset.
   */
  markPublished(
    conversationId: string,
    changeId: string,
    seq: number,
    leftUserIds: readonly string[] | "all",
    atMs: number,
  ): Promise<void>;
  close(): Promise<void>;
}
