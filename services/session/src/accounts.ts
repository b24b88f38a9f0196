import type { UuidV7Generator } from "../../../lib/ids.js";
import { randomUuid } from "../../../lib/ids.js";
import type { Logger } from "../../../lib/logger.js";
import { DuplicateUsernameError, type AccountStore, type User } from "./account-store.js";
import type { Clock } from "./clock.js";
import { AuthenticationError, UsernameTakenError } from "./errors.js";
import type { PasswordHasher } from "./passwords.js";
import type { RevocationCache } from "./revocation-cache.js";
import { hashRefreshToken, isWellFormedRefreshToken, newRefreshToken, type AccessClaims, type AccessTokens } from "./tokens.js";

/** Tokens handed to a client. Times in milliseconds. */
export interface IssuedTokens {
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
  refreshExpiresAt: number;
  sessionId: string;
  deviceId: string;
}

/** Inputs arrive validated and normalized (routes/ do that at the edge). */
export interface SignUpInput {
  username: string;
  password: string;
  displayName: string;
  deviceId?: string;
}

export interface LogInInput {
  username: string;
  password: string;
  deviceId?: string;
}

export interface AccountsDeps {
  store: AccountStore;
  hasher: PasswordHasher;
  accessTokens: AccessTokens;
  revocations: RevocationCache;
  clock: Clock;
  ids: UuidV7Generator;
  refreshTokenTtlMs: number;
  logger: Logger;
}

/** The one message for a wrong username or password: it must not tell which was wrong. */
export const BAD_CREDENTIALS = "invalid username or password";

/**
 * Accounts and device sessions. A session is one device's login and one refresh-token
 * family: each refresh consumes the presented token and issues its successor; presenting
 * a consumed token again means it was copied, so the whole session is revoked.
 */
export class Accounts {
  constructor(private readonly d: AccountsDeps) {}

  async signUp(input: SignUpInput): Promise<{ user: User; tokens: IssuedTokens }> {
    const passwordHash = await this.d.hasher.hash(input.password);
    const user: User = {
      userId: this.d.ids.next(),
      username: input.username,
      displayName: input.displayName,
      createdAt: this.d.clock.now(),
    };
    try {
      await this.d.store.createUser({ ...user, passwordHash });
    } catch (err) {
      if (err instanceof DuplicateUsernameError) throw new UsernameTakenError(input.username);
      throw err;
    }
    this.d.logger.info({ userId: user.userId, username: user.username }, "user signed up");
    const tokens = await this.startSession(user.userId, input.deviceId);
    return { user, tokens };
  }

  async logIn(input: LogInInput): Promise<{ user: User; tokens: IssuedTokens }> {
    const found = await this.d.store.getUserWithPassword(input.username);
    const ok = found
      ? await this.d.hasher.verify(found.passwordHash, input.password)
      : await this.d.hasher.verifyDummy(input.password);
    if (!found || !ok) throw new AuthenticationError(BAD_CREDENTIALS);
    const { passwordHash: _, ...user } = found;
    const tokens = await this.startSession(user.userId, input.deviceId);
    return { user, tokens };
  }

