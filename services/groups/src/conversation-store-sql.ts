import { migrate, sqlState, type Migration, type Sql, type SqlExecutor } from "../../../lib/sql.js";
import type { ConversationStore, GroupTransaction, NewGroup, PushCandidateQuery, PushCandidates } from "./conversation-store.js";
import type {
  ChangeRecord,
  Conversation,
  ConversationKind,
  CursorMove,
  DeviceCursor,
  Member,
  MemberState,
  PendingChange,
  ReadCursor,
  Receipts,
  Role,
} from "./model.js";

const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: "conversations and members",
    sql: `
      CREATE TABLE conversations (
        conversation_id uuid PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('direct', 'group')),
        created_at timestamptz NOT NULL,
        version bigint NOT NULL DEFAULT 1
      );
      CREATE TABLE conversation_members (
        conversation_id uuid NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
        user_id uuid NOT NULL,
        role text NOT NULL DEFAULT 'member',
        joined_at timestamptz NOT NULL,
        PRIMARY KEY (conversation_id, user_id)
      );
      CREATE INDEX conversation_members_by_user ON conversation_members (user_id, conversation_id);
    `,
  },
  {
    version: 2,
    name: "groups, member state and settings, blocks, change outbox",
    sql: `
      ALTER TABLE conversations
        ADD COLUMN name text NOT NULL DEFAULT '',
        ADD COLUMN topic text NOT NULL DEFAULT '',
        ADD COLUMN created_by uuid,
        ADD COLUMN deleted_at timestamptz,
        ADD COLUMN member_count integer NOT NULL DEFAULT 0;
      UPDATE conversations c SET member_count =
        (SELECT count(*) FROM conversation_members m WHERE m.conversation_id = c.conversation_id);
      ALTER TABLE conversation_members
        ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'left')),
        ADD COLUMN left_seq bigint,
        ADD COLUMN read_seq bigint NOT NULL DEFAULT 0,
        ADD COLUMN muted boolean NOT NULL DEFAULT false,
        ADD CONSTRAINT conversation_members_role CHECK (role IN ('owner', 'admin', 'member'));
      CREATE INDEX conversation_members_active ON conversation_members (conversation_id, user_id) WHERE state = 'active';
      CREATE TABLE blocks (
        blocker_id uuid NOT NULL,
        blocked_id uuid NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (blocker_id, blocked_id)
      );
      CREATE TABLE conversation_changes (
        change_id uuid PRIMARY KEY,
        position bigint GENERATED ALWAYS AS IDENTITY,
        conversation_id uuid NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL,
        published_at timestamptz,
        seq bigint
      );
      CREATE INDEX conversation_changes_pending ON conversation_changes (conversation_id, position) WHERE published_at IS NULL;
    `,
  },
  {
    version: 3,
    name: "receipts: per-device delivered cursors, users' delivered cursor, receipt indexes",
    // Users' read cursors stay in conversation_members.read_seq; device_cursors holds each
    // device's delivered cursor, and conversation_members.delivered_seq the highest of its
    // user's devices and read_seq (kept by the cursor updates: delivered_seq >= read_seq),
    // so GetReceipts counts receivers and readers of one message from index ranges of
    // those at or past it, never reading every member.
    sql: `
      CREATE TABLE device_cursors (
        conversation_id uuid NOT NULL,
        user_id uuid NOT NULL,
        device_id uuid NOT NULL,
        delivered_seq bigint NOT NULL,
        PRIMARY KEY (conversation_id, user_id, device_id),
        FOREIGN KEY (conversation_id, user_id) REFERENCES conversation_members (conversation_id, user_id) ON DELETE CASCADE
      );
      ALTER TABLE conversation_members ADD COLUMN delivered_seq bigint NOT NULL DEFAULT 0;
      UPDATE conversation_members SET delivered_seq = read_seq WHERE read_seq > 0;
      CREATE INDEX conversation_members_read ON conversation_members (conversation_id, read_seq, user_id) WHERE state = 'active';
      CREATE INDEX conversation_members_delivered ON conversation_members (conversation_id, delivered_seq) WHERE state = 'active';
    `,
  },
];

