import { createHmac } from "node:crypto";

/** A token the socket.io baseline accepts: `<user id>.<HMAC-SHA256 of it, base64url>`. */
export function signBenchToken(key: string, userId: string): string {
  return `${userId}.${createHmac("sha256", key).update(userId).digest("base64url")}`;
}
