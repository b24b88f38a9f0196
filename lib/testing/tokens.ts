/**
 * Access tokens for tests with a fake session service: shaped like Parley's JWTs (the
 * gateway refuses anything else, and expired ones, before the upgrade) but unsigned. The
 * fake reads the subject back with `fakeTokenSubject`.
 */
export function fakeAccessToken(userId: string, deviceId: string, expiresInSeconds = 3600): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "none", typ: "JWT" })}.${part({ sub: userId, did: deviceId, exp: Math.floor(Date.now() / 1000) + expiresInSeconds })}.fake`;
}

/** The user and device a `fakeAccessToken` names; undefined for anything else. */
export function fakeTokenSubject(token: string): { userId: string; deviceId: string } | undefined {
  const [, payload, signature] = token.split(".");
  if (!payload || signature !== "fake") return undefined;
  try {
    const { sub, did } = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { sub?: unknown; did?: unknown };
    return typeof sub === "string" && typeof did === "string" ? { userId: sub, deviceId: did } : undefined;
  } catch {
    return undefined;
  }
}