/** SQLSTATEs after which a whole transaction may simply be run again. */
const RETRYABLE = new Set(["40P01", "40001"]); // deadlock detected, serialization failure
const ATTEMPTS = 3;

/** The columns of a Conversation, over `conversations c`. */
const CONVERSATION = `
  c.conversation_id, c.kind, c.created_at, c.version, c.name, c.topic, c.created_by::text AS created_by, c.member_count,
  CASE WHEN c.kind = 'direct'
    THEN ARRAY(SELECT d.user_id::text FROM conversation_members d WHERE d.conversation_id = c.conversation_id ORDER BY d.user_id)
    ELSE '{}'::text[] END AS member_ids,
  (c.kind = 'direct' AND EXISTS (
    SELECT 1 FROM blocks b
    JOIN conversation_members x ON x.conversation_id = c.conversation_id AND x.user_id = b.blocker_id
    JOIN conversation_members y ON y.conversation_id = c.conversation_id AND y.user_id = b.blocked_id)) AS blocked`;

/** The columns of a Member, over `conversation_members m`. */
const MEMBER = `
  m.user_id::text AS m_user_id, m.role AS m_role, m.state AS m_state, m.joined_at AS m_joined_at,
  m.left_seq AS m_left_seq, m.read_seq AS m_read_seq, m.muted AS m_muted`;

interface ConversationRow {
  conversation_id: string;
  kind: ConversationKind;
  created_at: Date;
  version: string | number;
  name: string;
  topic: string;
  created_by: string | null;
  member_count: number;
  member_ids: string[];
  blocked: boolean;
}

interface MemberRow {
  m_user_id: string;
  m_role: Role;
  m_state: MemberState;
  m_joined_at: Date;
  m_left_seq: string | number | null;
  m_read_seq: string | number;
  m_muted: boolean;
}

function toConversation(r: ConversationRow): Conversation {
  return {
    conversationId: r.conversation_id,
    kind: r.kind,
    memberIds: r.member_ids,
    createdAtMs: r.created_at.getTime(),
    version: Number(r.version),
    name: r.name,
    topic: r.topic,
    createdBy: r.created_by ?? "",
    memberCount: Number(r.member_count),
    blockedUserIds: r.blocked ? r.member_ids : [],
  };
}

function toMember(r: MemberRow): Member {
  return {
    userId: r.m_user_id,
    role: r.m_role,
    state: r.m_state,
    joinedAtMs: r.m_joined_at.getTime(),
    leftSeq: r.m_left_seq === null ? 0 : Number(r.m_left_seq),
    readSeq: Number(r.m_read_seq),
    muted: r.m_muted,
  };
}

const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** Conversations over the Sql port: PGlite embedded, the same SQL on Postgres. */
export class SqlConversationStore implements ConversationStore {
  private constructor(private readonly sql: Sql) {}

  static async open(sql: Sql): Promise<SqlConversationStore> {
    await migrate(sql, "groups", MIGRATIONS);
    return new SqlConversationStore(sql);
  }

  async getOrCreateDirect(conversationId: string, userA: string, userB: string, createdAtMs: number) {
    return this.sql.transaction(async (tx): Promise<{ conversation: Conversation; created: boolean } | { blocked: true }> => {
      const existing = await selectConversation(tx, conversationId);
      if (existing) return { conversation: existing, created: false };
      const blocks = await tx.query(
        `SELECT 1 FROM blocks WHERE (blocker_id = $1 AND blocked_id = $2) OR (blocker_id = $2 AND blocked_id = $1)`,
        [userA, userB],
      );
      if (blocks.length > 0) return { blocked: true };
      const inserted = await tx.query(
        `INSERT INTO conversations (conversation_id, kind, created_at, member_count) VALUES ($1, 'direct', $2, 2)
         ON CONFLICT (conversation_id) DO NOTHING RETURNING conversation_id`,
        [conversationId, new Date(createdAtMs)],
      );
      const created = inserted.length === 1;
      if (created) {
        await tx.query(
          `INSERT INTO conversation_members (conversation_id, user_id, joined_at) VALUES ($1, $2, $4), ($1, $3, $4)`,
          [conversationId, userA, userB, new Date(createdAtMs)],
        );
      }
      const conversation = await selectConversation(tx, conversationId);
      if (!conversation) throw new Error(`conversation ${conversationId} vanished inside its transaction`);
      return { conversation, created };
    });
  }

