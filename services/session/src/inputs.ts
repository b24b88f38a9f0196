import { invalid, requireText, requireUuid } from "../../../lib/validate.js";
import { PASSWORD_MAX, PASSWORD_MIN } from "./passwords.js";

const USERNAME_RE = /^[a-z0-9._-]{3,32}$/;
export const DISPLAY_NAME_MAX = 64;

/** Usernames are compared normalized: trimmed and lower case. */
export function normalizeUsername(raw: string): string {
  return raw.trim().toLowerCase();
}

export function isValidUsername(normalized: string): boolean {
  return USERNAME_RE.test(normalized);
}

/** The normalized username, or `InvalidArgument`. */
export function requireUsername(field: string, raw: string): string {
  if (raw.length > 256) throw invalid(field, "must have 3 to 32 characters");
  const u = normalizeUsername(raw);
  if (u.length < 3 || u.length > 32) throw invalid(field, "must have 3 to 32 characters");
  if (!isValidUsername(u)) throw invalid(field, "may only contain a-z, 0-9, '.', '_' and '-'");
  return u;
}

/**
 * 8 to 128 code points. Checked before any hashing: the maximum is what keeps one
 * request from buying unbounded argon2 work.
 */
export function requirePassword(field: string, value: string): string {
  return requireText(field, value, PASSWORD_MIN, PASSWORD_MAX);
}

/** Trimmed, at most 64 code points, no control characters; empty means the username. */
export function displayNameOrDefault(field: string, raw: string, username: string): string {
  const v = requireText(field, raw.trim(), 0, DISPLAY_NAME_MAX);
  if (/\p{Cc}/u.test(v)) throw invalid(field, "must not contain control characters");
  return v === "" ? username : v;
}

/** The client's device id if it sent one (a UUID), else undefined (a new one is made). */
export function optionalDeviceId(field: string, value: string): string | undefined {
  return value === "" ? undefined : requireUuid(field, value);
}

export const NICKNAME_MAX = 64;

/** A contact's nickname: trimmed, at most 64 code points, no control characters; empty means none. */
export function requireNickname(field: string, raw: string): string {
  const v = requireText(field, raw.trim(), 0, NICKNAME_MAX);
  if (/\p{Cc}/u.test(v)) throw invalid(field, "must not contain control characters");
  return v;
}

/** The owner and contact ids of a contact call; a user is never their own contact. */
export function requireContactPair(req: { userId: string; contactUserId: string }): { ownerId: string; contactId: string } {
  const ownerId = requireUuid("user_id", req.userId);
  const contactId = requireUuid("contact_user_id", req.contactUserId);
  if (ownerId === contactId) throw invalid("contact_user_id", "a user cannot be their own contact");
  return { ownerId, contactId };
}
