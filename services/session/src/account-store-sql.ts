import { migrate, sqlState, UNIQUE_VIOLATION, type Migration, type Sql } from "../../../lib/sql.js";
import {
  ContactLimitError,
  DuplicateUsernameError,
  UnknownUserError,
  type AccountStore,
  type Contact,
  type NewContact,
  type NewRefreshToken,
  type NewSession,
  type RefreshTokenRecord,
  type Session,
  type SigningKey,
  type User,
  type UserWithPassword,
} from "./account-store.js";

/** The session service's schema, applied in order by `migrate(sql, "session", ...)`. */
export const SESSION_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "accounts",
    sql: `
CREATE TABLE users (
  user_id uuid PRIMARY KEY,
  username text NOT NULL UNIQUE,
  display_name text NOT NULL,
  password_hash text NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE TABLE sessions (
  session_id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (user_id),
  device_id uuid NOT NULL,
  created_at timestamptz NOT NULL,
  revoked_at timestamptz
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE TABLE refresh_tokens (
  token_hash text PRIMARY KEY,
  session_id uuid NOT NULL REFERENCES sessions (session_id),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  used_at timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
CREATE TABLE session_keys (
  key_id text PRIMARY KEY,
  secret text NOT NULL,
  created_at timestamptz NOT NULL
);
`,
  },
  {
    version: 2,
    name: "contacts",
    sql: `
CREATE TABLE contacts (
  owner_id uuid NOT NULL REFERENCES users (user_id),
  contact_id uuid NOT NULL REFERENCES users (user_id),
  nickname text NOT NULL DEFAULT '',
  added_at timestamptz NOT NULL,
  PRIMARY KEY (owner_id, contact_id),
  CHECK (owner_id <> contact_id)
);
CREATE INDEX contacts_contact_id_idx ON contacts (contact_id);
`,
  },
];

/** Applies the session schema (idempotent) and returns the store over `sql`. */
export async function openSqlAccountStore(sql: Sql): Promise<SqlAccountStore> {
  await migrate(sql, "session", SESSION_MIGRATIONS);
  return new SqlAccountStore(sql);
}

interface UserRow {
  user_id: string;
  username: string;
  display_name: string;
  created_at: Date;
}

interface UserWithPasswordRow extends UserRow {
  password_hash: string;
}

interface SessionRow {
  session_id: string;
  user_id: string;
  device_id: string;
  created_at: Date;
  revoked_at: Date | null;
}

interface RefreshTokenRow {
  token_hash: string;
  session_id: string;
  user_id: string;
  device_id: string;
  created_at: Date;
  expires_at: Date;
  used_at: Date | null;
  session_revoked_at: Date | null;
}

const USER_COLUMNS = "user_id, username, display_name, created_at";

interface ContactRow extends UserRow {
  nickname: string;
  added_at: Date;
}

const CONTACT_SELECT = `SELECT u.user_id, u.username, u.display_name, u.created_at, c.nickname, c.added_at
  FROM contacts c JOIN users u ON u.user_id = c.contact_id`;

/** The `AccountStore` over the `Sql` port: plain Postgres, every statement parameterized. */
export class SqlAccountStore implements AccountStore {
  constructor(private readonly sql: Sql) {}

  async createUser(u: UserWithPassword): Promise<void> {
    try {
      await this.sql.query(
        `INSERT INTO users (user_id, username, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)`,
        [u.userId, u.username, u.displayName, u.passwordHash, new Date(u.createdAt)],
      );
    } catch (err) {
      if (sqlState(err) === UNIQUE_VIOLATION) throw new DuplicateUsernameError(u.username);
      throw err;
    }
  }

  async getUserWithPassword(username: string): Promise<UserWithPassword | undefined> {
    const [row] = await this.sql.query<UserWithPasswordRow>(
      `SELECT ${USER_COLUMNS}, password_hash FROM users WHERE username = $1`,
      [username],
    );
    return row && { ...toUser(row), passwordHash: row.password_hash };
  }

