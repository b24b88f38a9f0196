import { migrate, type Migration, type Sql, type SqlExecutor } from "../../../lib/sql.js";
import type { ConversationStore } from "./conversation-store.js";
import type { Conversation, ConversationKind } from "./model.js";

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
];

interface Row {
  conversation_id: string;
  kind: ConversationKind;
  created_at: Date;
  version: string | number;
  member_ids: string[];
}

const SELECT = `
  SELECT c.conversation_id, c.kind, c.created_at, c.version,
         array_agg(m.user_id::text ORDER BY m.user_id) AS member_ids
  FROM conversations c JOIN conversation_members m USING (conversation_id)`;

function toConversation(r: Row): Conversation {
  return {
    conversationId: r.conversation_id,
    kind: r.kind,
    memberIds: r.member_ids,
    createdAtMs: r.created_at.getTime(),
    version: Number(r.version),
  };
}

/** Conversations over the Sql port: PGlite embedded, the same SQL on Postgres. */
export class SqlConversationStore implements ConversationStore {
  private constructor(private readonly sql: Sql) {}

  static async open(sql: Sql): Promise<SqlConversationStore> {
    await migrate(sql, "groups", MIGRATIONS);
    return new SqlConversationStore(sql);
  }

  async getOrCreateDirect(conversationId: string, userA: string, userB: string, createdAtMs: number) {
    return this.sql.transaction(async (tx) => {
      const inserted = await tx.query(
        `INSERT INTO conversations (conversation_id, kind, created_at) VALUES ($1, 'direct', $2)
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
      const conversation = await selectOne(tx, conversationId);
      if (!conversation) throw new Error(`conversation ${conversationId} vanished inside its transaction`);
      return { conversation, created };
    });
  }

  get(conversationId: string): Promise<Conversation | undefined> {
    return selectOne(this.sql, conversationId);
  }

  async listForUser(userId: string, limit: number): Promise<Conversation[]> {
    const rows = await this.sql.query<Row>(
      `${SELECT}
       WHERE c.conversation_id IN (SELECT conversation_id FROM conversation_members WHERE user_id = $1)
       GROUP BY c.conversation_id ORDER BY c.created_at DESC, c.conversation_id LIMIT $2`,
      [userId, limit],
    );
    return rows.map(toConversation);
  }

  async close(): Promise<void> {}
}

async function selectOne(q: SqlExecutor, conversationId: string): Promise<Conversation | undefined> {
  const rows = await q.query<Row>(`${SELECT} WHERE c.conversation_id = $1 GROUP BY c.conversation_id`, [conversationId]);
  return rows[0] && toConversation(rows[0]);
}