  async refresh(refreshToken: string): Promise<IssuedTokens> {
    if (!isWellFormedRefreshToken(refreshToken)) throw new AuthenticationError("malformed refresh token");
    const oldHash = hashRefreshToken(refreshToken);
    const rec = await this.d.store.getRefreshToken(oldHash);
    if (!rec) throw new AuthenticationError("invalid refresh token");
    if (rec.sessionRevokedAt !== null) {
      this.d.revocations.markRevoked(rec.sessionId);
      throw new AuthenticationError("session revoked");
    }
    if (rec.usedAt !== null) await this.reuseDetected(rec.sessionId, rec.userId);
    const now = this.d.clock.now();
    if (now >= rec.expiresAt) throw new AuthenticationError("refresh token expired");

    const next = newRefreshToken();
    const refreshExpiresAt = now + this.d.refreshTokenTtlMs;
    const rotated = await this.d.store.rotateRefreshToken(oldHash, { tokenHash: hashRefreshToken(next), expiresAt: refreshExpiresAt }, now);
    if (!rotated) {
      // Lost a race: another call consumed this token (or revoked the session) since we read it.
      // Either way the token was presented twice, which is reuse.
      await this.reuseDetected(rec.sessionId, rec.userId);
    }
    const access = await this.d.accessTokens.issue({ userId: rec.userId, deviceId: rec.deviceId, sessionId: rec.sessionId }, now);
    return {
      accessToken: access.token,
      accessExpiresAt: access.claims.expiresAt,
      refreshToken: next,
      refreshExpiresAt,
      sessionId: rec.sessionId,
      deviceId: rec.deviceId,
    };
  }

  /**
   * Revokes the session of `accessToken`. An expired (but genuine) token is accepted so a
   * client whose access token lapsed can still end its session without refreshing first.
   * Logging out of a revoked session succeeds.
   */
  async logOut(accessToken: string): Promise<void> {
    const claims = await this.d.accessTokens.verify(accessToken, this.d.clock.now(), { allowExpired: true });
    const wasActive = await this.d.store.revokeSession(claims.sessionId, this.d.clock.now());
    this.d.revocations.markRevoked(claims.sessionId);
    if (wasActive) this.d.logger.info({ userId: claims.userId, sessionId: claims.sessionId }, "logged out");
  }

  /** Who `accessToken` speaks for, if it is genuine, current and its session not revoked. */
  async authenticate(accessToken: string): Promise<AccessClaims> {
    const claims = await this.d.accessTokens.verify(accessToken, this.d.clock.now());
    if (await this.d.revocations.isRevoked(claims.sessionId)) throw new AuthenticationError("session revoked");
    return claims;
  }

  /** Users by id and by (normalized) username; unknown ones are left out, each user once. */
  async getUsers(userIds: readonly string[], usernames: readonly string[]): Promise<User[]> {
    const [byId, byName] = await Promise.all([
      this.d.store.getUsersByIds([...new Set(userIds)]),
      this.d.store.getUsersByUsernames([...new Set(usernames)]),
    ]);
    // Answer in request order: ids first, then names.
    const ids = new Map(byId.map((u) => [u.userId, u]));
    const names = new Map(byName.map((u) => [u.username, u]));
    const out = new Map<string, User>();
    for (const id of userIds) {
      const u = ids.get(id);
      if (u) out.set(u.userId, u);
    }
    for (const n of usernames) {
      const u = names.get(n);
      if (u && !out.has(u.userId)) out.set(u.userId, u);
    }
    return [...out.values()];
  }

  private async startSession(userId: string, deviceId = randomUuid()): Promise<IssuedTokens> {
    const now = this.d.clock.now();
    const sessionId = this.d.ids.next();
    const refreshToken = newRefreshToken();
    const refreshExpiresAt = now + this.d.refreshTokenTtlMs;
    await this.d.store.createSession(
      { sessionId, userId, deviceId, createdAt: now },
      { tokenHash: hashRefreshToken(refreshToken), expiresAt: refreshExpiresAt },
    );
    this.d.revocations.markActive(sessionId);
    const access = await this.d.accessTokens.issue({ userId, deviceId, sessionId }, now);
    return {
      accessToken: access.token,
      accessExpiresAt: access.claims.expiresAt,
      refreshToken,
      refreshExpiresAt,
      sessionId,
      deviceId,
    };
  }

  private async reuseDetected(sessionId: string, userId: string): Promise<never> {
    await this.d.store.revokeSession(sessionId, this.d.clock.now());
    this.d.revocations.markRevoked(sessionId);
    this.d.logger.warn({ userId, sessionId }, "refresh token reuse: session revoked");
    throw new AuthenticationError("refresh token reuse detected; session revoked");
  }
}