  get(conversationId: string): Promise<Conversation | undefined> {
    return selectConversation(this.sql, conversationId);
  }

  async checkMembers(conversationId: string, userIds: readonly string[]) {
    const rows = await this.sql.query<ConversationRow & { allowed: string[] }>(
      `SELECT ${CONVERSATION},
         ARRAY(SELECT m.user_id::text FROM conversation_members m
               WHERE m.conversation_id = c.conversation_id AND m.state = 'active' AND m.user_id = ANY($2::uuid[])
               ORDER BY m.user_id) AS allowed
       FROM conversations c WHERE c.conversation_id = $1 AND c.deleted_at IS NULL`,
      [conversationId, userIds],
    );
    const r = rows[0];
    if (!r) return undefined;
    return { conversation: toConversation(r), allowed: r.blocked ? [] : r.allowed };
  }

  async getMembership(conversationId: string, userId: string) {
    const rows = await this.sql.query<ConversationRow & MemberRow>(
      `SELECT ${CONVERSATION}, ${MEMBER}
       FROM conversations c JOIN conversation_members m ON m.conversation_id = c.conversation_id
       WHERE c.conversation_id = $1 AND m.user_id = $2 AND c.deleted_at IS NULL`,
      [conversationId, userId],
    );
    const r = rows[0];
    return r && { conversation: toConversation(r), member: toMember(r) };
  }

  async listForUser(userId: string, limit: number) {
    const rows = await this.sql.query<ConversationRow & MemberRow>(
      `SELECT ${CONVERSATION}, ${MEMBER}
       FROM conversation_members m JOIN conversations c ON c.conversation_id = m.conversation_id
       WHERE m.user_id = $1 AND c.deleted_at IS NULL
       ORDER BY c.created_at DESC, c.conversation_id LIMIT $2`,
      [userId, limit],
    );
    return rows.map((r) => ({ conversation: toConversation(r), member: toMember(r) }));
  }

  async listUserGroupIds(userIds: readonly string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>(userIds.map((u) => [u, []]));
    if (userIds.length === 0) return out;
    const rows = await this.sql.query<{ user_id: string; ids: string[] }>(
      `SELECT m.user_id::text AS user_id, array_agg(m.conversation_id::text ORDER BY m.conversation_id) AS ids
       FROM conversation_members m JOIN conversations c ON c.conversation_id = m.conversation_id
       WHERE m.user_id = ANY($1::uuid[]) AND m.state = 'active' AND c.kind = 'group' AND c.deleted_at IS NULL
       GROUP BY m.user_id`,
      [userIds],
    );
    for (const r of rows) out.set(r.user_id, r.ids);
    return out;
  }

  async listMembers(conversationId: string, afterUserId: string, limit: number): Promise<Member[]> {
    const rows = afterUserId
      ? await this.sql.query<MemberRow>(
          `SELECT ${MEMBER} FROM conversation_members m
           WHERE m.conversation_id = $1 AND m.state = 'active' AND m.user_id > $2 ORDER BY m.user_id LIMIT $3`,
          [conversationId, afterUserId, limit],
        )
      : await this.sql.query<MemberRow>(
          `SELECT ${MEMBER} FROM conversation_members m
           WHERE m.conversation_id = $1 AND m.state = 'active' ORDER BY m.user_id LIMIT $2`,
          [conversationId, limit],
        );
    return rows.map(toMember);
  }

