/**
 * The account store port: users, sessions (refresh-token families), refresh tokens,
 * token-signing keys and contact lists. It only stores and fetches; the rules (who may log in, when a
 * refresh token rotates or revokes its family) live in accounts.ts. Times are
 * milliseconds since the epoch.
 *
 * Adapters: account-store-sql.ts over the `Sql` port (PGlite embedded, Postgres via `pg`:
 * the same SQL).
 */

export interface User {
  userId: string;
  /** Normalized: lower case, [a-z0-9._-]{3,32}. */
  username: string;
  displayName: string;
  createdAt: number;
}

export interface UserWithPassword extends User {
  /** An argon2id PHC string. */
  passwordHash: string;
}

export interface Session {
  sessionId: string;
  userId: string;
  deviceId: string;
  createdAt: number;
  /** When the session was revoked (logout or refresh-token reuse); null while active. */
  revokedAt: number | null;
}

export interface NewSession {
  sessionId: string;
  userId: string;
  deviceId: string;
  createdAt: number;
}

export interface NewRefreshToken {
  /** SHA-256 of the token (hex): the token itself is never stored. */
  tokenHash: string;
  expiresAt: number;
}

/** A refresh token with what rotation needs to know about its session. */
export interface RefreshTokenRecord {
  tokenHash: string;
  sessionId: string;
  userId: string;
  deviceId: string;
  createdAt: number;
  expiresAt: number;
  /** When it was exchanged for its successor; null while unused. */
  usedAt: number | null;
  sessionRevokedAt: number | null;
}

export interface SigningKey {
  keyId: string;
  /** HMAC secret (32 random bytes). */
  secret: Uint8Array;
  createdAt: number;
}

/** Thrown by `createUser` when the username exists. */
export class DuplicateUsernameError extends Error {
  override readonly name = "DuplicateUsernameError";
  constructor(readonly username: string) {
    super(`username "${username}" exists`);
  }
}

/** An entry of a user's contact list: another user, with the owner's nickname for them. */
export interface Contact {
  user: User;
  /** Empty when none. */
  nickname: string;
  addedAt: number;
}

export interface NewContact {
  ownerId: string;
  contactId: string;
  nickname: string;
  /** When it is added (kept when an existing contact's nickname changes). */
  at: number;
  /** The most contacts the owner may have: adding one more is a `ContactLimitError`. */
  max: number;
}

/** Thrown by `putContact` when the contact user does not exist. */
export class UnknownUserError extends Error {
  override readonly name = "UnknownUserError";
  constructor(readonly userId: string) {
    super(`no user ${userId}`);
  }
}

/** Thrown by `putContact` when the owner already has `max` contacts. */
export class ContactLimitError extends Error {
  override readonly name = "ContactLimitError";
  constructor(readonly max: number) {
    super(`at most ${max} contacts`);
  }
}

export interface AccountStore {
  /** Throws `DuplicateUsernameError` when the username is taken. */
  createUser(user: UserWithPassword): Promise<void>;
  getUserWithPassword(username: string): Promise<UserWithPassword | undefined>;
  /** The users that exist among `userIds`, in no particular order. */
  getUsersByIds(userIds: readonly string[]): Promise<User[]>;
  /** The users that exist among `usernames` (normalized), in no particular order. */
  getUsersByUsernames(usernames: readonly string[]): Promise<User[]>;

  /** Creates a session and the first refresh token of its family, atomically. */
  createSession(session: NewSession, firstToken: NewRefreshToken): Promise<void>;
  getSession(sessionId: string): Promise<Session | undefined>;
  /** Marks the session revoked at `at`. True when it was active before; idempotent. */
  revokeSession(sessionId: string, at: number): Promise<boolean>;

  getRefreshToken(tokenHash: string): Promise<RefreshTokenRecord | undefined>;
  /**
   * Compare-and-swap, atomically: marks `oldHash` used at `at` if it is still unused
   * and its session active, and adds `next` to the same session. Returns false (and
   * changes nothing) when the old token is unknown, already used or its session
   * revoked; of two concurrent calls with one `oldHash`, at most one returns true.
   */
  rotateRefreshToken(oldHash: string, next: NewRefreshToken, at: number): Promise<boolean>;

  /**
   * The signing key `candidate.keyId`: stores `candidate` if no key with that id exists,
   * and returns the stored key (so instances starting together agree on one secret).
   */
  ensureSigningKey(candidate: SigningKey): Promise<SigningKey>;

  /** The owner's contacts, ordered by the contact's username. */
  listContacts(ownerId: string): Promise<Contact[]>;
  getContact(ownerId: string, contactId: string): Promise<Contact | undefined>;
  /**
   * Adds the contact, or sets the nickname of an existing one (keeping its `addedAt`).
   * Throws `UnknownUserError` for an unknown contact user and `ContactLimitError` when a
   * new contact would exceed `max`; concurrent adds for one owner never exceed it.
   */
  putContact(c: NewContact): Promise<{ contact: Contact; created: boolean }>;
  /** True when the contact was in the list. */
  deleteContact(ownerId: string, contactId: string): Promise<boolean>;
}
