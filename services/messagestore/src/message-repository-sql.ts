import { migrate, sqlState, UNIQUE_VIOLATION, type Migration, type Sql } from "../../../lib/sql.js";
import { SeqConflictError } from "./errors.js";
import { plainBytes, type ConversationHead, type IdempotencyKey, type MessageRepository, type StoredMessage } from "./message-repository.js";

export const messageStoreMigrations: readonly Migration[] = [
  {
    version: 1,
    name: "messages",
    sql: `
      CREATE TABLE messages (
        conversation_id uuid NOT NULL,
        seq bigint NOT NULL,
        message_id uuid NOT NULL,
        sender_id uuid NOT NULL,
        sender_device_id uuid NOT NULL,
        client_msg_id uuid NOT NULL,
        body text NOT NULL,
        sent_at timestamptz NOT NULL,
        PRIMARY KEY (conversation_id, seq)
      );
      CREATE UNIQUE INDEX messages_message_id_key ON messages (message_id);
      CREATE UNIQUE INDEX messages_client_msg_key ON messages (conversation_id, sender_id, client_msg_id);
    `,
  },
  {
    // Event messages: an encoded client ConversationEvent, and no sender device.
    version: 2,
    name: "message events",
    sql: `
      ALTER TABLE messages ADD COLUMN event bytea NULL;
      ALTER TABLE messages ALTER COLUMN sender_device_id DROP NOT NULL;
    `,
  },
];

interface MessageRow {
  conversation_id: string;
  seq: number | string | bigint;
  message_id: string;
  sender_id: string;
  sender_device_id: string | null;
  client_msg_id: string;
  body: string;
  sent_at_ms: number | string;
  event: Uint8Array | null;
}

const COLUMNS = `conversation_id, seq, message_id, sender_id, sender_device_id, client_msg_id, body,
  (extract(epoch FROM sent_at) * 1000)::float8 AS sent_at_ms, event`;

function toMessage(r: MessageRow): StoredMessage {
  const m: StoredMessage = {
    conversationId: r.conversation_id,
    seq: Number(r.seq),
    messageId: r.message_id,
    senderId: r.sender_id,
    senderDeviceId: r.sender_device_id ?? "",
    clientMsgId: r.client_msg_id,
    body: r.body,
    sentAtMs: Math.round(Number(r.sent_at_ms)),
  };
  if (r.event && r.event.length > 0) m.event = plainBytes(r.event);
  return m;
}

/**
 * The message repository on the Sql port (PGlite embedded, Postgres through `pg`).
 * Every statement is a single round trip: the batch insert is one multi-row INSERT
 * (rows passed as arrays through unnest, so the statement text is constant), which
 * Postgres applies atomically without an explicit transaction.
 */
export class SqlMessageRepository implements MessageRepository {
  private constructor(private readonly sql: Sql) {}

  /** Applies the schema migrations, then returns the repository. */
  static async create(sql: Sql): Promise<SqlMessageRepository> {
    await migrate(sql, "messagestore", messageStoreMigrations);
    return new SqlMessageRepository(sql);
  }

  async lastSeq(conversationId: string): Promise<number> {
    const rows = await this.sql.query<{ seq: number | string | null }>(
      "SELECT max(seq) AS seq FROM messages WHERE conversation_id = $1",
      [conversationId],
    );
    return Number(rows[0]?.seq ?? 0);
  }

  async findByClientMsgIds(conversationId: string, keys: readonly IdempotencyKey[]): Promise<StoredMessage[]> {
    if (keys.length === 0) return [];
    const rows = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS} FROM messages
        WHERE conversation_id = $1
          AND (sender_id, client_msg_id) IN (SELECT * FROM unnest($2::uuid[], $3::uuid[]))`,
      [conversationId, keys.map((k) => k.senderId), keys.map((k) => k.clientMsgId)],
    );
    return rows.map(toMessage);
  }

  async insert(conversationId: string, messages: readonly StoredMessage[]): Promise<void> {
    if (messages.length === 0) return;
    for (const m of messages) {
      if (m.conversationId !== conversationId) throw new Error("insert: every message must belong to the conversation");
    }
    try {
      // Events travel as hex text (NULL for none): a text[] binds the same way on pg and PGlite.
      await this.sql.query(
        `INSERT INTO messages (conversation_id, seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at, event)
         SELECT $1::uuid, u.seq, u.message_id, u.sender_id, u.sender_device_id, u.client_msg_id, u.body, u.sent_at, decode(u.event_hex, 'hex')
           FROM unnest($2::bigint[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[], $7::text[], $8::timestamptz[], $9::text[])
             AS u(seq, message_id, sender_id, sender_device_id, client_msg_id, body, sent_at, event_hex)`,
        [
          conversationId,
          messages.map((m) => m.seq),
          messages.map((m) => m.messageId),
          messages.map((m) => m.senderId),
          messages.map((m) => (m.senderDeviceId === "" ? null : m.senderDeviceId)),
          messages.map((m) => m.clientMsgId),
          messages.map((m) => m.body),
          messages.map((m) => new Date(m.sentAtMs).toISOString()),
          messages.map((m) => (m.event && m.event.length > 0 ? Buffer.from(m.event.buffer, m.event.byteOffset, m.event.byteLength).toString("hex") : null)),
        ],
      );
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw new SeqConflictError(undefined, { cause: err });
      throw err;
    }
  }

  async history(conversationId: string, beforeSeq: number, limit: number): Promise<StoredMessage[]> {
    const rows =
      beforeSeq > 0
        ? await this.sql.query<MessageRow>(
            `SELECT ${COLUMNS} FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3`,
            [conversationId, beforeSeq, limit],
          )
        : await this.sql.query<MessageRow>(
            `SELECT ${COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2`,
            [conversationId, limit],
          );
    return rows.map(toMessage);
  }

  async range(conversationId: string, afterSeq: number, limit: number): Promise<StoredMessage[]> {
    // Batches are inserted atomically, so the stored seqs of a conversation have no gap.
    const rows = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3`,
      [conversationId, afterSeq, limit],
    );
    return rows.map(toMessage);
  }

  async heads(conversationIds: readonly string[], withLastMessage = false): Promise<ConversationHead[]> {
    if (conversationIds.length === 0) return [];
    if (withLastMessage) {
      // The same probe, returning the whole newest row.
      const rows = await this.sql.query<MessageRow>(
        `SELECT m.* FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u(id)) AS c
           JOIN LATERAL (
             SELECT ${COLUMNS} FROM messages WHERE conversation_id = c.id ORDER BY seq DESC LIMIT 1
           ) AS m ON true`,
        [conversationIds],
      );
      return rows.map((r) => {
        const lastMessage = toMessage(r);
        return { conversationId: lastMessage.conversationId, lastSeq: lastMessage.seq, lastSentAtMs: lastMessage.sentAtMs, lastMessage };
      });
    }
    // One index probe per conversation (newest row of each partition), not a scan.
    const rows = await this.sql.query<{ conversation_id: string; seq: number | string; sent_at_ms: number | string }>(
      `SELECT c.id AS conversation_id, m.seq, (extract(epoch FROM m.sent_at) * 1000)::float8 AS sent_at_ms
         FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS u(id)) AS c
         JOIN LATERAL (
           SELECT seq, sent_at FROM messages WHERE conversation_id = c.id ORDER BY seq DESC LIMIT 1
         ) AS m ON true`,
      [conversationIds],
    );
    return rows.map((r) => ({
      conversationId: r.conversation_id,
      lastSeq: Number(r.seq),
      lastSentAtMs: Math.round(Number(r.sent_at_ms)),
    }));
  }
}