  async createGroup(group: NewGroup, change: ChangeRecord): Promise<Conversation> {
    return this.sql.transaction(async (tx) => {
      const at = new Date(group.atMs);
      await tx.query(
        `INSERT INTO conversations (conversation_id, kind, created_at, name, topic, created_by, member_count)
         VALUES ($1, 'group', $2, $3, $4, $5, $6)`,
        [group.conversationId, at, group.name, group.topic, group.createdBy, group.memberIds.length + 1],
      );
      await tx.query(
        `INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
         VALUES ($1, $2, 'owner', $3)`,
        [group.conversationId, group.createdBy, at],
      );
      if (group.memberIds.length > 0) {
        await tx.query(
          `INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
           SELECT $1, u, 'member', $3 FROM unnest($2::uuid[]) AS u`,
          [group.conversationId, group.memberIds, at],
        );
      }
      await insertChange(tx, group.conversationId, change);
      const conversation = await selectConversation(tx, group.conversationId);
      if (!conversation) throw new Error(`group ${group.conversationId} vanished inside its transaction`);
      return conversation;
    });
  }

  mutateGroup<T>(conversationId: string, fn: (tx: GroupTransaction) => Promise<T>): Promise<T> {
    return this.sql.transaction(async (tx) => {
      const locked = await tx.query(
        `SELECT 1 FROM conversations WHERE conversation_id = $1 AND deleted_at IS NULL FOR UPDATE`,
        [conversationId],
      );
      const conversation = locked.length > 0 ? await selectConversation(tx, conversationId) : undefined;
      return fn(new SqlGroupTransaction(tx, conversationId, conversation));
    });
  }

  async setMuted(conversationId: string, userId: string, muted: boolean): Promise<boolean> {
    const rows = await this.sql.query(
      `UPDATE conversation_members m SET muted = $3
       FROM conversations c
       WHERE m.conversation_id = $1 AND m.user_id = $2 AND c.conversation_id = m.conversation_id AND c.deleted_at IS NULL
       RETURNING 1`,
      [conversationId, userId, muted],
    );
    return rows.length > 0;
  }

  async advanceReadCursors(cursors: readonly ReadCursor[]): Promise<void> {
    if (cursors.length === 0) return;
    await this.sql.query(
      `UPDATE conversation_members m
       SET read_seq = GREATEST(m.read_seq, v.seq), delivered_seq = GREATEST(m.delivered_seq, v.seq)
       FROM (SELECT t.user_id, t.conversation_id, max(t.seq) AS seq
             FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) AS t (user_id, conversation_id, seq)
             GROUP BY t.user_id, t.conversation_id) AS v
       WHERE m.user_id = v.user_id AND m.conversation_id = v.conversation_id AND m.read_seq < v.seq`,
      [cursors.map((c) => c.userId), cursors.map((c) => c.conversationId), cursors.map((c) => String(c.seq))],
    );
  }

  async advanceCursors(cursors: readonly DeviceCursor[]): Promise<CursorMove[]> {
    if (cursors.length === 0) return [];
    const pairs = [cursors.map((c) => c.conversationId), cursors.map((c) => c.userId)];
    const params = [
      cursors.map((c) => c.userId),
      cursors.map((c) => c.deviceId),
      cursors.map((c) => c.conversationId),
      cursors.map((c) => String(c.deliveredSeq)),
      cursors.map((c) => String(c.readSeq)),
      cursors.map((c) => String(c.maxSeq)),
    ];
    const rows = await retrying(() =>
      this.sql.transaction(async (tx) => {
        // The membership rows are the lock of their user's cursors (read and every
        // device's delivered), taken in one order so batches do not deadlock each other.
        // The next statement starts after, so it reads the latest committed cursors:
        // the `from` values it answers are exact under concurrency.
        await tx.query(
          `SELECT 1 FROM conversation_members m
           WHERE (m.conversation_id, m.user_id) IN (SELECT t.c, t.u FROM unnest($1::uuid[], $2::uuid[]) AS t (c, u))
           ORDER BY m.conversation_id, m.user_id FOR UPDATE OF m`,
          pairs,
        );
        return tx.query<MoveRow>(ADVANCE_CURSORS, params);
      }),
    );
    return rows.map((r) => ({
      userId: r.user_id,
      deviceId: r.device_id,
      conversationId: r.conversation_id,
      kind: r.kind,
      memberIds: r.member_ids,
      memberCount: Number(r.member_count),
      deliveredFrom: Number(r.delivered_from),
      deliveredTo: Number(r.delivered_to),
      readFrom: Number(r.read_from),
      readTo: Number(r.read_to),
    }));
  }

