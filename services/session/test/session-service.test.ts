import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { SignJWT } from "jose";
import { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import { isUuid, uuidV7Time } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { createClient, inProcess, type Client } from "../../../lib/rpc.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { Sql } from "../../../lib/sql.js";
import { loadConfig } from "../src/config.js";
import { SessionContext } from "../src/context.js";
import { sessionRoutes } from "../src/routes.js";

/** A clock the tests move by hand. */
class ManualClock {
  constructor(public t: number) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

async function rejectsWith(p: Promise<unknown>, code: Code, message?: string | RegExp): Promise<ConnectError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConnectError, `expected a ConnectError, got ${String(caught)}`);
  assert.equal(caught.code, code, `expected ${Code[code]}, got ${Code[caught.code]}: ${caught.rawMessage}`);
  if (typeof message === "string") assert.equal(caught.rawMessage, message);
  else if (message) assert.match(caught.rawMessage, message);
  return caught;
}

const ACCESS_TTL_S = 900;
const REFRESH_TTL_S = 30 * 24 * 3600;
const logger = createLogger("session-test", "silent");

describe("SessionService", () => {
  let sql: Sql;
  let clock: ManualClock;
  let ctx: SessionContext;
  let client: Client<typeof SessionService>;
  const password = "correct horse battery";
  const name = (prefix = "user") => `${prefix}-${randomBytes(4).toString("hex")}`;

  before(async () => {
    sql = await openPglite();
    clock = new ManualClock(Date.UTC(2026, 0, 1));
    ctx = await SessionContext.fromConfig(loadConfig({ PARLEY_LOG_LEVEL: "silent" }), { sql, clock, logger });
    client = createClient(SessionService, inProcess(sessionRoutes(ctx)));
  });
  after(async () => {
    await ctx?.close();
    await sql?.close();
  });

  const signUp = (username = name(), deviceId = "") => client.signUp({ username, password, deviceId });

  test("config defaults", () => {
    const cfg = loadConfig({});
    assert.equal(cfg.port, 7101);
    assert.equal(cfg.accessTokenTtlSeconds, ACCESS_TTL_S);
    assert.equal(cfg.refreshTokenTtlSeconds, REFRESH_TTL_S);
    assert.throws(() => loadConfig({ PARLEY_ACCESS_TOKEN_TTL_SECONDS: "soon" }), /PARLEY_ACCESS_TOKEN_TTL_SECONDS/);
    assert.throws(() => loadConfig({ PARLEY_SESSION_PORT: "70000" }), /PARLEY_SESSION_PORT/);
  });

  test("signs up: normalized username, UUIDv7 id, default display name, working tokens", async () => {
    const username = name("Alice");
    const deviceId = crypto.randomUUID();
    const res = await client.signUp({ username: `  ${username.toUpperCase()} `, password, deviceId });
    const user = res.user!;
    const tokens = res.tokens!;
    assert.equal(user.username, username.toLowerCase());
    assert.equal(user.displayName, username.toLowerCase());
    assert.ok(isUuid(user.userId) && user.userId[14] === "7", user.userId);
    assert.equal(uuidV7Time(user.userId), clock.now());
    assert.equal(timestampMs(user.createdAt!), clock.now());
    assert.equal(tokens.deviceId, deviceId);
    assert.ok(isUuid(tokens.sessionId));
    assert.match(tokens.refreshToken, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(timestampMs(tokens.accessExpiresAt!), clock.now() + ACCESS_TTL_S * 1000);
    assert.equal(timestampMs(tokens.refreshExpiresAt!), clock.now() + REFRESH_TTL_S * 1000);

    const { principal } = await client.authenticate({ accessToken: tokens.accessToken });
    assert.equal(principal?.userId, user.userId);
    assert.equal(principal?.deviceId, deviceId);
    assert.equal(principal?.sessionId, tokens.sessionId);
    assert.equal(timestampMs(principal!.expiresAt!), timestampMs(tokens.accessExpiresAt!));

    // The password is stored as argon2id with the OWASP parameters, never in clear.
    const stored = await ctx.store.getUserWithPassword(user.username);
    assert.match(stored!.passwordHash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
    assert.ok(!stored!.passwordHash.includes(password));
  });

  test("signs up with a display name, and a random device id when none is given", async () => {
    const res = await client.signUp({ username: name(), password, displayName: "  Zoë 🎉  " });
    assert.equal(res.user?.displayName, "Zoë 🎉");
    assert.ok(isUuid(res.tokens!.deviceId));
  });

  test("the access token carries sub/did/sid/iat/exp and iss/aud parley", async () => {
    const res = await signUp();
    const [, payload] = res.tokens!.accessToken.split(".");
    const claims = JSON.parse(Buffer.from(payload!, "base64url").toString());
    assert.deepEqual(Object.keys(claims).sort(), ["aud", "did", "exp", "iat", "iss", "sid", "sub"]);
    assert.equal(claims.sub, res.user!.userId);
    assert.equal(claims.did, res.tokens!.deviceId);
    assert.equal(claims.sid, res.tokens!.sessionId);
    assert.equal(claims.iss, "parley");
    assert.equal(claims.aud, "parley");
    assert.equal(claims.exp - claims.iat, ACCESS_TTL_S);
  });

  test("a taken username is AlreadyExists, whatever its case", async () => {
    const username = name();
    await signUp(username);
    await rejectsWith(signUp(username.toUpperCase()), Code.AlreadyExists, /taken/);
  });

  test("rejects bad sign-up input with InvalidArgument naming the field", async () => {
    const ok = { username: name(), password, displayName: "", deviceId: "" };
    const cases: [Partial<typeof ok>, RegExp][] = [
      [{ username: "ab" }, /^username/],
      [{ username: "x".repeat(33) }, /^username/],
      [{ username: "bad name" }, /^username/],
      [{ username: "émile" }, /^username/],
      [{ username: "" }, /^username/],
      [{ password: "short12" }, /^password: must have at least 8/],
      [{ password: "x".repeat(129) }, /^password: must have at most 128/],
      [{ password: "🎉".repeat(129) }, /^password: must have at most 128/],
      [{ displayName: "d".repeat(65) }, /^display_name/],
      [{ displayName: "bell\u0007" }, /^display_name/],
      [{ deviceId: "not-a-uuid" }, /^device_id/],
      [{ deviceId: crypto.randomUUID().toUpperCase() }, /^device_id/],
    ];
    for (const [over, msg] of cases) {
      await rejectsWith(client.signUp({ ...ok, ...over }), Code.InvalidArgument, msg);
    }
  });

  test("the password cap is enforced before hashing: a huge password is rejected at once", async () => {
    const started = performance.now();
    await rejectsWith(
      client.signUp({ username: name(), password: "p".repeat(1_000_000) }),
      Code.InvalidArgument,
      /^password/,
    );
    await rejectsWith(client.logIn({ username: name(), password: "p".repeat(1_000_000) }), Code.InvalidArgument, /^password/);
    // Two argon2 hashes of a megabyte would take far longer than this.
    assert.ok(performance.now() - started < 1_000);
  });

  test("128 code points are a valid password even when they take 256 UTF-16 units", async () => {
    const username = name();
    const long = "🎉".repeat(128);
    await client.signUp({ username, password: long });
    const res = await client.logIn({ username, password: long });
    assert.equal(res.user?.username, username);
  });

  test("logs in with any case of the username; each login is a new session", async () => {
    const username = name();
    const first = await signUp(username);
    const deviceId = crypto.randomUUID();
    const res = await client.logIn({ username: ` ${username.toUpperCase()}`, password, deviceId });
    assert.equal(res.user?.userId, first.user?.userId);
    assert.equal(res.user?.username, username);
    assert.equal(res.tokens?.deviceId, deviceId);
    assert.notEqual(res.tokens?.sessionId, first.tokens?.sessionId);
    const { principal } = await client.authenticate({ accessToken: res.tokens!.accessToken });
    assert.equal(principal?.sessionId, res.tokens?.sessionId);
  });

  test("a wrong password and an unknown user get the same Unauthenticated answer", async () => {
    const username = name();
    await signUp(username);
    const wrong = await rejectsWith(client.logIn({ username, password: "wrong password" }), Code.Unauthenticated);
    const unknown = await rejectsWith(client.logIn({ username: name("ghost"), password }), Code.Unauthenticated);
    assert.equal(wrong.rawMessage, "invalid username or password");
    assert.equal(unknown.rawMessage, wrong.rawMessage);
  });

  test("rejects bad log-in input with InvalidArgument", async () => {
    await rejectsWith(client.logIn({ username: "a", password }), Code.InvalidArgument, /^username/);
    await rejectsWith(client.logIn({ username: name(), password: "" }), Code.InvalidArgument, /^password/);
    await rejectsWith(client.logIn({ username: name(), password, deviceId: "x" }), Code.InvalidArgument, /^device_id/);
  });

  test("refresh rotates the token within the session", async () => {
    const { tokens } = await signUp();
    clock.advance(60_000);
    const { tokens: next } = await client.refresh({ refreshToken: tokens!.refreshToken });
    assert.equal(next?.sessionId, tokens?.sessionId);
    assert.equal(next?.deviceId, tokens?.deviceId);
    assert.notEqual(next?.refreshToken, tokens?.refreshToken);
    assert.notEqual(next?.accessToken, tokens?.accessToken);
    assert.equal(timestampMs(next!.refreshExpiresAt!), clock.now() + REFRESH_TTL_S * 1000);
    assert.equal(timestampMs(next!.accessExpiresAt!), clock.now() + ACCESS_TTL_S * 1000);
    const { principal } = await client.authenticate({ accessToken: next!.accessToken });
    assert.equal(principal?.sessionId, tokens?.sessionId);
    // And the successor rotates too.
    const { tokens: third } = await client.refresh({ refreshToken: next!.refreshToken });
    assert.equal(third?.sessionId, tokens?.sessionId);
  });

  test("reusing a refresh token revokes the whole session", async () => {
    const { tokens } = await signUp();
    const { tokens: next } = await client.refresh({ refreshToken: tokens!.refreshToken });
    // An attacker (or a confused client) presents the consumed token again.
    await rejectsWith(client.refresh({ refreshToken: tokens!.refreshToken }), Code.Unauthenticated, /reuse/);
    // Now the legitimate successor is dead too, and so are the session's access tokens.
    await rejectsWith(client.refresh({ refreshToken: next!.refreshToken }), Code.Unauthenticated, "session revoked");
    await rejectsWith(client.refresh({ refreshToken: tokens!.refreshToken }), Code.Unauthenticated, "session revoked");
    await rejectsWith(client.authenticate({ accessToken: next!.accessToken }), Code.Unauthenticated, "session revoked");
    await rejectsWith(client.authenticate({ accessToken: tokens!.accessToken }), Code.Unauthenticated, "session revoked");
  });

  test("of two concurrent refreshes of one token exactly one wins", async () => {
    const { tokens } = await signUp();
    const results = await Promise.allSettled([
      client.refresh({ refreshToken: tokens!.refreshToken }),
      client.refresh({ refreshToken: tokens!.refreshToken }),
    ]);
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r) => r.status === "rejected");
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    const err = ConnectError.from(lost[0]!.reason);
    assert.equal(err.code, Code.Unauthenticated);
    // The loser presented a token that was already consumed: that is reuse, so the family
    // is revoked (clients must serialize their refreshes).
    await rejectsWith(client.refresh({ refreshToken: won[0]!.value.tokens!.refreshToken }), Code.Unauthenticated, "session revoked");
  });

  test("refresh rejects expired, unknown and malformed tokens", async () => {
    const { tokens } = await signUp();
    await rejectsWith(client.refresh({ refreshToken: "" }), Code.InvalidArgument, /^refresh_token/);
    await rejectsWith(client.refresh({ refreshToken: "nope" }), Code.Unauthenticated, "malformed refresh token");
    await rejectsWith(
      client.refresh({ refreshToken: randomBytes(32).toString("base64url") }),
      Code.Unauthenticated,
      "invalid refresh token",
    );
    clock.advance(REFRESH_TTL_S * 1000);
    await rejectsWith(client.refresh({ refreshToken: tokens!.refreshToken }), Code.Unauthenticated, "refresh token expired");
  });

  test("log out revokes the session's access and refresh tokens at once, and only that session", async () => {
    const username = name();
    const { tokens } = await signUp(username);
    const other = await client.logIn({ username, password });
    await client.authenticate({ accessToken: tokens!.accessToken });
    await client.logOut({ accessToken: tokens!.accessToken });
    await rejectsWith(client.authenticate({ accessToken: tokens!.accessToken }), Code.Unauthenticated, "session revoked");
    await rejectsWith(client.refresh({ refreshToken: tokens!.refreshToken }), Code.Unauthenticated, "session revoked");
    // Idempotent.
    await client.logOut({ accessToken: tokens!.accessToken });
    // The user's other device is still logged in.
    const { principal } = await client.authenticate({ accessToken: other.tokens!.accessToken });
    assert.equal(principal?.sessionId, other.tokens?.sessionId);
    await client.refresh({ refreshToken: other.tokens!.refreshToken });
  });

  test("an access token expires after its TTL; refresh gets a new one; log out still works", async () => {
    const { tokens } = await signUp();
    clock.advance(ACCESS_TTL_S * 1000 - 1_000);
    await client.authenticate({ accessToken: tokens!.accessToken });
    clock.advance(1_000);
    await rejectsWith(client.authenticate({ accessToken: tokens!.accessToken }), Code.Unauthenticated, "access token expired");
    const { tokens: next } = await client.refresh({ refreshToken: tokens!.refreshToken });
    await client.authenticate({ accessToken: next!.accessToken });
    // A client whose access token lapsed can still end its session.
    await client.logOut({ accessToken: tokens!.accessToken });
    await rejectsWith(client.authenticate({ accessToken: next!.accessToken }), Code.Unauthenticated, "session revoked");
  });

  test("rejects tampered, foreign and malformed access tokens", async () => {
    const { tokens, user } = await signUp();
    const token = tokens!.accessToken;
    const [h, p, s] = token.split(".") as [string, string, string];

    // Claims changed (another user id), signature kept.
    const claims = JSON.parse(Buffer.from(p, "base64url").toString());
    const forged = Buffer.from(JSON.stringify({ ...claims, sub: crypto.randomUUID() })).toString("base64url");
    await rejectsWith(client.authenticate({ accessToken: `${h}.${forged}.${s}` }), Code.Unauthenticated, "invalid token signature");
    // Signature bytes changed.
    const sig = Buffer.from(s, "base64url");
    sig[0]! ^= 1;
    await rejectsWith(
      client.authenticate({ accessToken: `${h}.${p}.${sig.toString("base64url")}` }),
      Code.Unauthenticated,
      "invalid token signature",
    );
    // Signed with another key.
    const now = Math.floor(clock.now() / 1000);
    const foreign = await new SignJWT({ did: tokens!.deviceId, sid: tokens!.sessionId })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(user!.userId)
      .setIssuer("parley")
      .setAudience("parley")
      .setIssuedAt(now)
      .setExpirationTime(now + 60)
      .sign(randomBytes(32));
    await rejectsWith(client.authenticate({ accessToken: foreign }), Code.Unauthenticated, "invalid token signature");
    // Unsigned ("alg": "none").
    const none = `${Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url")}.${p}.`;
    await rejectsWith(client.authenticate({ accessToken: none }), Code.Unauthenticated);
    // Garbage.
    for (const junk of ["abc", "a.b.c", `${h}.${p}`, "x".repeat(5000)]) {
      await rejectsWith(client.authenticate({ accessToken: junk }), Code.Unauthenticated, "malformed token");
    }
    await rejectsWith(client.authenticate({ accessToken: "" }), Code.InvalidArgument, /^access_token/);
    await rejectsWith(client.logOut({ accessToken: `${h}.${forged}.${s}` }), Code.Unauthenticated, "invalid token signature");
    // The genuine token is unharmed.
    await client.authenticate({ accessToken: token });
  });

  test("gets users by id and username; unknown ones are left out", async () => {
    const a = await signUp();
    const b = await signUp();
    const { users } = await client.getUsers({
      userIds: [a.user!.userId, crypto.randomUUID(), a.user!.userId],
      usernames: [b.user!.username.toUpperCase(), "nobody-at-all", "not a name", a.user!.username],
    });
    assert.deepEqual(
      users.map((u) => u.userId),
      [a.user!.userId, b.user!.userId],
    );
    assert.equal(users[1]!.username, b.user!.username);
    assert.equal(users[1]!.displayName, b.user!.displayName);
    assert.equal(timestampMs(users[1]!.createdAt!), timestampMs(b.user!.createdAt!));
    assert.deepEqual((await client.getUsers({})).users, []);
  });

  test("GetUsers rejects malformed ids and more than 500 names", async () => {
    await rejectsWith(client.getUsers({ userIds: ["nope"] }), Code.InvalidArgument, /^user_ids\[0\]/);
    const ids = Array.from({ length: 250 }, () => crypto.randomUUID());
    const names = Array.from({ length: 250 }, (_, i) => `n${i}xx`);
    assert.deepEqual((await client.getUsers({ userIds: ids, usernames: names })).users, []);
    await rejectsWith(client.getUsers({ userIds: ids, usernames: [...names, "one-more"] }), Code.InvalidArgument, /500/);
  });

  test("another instance on the same database shares the signing key and sessions", async () => {
    const { tokens } = await signUp();
    const ctx2 = await SessionContext.fromConfig(loadConfig({}), { sql, clock, logger });
    try {
      const client2 = createClient(SessionService, inProcess(sessionRoutes(ctx2)));
      const { principal } = await client2.authenticate({ accessToken: tokens!.accessToken });
      assert.equal(principal?.sessionId, tokens?.sessionId);
      await client2.logOut({ accessToken: tokens!.accessToken });
      await rejectsWith(client2.authenticate({ accessToken: tokens!.accessToken }), Code.Unauthenticated, "session revoked");
      await rejectsWith(client.refresh({ refreshToken: tokens!.refreshToken }), Code.Unauthenticated, "session revoked");
    } finally {
      await ctx2.close();
    }
  });
  describe("contacts", () => {
    test("put, get, list (by username), rename, delete", async () => {
      const me = (await signUp()).user!;
      const b = (await signUp(name("b"))).user!;
      const a = (await signUp(name("a"))).user!;
      assert.deepEqual((await client.listContacts({ userId: me.userId })).contacts, []);
      const put = await client.putContact({ userId: me.userId, contactUserId: b.userId, nickname: "  Bee  " });
      assert.equal(put.created, true);
      assert.equal(put.contact?.user?.userId, b.userId);
      assert.equal(put.contact?.user?.username, b.username);
      assert.equal(put.contact?.nickname, "Bee");
      assert.equal(timestampMs(put.contact!.addedAt!), clock.now());
      await client.putContact({ userId: me.userId, contactUserId: a.userId });
      const list = await client.listContacts({ userId: me.userId });
      assert.deepEqual(
        list.contacts.map((c) => [c.user?.userId, c.nickname]),
        [
          [a.userId, ""],
          [b.userId, "Bee"],
        ],
      );
      const addedAt = timestampMs(put.contact!.addedAt!);
      clock.advance(1_000);
      const renamed = await client.putContact({ userId: me.userId, contactUserId: b.userId, nickname: "B" });
      assert.equal(renamed.created, false);
      assert.equal(renamed.contact?.nickname, "B");
      assert.equal(timestampMs(renamed.contact!.addedAt!), addedAt);
      const got = await client.getContact({ userId: me.userId, contactUserId: b.userId });
      assert.equal(got.contact?.nickname, "B");
      assert.equal(got.contact?.user?.displayName, b.displayName);
      await client.deleteContact({ userId: me.userId, contactUserId: b.userId });
      await rejectsWith(client.getContact({ userId: me.userId, contactUserId: b.userId }), Code.NotFound);
      await rejectsWith(client.deleteContact({ userId: me.userId, contactUserId: b.userId }), Code.NotFound);
      assert.deepEqual(
        (await client.listContacts({ userId: me.userId })).contacts.map((c) => c.user?.userId),
        [a.userId],
      );
      // Lists are per owner.
      assert.deepEqual((await client.listContacts({ userId: a.userId })).contacts, []);
    });

    test("bad contact input: unknown user, oneself, long nickname, malformed ids", async () => {
      const me = (await signUp()).user!;
      const other = (await signUp()).user!;
      await rejectsWith(client.putContact({ userId: me.userId, contactUserId: crypto.randomUUID() }), Code.NotFound, "no such user");
      await rejectsWith(client.putContact({ userId: me.userId, contactUserId: me.userId }), Code.InvalidArgument, /^contact_user_id/);
      await rejectsWith(
        client.putContact({ userId: me.userId, contactUserId: other.userId, nickname: "n".repeat(65) }),
        Code.InvalidArgument,
        /^nickname: must have at most 64/,
      );
      await rejectsWith(
        client.putContact({ userId: me.userId, contactUserId: other.userId, nickname: "tab\there" }),
        Code.InvalidArgument,
        /^nickname/,
      );
      // 64 code points are fine even when they take 128 UTF-16 units.
      const ok = await client.putContact({ userId: me.userId, contactUserId: other.userId, nickname: "🎉".repeat(64) });
      assert.equal(ok.contact?.nickname, "🎉".repeat(64));
      await rejectsWith(client.listContacts({ userId: "me" }), Code.InvalidArgument, /^user_id/);
      await rejectsWith(client.getContact({ userId: me.userId, contactUserId: "x" }), Code.InvalidArgument, /^contact_user_id/);
      await rejectsWith(client.deleteContact({ userId: "", contactUserId: other.userId }), Code.InvalidArgument, /^user_id/);
      await rejectsWith(client.getContact({ userId: me.userId, contactUserId: crypto.randomUUID() }), Code.NotFound);
    });

    test("the per-user cap (PARLEY_CONTACTS_MAX, default 5,000) is ResourceExhausted", async () => {
      assert.equal(loadConfig({}).contactsMax, 5_000);
      assert.throws(() => loadConfig({ PARLEY_CONTACTS_MAX: "0" }), /PARLEY_CONTACTS_MAX/);
      const small = await SessionContext.fromConfig(loadConfig({ PARLEY_CONTACTS_MAX: "2" }), { sql, clock, logger });
      try {
        const c = createClient(SessionService, inProcess(sessionRoutes(small)));
        const me = (await signUp()).user!;
        const others = [(await signUp()).user!, (await signUp()).user!, (await signUp()).user!];
        await c.putContact({ userId: me.userId, contactUserId: others[0]!.userId });
        await c.putContact({ userId: me.userId, contactUserId: others[1]!.userId });
        await rejectsWith(c.putContact({ userId: me.userId, contactUserId: others[2]!.userId }), Code.ResourceExhausted, /at most 2/);
        // Renaming an existing contact at the cap is no new contact.
        await c.putContact({ userId: me.userId, contactUserId: others[1]!.userId, nickname: "renamed" });
        assert.equal((await c.listContacts({ userId: me.userId })).contacts.length, 2);
      } finally {
        await small.close();
      }
    });
  });
});
