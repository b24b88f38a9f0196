import { createHash, randomBytes } from "node:crypto";
import { errors, jwtVerify, SignJWT, type JWTPayload } from "jose";
import { isUuid } from "../../../lib/ids.js";
import type { SigningKey } from "./account-store.js";
import { AuthenticationError } from "./errors.js";

/** Issuer and audience of every Parley access token. */
export const TOKEN_ISSUER = "parley";
export const TOKEN_AUDIENCE = "parley";

/** What an access token says. Times in milliseconds. */
export interface AccessClaims {
  userId: string;
  deviceId: string;
  sessionId: string;
  issuedAt: number;
  expiresAt: number;
}

export interface VerifyOptions {
  /** Accept a token whose only fault is that it expired (LogOut). */
  allowExpired?: boolean;
}

/**
 * Short-lived access tokens: HS256 JWTs with sub (user), did (device), sid (session),
 * iat, exp, iss and aud "parley". The key comes from the database so every instance
 * sharing it verifies every other's tokens, and restarts keep tokens valid.
 */
export class AccessTokens {
  constructor(
    private readonly key: SigningKey,
    private readonly ttlMs: number,
  ) {}

  /** Signs a token issued at `now` (ms); exp is rounded down to whole seconds, as JWT counts. */
  async issue(subject: { userId: string; deviceId: string; sessionId: string }, now: number): Promise<{ token: string; claims: AccessClaims }> {
    const iat = Math.floor(now / 1000);
    const exp = Math.floor((now + this.ttlMs) / 1000);
    const token = await new SignJWT({ did: subject.deviceId, sid: subject.sessionId })
      .setProtectedHeader({ alg: "HS256", typ: "JWT", kid: this.key.keyId })
      .setSubject(subject.userId)
      .setIssuer(TOKEN_ISSUER)
      .setAudience(TOKEN_AUDIENCE)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .sign(this.key.secret);
    return { token, claims: { ...subject, issuedAt: iat * 1000, expiresAt: exp * 1000 } };
  }

  /**
   * Checks signature, algorithm, iss/aud and expiry (at `now`, ms) and the shape of the
   * claims. Throws `AuthenticationError` saying what is wrong. Revocation is not checked
   * here (accounts.ts does that).
   */
  async verify(token: string, now: number, opts: VerifyOptions = {}): Promise<AccessClaims> {
    if (token.length === 0 || token.length > 4096 || token.split(".").length !== 3) {
      throw new AuthenticationError("malformed token");
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.key.secret, {
        algorithms: ["HS256"],
        issuer: TOKEN_ISSUER,
        audience: TOKEN_AUDIENCE,
        requiredClaims: ["sub", "iat", "exp"],
        currentDate: new Date(now),
      }));
    } catch (err) {
      if (err instanceof errors.JWTExpired && opts.allowExpired) {
        // jose checks iss/aud before exp, but say it again rather than rely on the order.
        payload = err.payload;
        if (payload.iss !== TOKEN_ISSUER || payload.aud !== TOKEN_AUDIENCE) throw new AuthenticationError("invalid token claims");
      } else {
        throw toAuthError(err);
      }
    }
    const { sub, did, sid, iat, exp } = payload;
    if (
      typeof sub !== "string" || !isUuid(sub) ||
      typeof did !== "string" || !isUuid(did) ||
      typeof sid !== "string" || !isUuid(sid) ||
      typeof iat !== "number" || typeof exp !== "number"
    ) {
      throw new AuthenticationError("malformed token");
    }
    return { userId: sub, deviceId: did, sessionId: sid, issuedAt: iat * 1000, expiresAt: exp * 1000 };
  }
}

function toAuthError(err: unknown): AuthenticationError {
  if (err instanceof errors.JWTExpired) return new AuthenticationError("access token expired");
  if (err instanceof errors.JWSSignatureVerificationFailed) return new AuthenticationError("invalid token signature");
  if (err instanceof errors.JWTClaimValidationFailed) return new AuthenticationError(`invalid token claims: ${err.claim}`);
  if (err instanceof errors.JOSEAlgNotAllowed) return new AuthenticationError("invalid token algorithm");
  if (err instanceof errors.JOSEError) return new AuthenticationError("malformed token");
  throw err;
}

/** A new signing key: 32 bytes from the CSPRNG. */
export function newSigningKey(keyId: string, now: number): SigningKey {
  return { keyId, secret: new Uint8Array(randomBytes(32)), createdAt: now };
}

const REFRESH_TOKEN_RE = /^[A-Za-z0-9_-]{43}$/;

/** An opaque refresh token: 32 random bytes, base64url (43 characters). */
export function newRefreshToken(): string {
  return randomBytes(32).toString("base64url");
}

export function isWellFormedRefreshToken(token: string): boolean {
  return REFRESH_TOKEN_RE.test(token);
}

/** What the store keeps instead of the token: SHA-256, hex. */
export function hashRefreshToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}