  async getReceipts(conversationId: string, seq: number, readers?: { afterUserId: string; limit: number }): Promise<Receipts | undefined> {
    const rows = await this.sql.query<{
      member_count: number;
      read_count: string | number;
      delivered_count: string | number;
      reader_ids: string[];
    }>(
      `SELECT c.member_count,
         (SELECT count(*) FROM conversation_members m
          WHERE m.conversation_id = c.conversation_id AND m.state = 'active' AND m.read_seq >= $2) AS read_count,
         (SELECT count(*) FROM conversation_members m
          WHERE m.conversation_id = c.conversation_id AND m.state = 'active' AND m.delivered_seq >= $2) AS delivered_count,
         CASE WHEN $3::boolean THEN ARRAY(
           SELECT m.user_id::text FROM conversation_members m
           WHERE m.conversation_id = c.conversation_id AND m.state = 'active' AND m.read_seq >= $2
             AND m.user_id > COALESCE($4::uuid, '00000000-0000-0000-0000-000000000000'::uuid)
           ORDER BY m.user_id LIMIT $5)
         ELSE '{}'::text[] END AS reader_ids
       FROM conversations c WHERE c.conversation_id = $1 AND c.deleted_at IS NULL`,
      [conversationId, String(seq), readers !== undefined, readers?.afterUserId || null, readers?.limit ?? 0],
    );
    const r = rows[0];
    if (!r) return undefined;
    return {
      memberCount: Number(r.member_count),
      readCount: Number(r.read_count),
      deliveredCount: Number(r.delivered_count),
      readerIds: r.reader_ids,
    };
  }

  async listPushCandidates(conversationId: string, seq: number, q: PushCandidateQuery): Promise<PushCandidates | undefined> {
    const heads = await this.sql.query<{ kind: ConversationKind; name: string }>(
      `SELECT kind, name FROM conversations WHERE conversation_id = $1 AND deleted_at IS NULL`,
      [conversationId],
    );
    const head = heads[0];
    if (!head) return undefined;
    const rows = await this.sql.query<{ user_id: string; delivered_seq: string | number; read_seq: string | number }>(
      `SELECT m.user_id::text AS user_id, m.delivered_seq, m.read_seq FROM conversation_members m
       WHERE m.conversation_id = $1 AND m.state = 'active' AND NOT m.muted
         AND m.delivered_seq < $2 AND m.read_seq < $2
         AND ($3::uuid[] IS NULL OR m.user_id = ANY($3::uuid[]))
         AND m.user_id <> ALL($4::uuid[])
         AND m.user_id > COALESCE($5::uuid, '00000000-0000-0000-0000-000000000000'::uuid)
       ORDER BY m.user_id LIMIT $6`,
      [conversationId, String(seq), q.userIds ?? null, q.excludeUserIds, q.afterUserId || null, q.limit],
    );
    return {
      kind: head.kind,
      name: head.name ?? "",
      candidates: rows.map((r) => ({ userId: r.user_id, deliveredSeq: Number(r.delivered_seq), readSeq: Number(r.read_seq) })),
    };
  }

  block(blockerId: string, blockedId: string, directConversationId: string, change: ChangeRecord): Promise<boolean> {
    return this.sql.transaction(async (tx) => {
      const inserted = await tx.query(
        `INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (blocker_id, blocked_id) DO NOTHING RETURNING 1`,
        [blockerId, blockedId, new Date(change.atMs)],
      );
      if (inserted.length === 0) return false;
      await bumpVersion(tx, directConversationId);
      await insertChange(tx, directConversationId, change);
      return true;
    });
  }