  async getUsersByIds(userIds: readonly string[]): Promise<User[]> {
    if (userIds.length === 0) return [];
    const rows = await this.sql.query<UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE user_id = ANY($1::uuid[])`, [
      userIds,
    ]);
    return rows.map(toUser);
  }

  async getUsersByUsernames(usernames: readonly string[]): Promise<User[]> {
    if (usernames.length === 0) return [];
    const rows = await this.sql.query<UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE username = ANY($1::text[])`, [
      usernames,
    ]);
    return rows.map(toUser);
  }

  async createSession(s: NewSession, first: NewRefreshToken): Promise<void> {
    await this.sql.transaction(async (tx) => {
      await tx.query(`INSERT INTO sessions (session_id, user_id, device_id, created_at) VALUES ($1, $2, $3, $4)`, [
        s.sessionId,
        s.userId,
        s.deviceId,
        new Date(s.createdAt),
      ]);
      await tx.query(
        `INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`,
        [first.tokenHash, s.sessionId, new Date(s.createdAt), new Date(first.expiresAt)],
      );
    });
  }

  async getSession(sessionId: string): Promise<Session | undefined> {
    const [row] = await this.sql.query<SessionRow>(
      `SELECT session_id, user_id, device_id, created_at, revoked_at FROM sessions WHERE session_id = $1`,
      [sessionId],
    );
    return (
      row && {
        sessionId: row.session_id,
        userId: row.user_id,
        deviceId: row.device_id,
        createdAt: row.created_at.getTime(),
        revokedAt: row.revoked_at?.getTime() ?? null,
      }
    );
  }

  async revokeSession(sessionId: string, at: number): Promise<boolean> {
    const rows = await this.sql.query(
      `UPDATE sessions SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL RETURNING session_id`,
      [sessionId, new Date(at)],
    );
    return rows.length === 1;
  }

  async getRefreshToken(tokenHash: string): Promise<RefreshTokenRecord | undefined> {
    const [row] = await this.sql.query<RefreshTokenRow>(
      `SELECT t.token_hash, t.session_id, s.user_id, s.device_id, t.created_at, t.expires_at, t.used_at,
              s.revoked_at AS session_revoked_at
         FROM refresh_tokens t JOIN sessions s ON s.session_id = t.session_id
        WHERE t.token_hash = $1`,
      [tokenHash],
    );
    return (
      row && {
        tokenHash: row.token_hash,
        sessionId: row.session_id,
        userId: row.user_id,
        deviceId: row.device_id,
        createdAt: row.created_at.getTime(),
        expiresAt: row.expires_at.getTime(),
        usedAt: row.used_at?.getTime() ?? null,
        sessionRevokedAt: row.session_revoked_at?.getTime() ?? null,
      }
    );
  }

  async rotateRefreshToken(oldHash: string, next: NewRefreshToken, at: number): Promise<boolean> {
    return this.sql.transaction(async (tx) => {
      // The row lock taken by UPDATE serializes concurrent rotations of one token; under
      // READ COMMITTED the loser re-checks `used_at IS NULL` after the winner commits.
      const [row] = await tx.query<{ session_id: string }>(
        `UPDATE refresh_tokens t SET used_at = $2
          WHERE t.token_hash = $1 AND t.used_at IS NULL
            AND EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = t.session_id AND s.revoked_at IS NULL)
        RETURNING t.session_id`,
        [oldHash, new Date(at)],
      );
      if (!row) return false;
      await tx.query(
        `INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`,
        [next.tokenHash, row.session_id, new Date(at), new Date(next.expiresAt)],
      );
      return true;
    });
  }

  async ensureSigningKey(candidate: SigningKey): Promise<SigningKey> {
    await this.sql.query(
      `INSERT INTO session_keys (key_id, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING`,
      [candidate.keyId, Buffer.from(candidate.secret).toString("base64"), new Date(candidate.createdAt)],
    );
    const [row] = await this.sql.query<{ key_id: string; secret: string; created_at: Date }>(
      `SELECT key_id, secret, created_at FROM session_keys WHERE key_id = $1`,
      [candidate.keyId],
    );
    if (!row) throw new Error(`signing key ${candidate.keyId} vanished`);
    return {
      keyId: row.key_id,
      secret: new Uint8Array(Buffer.from(row.secret, "base64")),
      createdAt: row.created_at.getTime(),
    };
  }

  async listContacts(ownerId: string): Promise<Contact[]> {
    const rows = await this.sql.query<ContactRow>(`${CONTACT_SELECT} WHERE c.owner_id = $1 ORDER BY u.username`, [ownerId]);
    return rows.map(toContact);
  }

  async getContact(ownerId: string, contactId: string): Promise<Contact | undefined> {
    const [row] = await this.sql.query<ContactRow>(`${CONTACT_SELECT} WHERE c.owner_id = $1 AND c.contact_id = $2`, [
      ownerId,
      contactId,
    ]);
    return row && toContact(row);
  }

  async putContact(c: NewContact): Promise<{ contact: Contact; created: boolean }> {
    return this.sql.transaction(async (tx) => {
      // The owner's row lock serializes the contact changes of one owner, so the count
      // below stays true until this transaction commits: concurrent adds cannot overshoot.
      const owner = await tx.query(`SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE`, [c.ownerId]);
      if (owner.length === 0) throw new UnknownUserError(c.ownerId);
      const [user] = await tx.query<UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE user_id = $1`, [c.contactId]);
      if (!user) throw new UnknownUserError(c.contactId);
      const [updated] = await tx.query<{ added_at: Date }>(
        `UPDATE contacts SET nickname = $3 WHERE owner_id = $1 AND contact_id = $2 RETURNING added_at`,
        [c.ownerId, c.contactId, c.nickname],
      );
      if (updated) {
        return { contact: { user: toUser(user), nickname: c.nickname, addedAt: updated.added_at.getTime() }, created: false };
      }
      const [count] = await tx.query<{ n: number }>(`SELECT count(*)::int AS n FROM contacts WHERE owner_id = $1`, [c.ownerId]);
      if ((count?.n ?? 0) >= c.max) throw new ContactLimitError(c.max);
      await tx.query(`INSERT INTO contacts (owner_id, contact_id, nickname, added_at) VALUES ($1, $2, $3, $4)`, [
        c.ownerId,
        c.contactId,
        c.nickname,
        new Date(c.at),
      ]);
      return { contact: { user: toUser(user), nickname: c.nickname, addedAt: c.at }, created: true };
    });
  }

  async deleteContact(ownerId: string, contactId: string): Promise<boolean> {
    const rows = await this.sql.query(`DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2 RETURNING contact_id`, [
      ownerId,
      contactId,
    ]);
    return rows.length === 1;
  }
}

function toContact(row: ContactRow): Contact {
  return { user: toUser(row), nickname: row.nickname, addedAt: row.added_at.getTime() };
}

function toUser(row: UserRow): User {
  return {
    userId: row.user_id,
    username: row.username,
    displayName: row.display_name,
    createdAt: row.created_at.getTime(),
  };
}