  unblock(blockerId: string, blockedId: string, directConversationId: string, change: ChangeRecord): Promise<boolean> {
    return this.sql.transaction(async (tx) => {
      const deleted = await tx.query(`DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2 RETURNING 1`, [
        blockerId,
        blockedId,
      ]);
      if (deleted.length === 0) return false;
      await bumpVersion(tx, directConversationId);
      await insertChange(tx, directConversationId, change);
      return true;
    });
  }

  async listBlocked(blockerId: string): Promise<string[]> {
    const rows = await this.sql.query<{ blocked_id: string }>(
      `SELECT blocked_id::text AS blocked_id FROM blocks WHERE blocker_id = $1 ORDER BY blocked_id`,
      [blockerId],
    );
    return rows.map((r) => r.blocked_id);
  }

  async pendingChanges(conversationId: string, limit: number): Promise<PendingChange[]> {
    const rows = await this.sql.query<{ change_id: string; conversation_id: string; payload: Uint8Array }>(
      `SELECT change_id::text AS change_id, conversation_id::text AS conversation_id, payload
       FROM conversation_changes WHERE conversation_id = $1 AND published_at IS NULL
       ORDER BY position LIMIT $2`,
      [conversationId, limit],
    );
    return rows.map((r) => ({ changeId: r.change_id, conversationId: r.conversation_id, payload: r.payload }));
  }

  async conversationsWithPendingChanges(limit: number): Promise<string[]> {
    const rows = await this.sql.query<{ conversation_id: string }>(
      `SELECT conversation_id::text AS conversation_id FROM conversation_changes WHERE published_at IS NULL
       GROUP BY conversation_id ORDER BY min(position) LIMIT $1`,
      [limit],
    );
    return rows.map((r) => r.conversation_id);
  }

  markPublished(conversationId: string, changeId: string, seq: number, leftUserIds: readonly string[] | "all", atMs: number) {
    return this.sql.transaction(async (tx) => {
      await tx.query(
        `UPDATE conversation_changes SET published_at = $2, seq = $3 WHERE change_id = $1 AND published_at IS NULL`,
        [changeId, new Date(atMs), seq],
      );
      if (seq <= 0) return;
      if (leftUserIds === "all") {
        await tx.query(
          `UPDATE conversation_members SET left_seq = $2
           WHERE conversation_id = $1 AND state = 'left' AND left_seq IS NULL`,
          [conversationId, seq],
        );
      } else if (leftUserIds.length > 0) {
        await tx.query(
          `UPDATE conversation_members SET left_seq = $2
           WHERE conversation_id = $1 AND user_id = ANY($3::uuid[]) AND state = 'left' AND left_seq IS NULL`,
          [conversationId, seq, leftUserIds],
        );
      }
    });
  }

  async close(): Promise<void> {}
}

class SqlGroupTransaction implements GroupTransaction {
  constructor(
    private readonly tx: SqlExecutor,
    private readonly conversationId: string,
    readonly conversation: Conversation | undefined,
  ) {}

  async members(userIds: readonly string[]): Promise<Member[]> {
    if (userIds.length === 0) return [];
    const rows = await this.tx.query<MemberRow>(
      `SELECT ${MEMBER} FROM conversation_members m WHERE m.conversation_id = $1 AND m.user_id = ANY($2::uuid[])`,
      [this.conversationId, userIds],
    );
    return rows.map(toMember);
  }

  async addMembers(userIds: readonly string[], atMs: number): Promise<void> {
    await this.tx.query(
      `WITH added AS (
         INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
         SELECT $1, u, 'member', $3 FROM unnest($2::uuid[]) AS u
         ON CONFLICT (conversation_id, user_id) DO UPDATE
           SET state = 'active', role = 'member', joined_at = EXCLUDED.joined_at, left_seq = NULL
           WHERE conversation_members.state = 'left'
         RETURNING 1)
       UPDATE conversations SET member_count = member_count + (SELECT count(*) FROM added) WHERE conversation_id = $1`,
      [this.conversationId, userIds, new Date(atMs)],
    );
  }

  async leave(userIds: readonly string[]): Promise<void> {
    await this.tx.query(
      `WITH gone AS (
         UPDATE conversation_members SET state = 'left', left_seq = NULL
         WHERE conversation_id = $1 AND user_id = ANY($2::uuid[]) AND state = 'active'
         RETURNING 1)
       UPDATE conversations SET member_count = member_count - (SELECT count(*) FROM gone) WHERE conversation_id = $1`,
      [this.conversationId, userIds],
    );
  }

  async setRole(userId: string, role: Role): Promise<void> {
    await this.tx.query(`UPDATE conversation_members SET role = $3 WHERE conversation_id = $1 AND user_id = $2`, [
      this.conversationId,
      userId,
      role,
    ]);
  }

  async update(fields: { name?: string; topic?: string }): Promise<void> {
    await this.tx.query(
      `UPDATE conversations SET name = COALESCE($2, name), topic = COALESCE($3, topic) WHERE conversation_id = $1`,
      [this.conversationId, fields.name ?? null, fields.topic ?? null],
    );
  }

  async markDeleted(atMs: number): Promise<void> {
    await this.tx.query(
      `UPDATE conversation_members SET state = 'left', left_seq = NULL WHERE conversation_id = $1 AND state = 'active'`,
      [this.conversationId],
    );
    await this.tx.query(`UPDATE conversations SET deleted_at = $2, member_count = 0 WHERE conversation_id = $1`, [
      this.conversationId,
      new Date(atMs),
    ]);
  }

  async recordChange(change: ChangeRecord): Promise<void> {
    await bumpVersion(this.tx, this.conversationId);
    await insertChange(this.tx, this.conversationId, change);
  }

  async current(): Promise<Conversation> {
    const rows = await this.tx.query<ConversationRow>(`SELECT ${CONVERSATION} FROM conversations c WHERE c.conversation_id = $1`, [
      this.conversationId,
    ]);
    if (!rows[0]) throw new Error(`conversation ${this.conversationId} vanished inside its transaction`);
    return toConversation(rows[0]);
  }
}

interface MoveRow {
  user_id: string;
  device_id: string;
  conversation_id: string;
  kind: ConversationKind;
  member_count: number;
  member_ids: string[];
  delivered_from: string | number;
  delivered_to: string | number;
  read_from: string | number;
  read_to: string | number;
}

/**
 * AdvanceCursors as one statement ($1..$6: user, device, conversation, delivered, read,
 * max_seq arrays; their member rows are locked). `reported`: one row per (user, device,
 * conversation), each value cut to its max_seq, the highest kept. `cur`: only members
 * of live conversations (past members with a left_seq, cut to it); a read is also a
 * delivery of that device. `ranked`: the user's new read cursor is the highest read of
 * their devices in the batch, answered on one of them (`read_owner`); the user's
 * delivered cursor (for counting) is the highest of their devices'. Then the cursors
 * move forward only, and the rows that moved are answered in request order.
 */
const ADVANCE_CURSORS = `
  WITH input AS (
    SELECT t.user_id, t.device_id, t.conversation_id, t.ord,
           LEAST(t.delivered, t.max_seq) AS d, LEAST(t.read, t.max_seq) AS r
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[], $6::bigint[])
      WITH ORDINALITY AS t (user_id, device_id, conversation_id, delivered, read, max_seq, ord)
  ),
  reported AS (
    SELECT user_id, device_id, conversation_id, min(ord) AS ord, max(d) AS d, max(r) AS r
    FROM input GROUP BY user_id, device_id, conversation_id
  ),
  cur AS (
    SELECT p.user_id, p.device_id, p.conversation_id, p.ord, c.kind, c.member_count,
           m.read_seq AS read_from, m.delivered_seq AS user_delivered_from, COALESCE(dc.delivered_seq, 0) AS delivered_from,
           LEAST(p.r, lim.seq) AS r, GREATEST(LEAST(p.d, lim.seq), LEAST(p.r, lim.seq)) AS d
    FROM reported p
    JOIN conversations c ON c.conversation_id = p.conversation_id AND c.deleted_at IS NULL
    JOIN conversation_members m ON m.conversation_id = p.conversation_id AND m.user_id = p.user_id
    CROSS JOIN LATERAL (SELECT CASE WHEN m.state = 'left' THEN m.left_seq END AS seq) AS lim
    LEFT JOIN device_cursors dc
      ON dc.conversation_id = p.conversation_id AND dc.user_id = p.user_id AND dc.device_id = p.device_id
    WHERE m.state = 'active' OR m.left_seq IS NOT NULL
  ),
  ranked AS (
    SELECT cur.*,
           GREATEST(cur.read_from, max(cur.r) OVER w) AS read_to,
           GREATEST(cur.user_delivered_from, max(cur.d) OVER w) AS user_delivered_to,
           GREATEST(cur.delivered_from, cur.d) AS delivered_to,
           row_number() OVER (PARTITION BY cur.conversation_id, cur.user_id ORDER BY cur.r DESC, cur.ord) = 1 AS read_owner
    FROM cur WINDOW w AS (PARTITION BY cur.conversation_id, cur.user_id)
  ),
  user_moved AS (
    UPDATE conversation_members m SET read_seq = r.read_to, delivered_seq = r.user_delivered_to
    FROM ranked r
    WHERE r.read_owner AND (r.read_to > r.read_from OR r.user_delivered_to > r.user_delivered_from)
      AND m.conversation_id = r.conversation_id AND m.user_id = r.user_id
  ),
  delivered_moved AS (
    INSERT INTO device_cursors (conversation_id, user_id, device_id, delivered_seq)
    SELECT r.conversation_id, r.user_id, r.device_id, r.delivered_to FROM ranked r WHERE r.delivered_to > r.delivered_from
    ON CONFLICT (conversation_id, user_id, device_id) DO UPDATE
      SET delivered_seq = GREATEST(device_cursors.delivered_seq, EXCLUDED.delivered_seq)
  )
  SELECT r.user_id::text AS user_id, r.device_id::text AS device_id, r.conversation_id::text AS conversation_id,
         r.kind, r.member_count,
         CASE WHEN r.kind = 'direct'
           THEN ARRAY(SELECT d.user_id::text FROM conversation_members d WHERE d.conversation_id = r.conversation_id ORDER BY d.user_id)
           ELSE '{}'::text[] END AS member_ids,
         r.delivered_from, r.delivered_to,
         CASE WHEN r.read_owner THEN r.read_from ELSE r.read_to END AS read_from, r.read_to
  FROM ranked r
  WHERE r.delivered_to > r.delivered_from OR (r.read_owner AND r.read_to > r.read_from)
  ORDER BY r.ord`;

/** Runs a whole transaction again after a deadlock or serialization failure (Postgres rolled it back). */
async function retrying<T>(run: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (err) {
      if (attempt >= ATTEMPTS || !RETRYABLE.has(sqlState(err) ?? "")) throw err;
    }
  }
}

async function selectConversation(q: SqlExecutor, conversationId: string): Promise<Conversation | undefined> {
  const rows = await q.query<ConversationRow>(
    `SELECT ${CONVERSATION} FROM conversations c WHERE c.conversation_id = $1 AND c.deleted_at IS NULL`,
    [conversationId],
  );
  return rows[0] && toConversation(rows[0]);
}

async function bumpVersion(tx: SqlExecutor, conversationId: string): Promise<void> {
  await tx.query(`UPDATE conversations SET version = version + 1 WHERE conversation_id = $1`, [conversationId]);
}

async function insertChange(tx: SqlExecutor, conversationId: string, change: ChangeRecord): Promise<void> {
  await tx.query(
    `INSERT INTO conversation_changes (change_id, conversation_id, payload, created_at) VALUES ($1, $2, $3, $4)`,
    [change.changeId, conversationId, bytes(change.payload), new Date(change.atMs)],
  );
}
