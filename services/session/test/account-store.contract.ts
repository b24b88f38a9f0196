import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomBytes } from "node:crypto";
import { UuidV7Generator } from "../../../lib/ids.js";
import {
  ContactLimitError,
  DuplicateUsernameError,
  UnknownUserError,
  type AccountStore,
  type User,
  type UserWithPassword,
} from "../src/account-store.js";

export interface AccountStoreFixture {
  store: AccountStore;
  close(): Promise<void>;
}

/**
 * The behaviour every AccountStore adapter must have. `factory` is called once per suite;
 * tests use fresh ids and names, so they share the store.
 */
export function describeAccountStore(name: string, factory: () => Promise<AccountStoreFixture>): void {
  describe(`AccountStore contract: ${name}`, () => {
    let f: AccountStoreFixture;
    let store: AccountStore;
    const ids = new UuidV7Generator();
    const t0 = Date.UTC(2025, 0, 2, 3, 4, 5, 678);

    before(async () => {
      f = await factory();
      store = f.store;
    });
    after(async () => {
      await f?.close();
    });

    const uniqueName = () => `u.${randomBytes(6).toString("hex")}`;
    const tokenHash = () => randomBytes(32).toString("hex");
    const newUser = (over: Partial<UserWithPassword> = {}): UserWithPassword => ({
      userId: ids.next(),
      username: uniqueName(),
      displayName: "Some One",
      passwordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
      createdAt: t0,
      ...over,
    });
    const newSession = async (userId: string, firstHash = tokenHash(), expiresAt = t0 + 60_000) => {
      const s = { sessionId: ids.next(), userId, deviceId: crypto.randomUUID(), createdAt: t0 };
      await store.createSession(s, { tokenHash: firstHash, expiresAt });
      return { ...s, firstHash };
    };

    test("creates a user and reads it back with its password hash, times to the millisecond", async () => {
      const u = newUser();
      await store.createUser(u);
      assert.deepEqual(await store.getUserWithPassword(u.username), u);
      assert.equal(await store.getUserWithPassword(uniqueName()), undefined);
    });

    test("a taken username is a DuplicateUsernameError", async () => {
      const u = newUser();
      await store.createUser(u);
      await assert.rejects(store.createUser(newUser({ username: u.username })), DuplicateUsernameError);
    });

    test("gets users by id and by username, leaving unknown ones out", async () => {
      const a = newUser();
      const b = newUser({ displayName: "B" });
      await store.createUser(a);
      await store.createUser(b);
      const { passwordHash: _a, ...pa } = a;
      const { passwordHash: _b, ...pb } = b;
      const byId = await store.getUsersByIds([a.userId, ids.next(), b.userId]);
      assert.deepEqual(
        byId.sort((x, y) => x.userId.localeCompare(y.userId)),
        [pa, pb],
      );
      const byName = await store.getUsersByUsernames([b.username, "nobody-here"]);
      assert.deepEqual(byName, [pb]);
      assert.deepEqual(await store.getUsersByIds([]), []);
      assert.deepEqual(await store.getUsersByUsernames([]), []);
    });

    test("creates a session with its first refresh token", async () => {
      const u = newUser();
      await store.createUser(u);
      const s = await newSession(u.userId);
      assert.deepEqual(await store.getSession(s.sessionId), {
        sessionId: s.sessionId,
        userId: u.userId,
        deviceId: s.deviceId,
        createdAt: t0,
        revokedAt: null,
      });
      assert.deepEqual(await store.getRefreshToken(s.firstHash), {
        tokenHash: s.firstHash,
        sessionId: s.sessionId,
        userId: u.userId,
        deviceId: s.deviceId,
        createdAt: t0,
        expiresAt: t0 + 60_000,
        usedAt: null,
        sessionRevokedAt: null,
      });
      assert.equal(await store.getSession(ids.next()), undefined);
      assert.equal(await store.getRefreshToken(tokenHash()), undefined);
    });

    test("revokes a session once; its tokens show it", async () => {
      const u = newUser();
      await store.createUser(u);
      const s = await newSession(u.userId);
      assert.equal(await store.revokeSession(s.sessionId, t0 + 5), true);
      assert.equal(await store.revokeSession(s.sessionId, t0 + 9), false);
      assert.equal((await store.getSession(s.sessionId))?.revokedAt, t0 + 5);
      assert.equal((await store.getRefreshToken(s.firstHash))?.sessionRevokedAt, t0 + 5);
      assert.equal(await store.revokeSession(ids.next(), t0), false);
    });

    test("rotates a refresh token: the old one is used, the new one joins the session", async () => {
      const u = newUser();
      await store.createUser(u);
      const s = await newSession(u.userId);
      const next = tokenHash();
      assert.equal(await store.rotateRefreshToken(s.firstHash, { tokenHash: next, expiresAt: t0 + 120_000 }, t0 + 1_000), true);
      assert.equal((await store.getRefreshToken(s.firstHash))?.usedAt, t0 + 1_000);
      const n = await store.getRefreshToken(next);
      assert.equal(n?.sessionId, s.sessionId);
      assert.equal(n?.usedAt, null);
      assert.equal(n?.createdAt, t0 + 1_000);
      assert.equal(n?.expiresAt, t0 + 120_000);
      // A used token does not rotate again, and nothing is added.
      const again = tokenHash();
      assert.equal(await store.rotateRefreshToken(s.firstHash, { tokenHash: again, expiresAt: t0 + 120_000 }, t0 + 2_000), false);
      assert.equal(await store.getRefreshToken(again), undefined);
      assert.equal((await store.getRefreshToken(s.firstHash))?.usedAt, t0 + 1_000);
    });

    test("does not rotate unknown tokens or tokens of a revoked session", async () => {
      const unknown = tokenHash();
      const next1 = tokenHash();
      assert.equal(await store.rotateRefreshToken(unknown, { tokenHash: next1, expiresAt: t0 + 1 }, t0), false);
      assert.equal(await store.getRefreshToken(next1), undefined);

      const u = newUser();
      await store.createUser(u);
      const s = await newSession(u.userId);
      await store.revokeSession(s.sessionId, t0);
      const next2 = tokenHash();
      assert.equal(await store.rotateRefreshToken(s.firstHash, { tokenHash: next2, expiresAt: t0 + 1 }, t0), false);
      assert.equal(await store.getRefreshToken(next2), undefined);
      assert.equal((await store.getRefreshToken(s.firstHash))?.usedAt, null);
    });

    test("of concurrent rotations of one token exactly one wins", async () => {
      const u = newUser();
      await store.createUser(u);
      const s = await newSession(u.userId);
      const nexts = Array.from({ length: 5 }, tokenHash);
      const results = await Promise.all(
        nexts.map((h) => store.rotateRefreshToken(s.firstHash, { tokenHash: h, expiresAt: t0 + 1_000 }, t0)),
      );
      assert.equal(results.filter(Boolean).length, 1);
      const stored = await Promise.all(nexts.map((h) => store.getRefreshToken(h)));
      assert.deepEqual(
        stored.map((r) => r !== undefined),
        results,
      );
    });

    test("keeps the first signing key stored under an id", async () => {
      const keyId = `k-${randomBytes(4).toString("hex")}`;
      const first = { keyId, secret: new Uint8Array(randomBytes(32)), createdAt: t0 };
      assert.deepEqual(await store.ensureSigningKey(first), first);
      const second = { keyId, secret: new Uint8Array(randomBytes(32)), createdAt: t0 + 1 };
      assert.deepEqual(await store.ensureSigningKey(second), first);
      const other = { keyId: `${keyId}-b`, secret: new Uint8Array(randomBytes(32)), createdAt: t0 };
      assert.deepEqual(await store.ensureSigningKey(other), other);
    });

    test("instances starting together agree on one signing key", async () => {
      const keyId = `k-${randomBytes(4).toString("hex")}`;
      const candidates = Array.from({ length: 4 }, () => ({ keyId, secret: new Uint8Array(randomBytes(32)), createdAt: t0 }));
      const got = await Promise.all(candidates.map((c) => store.ensureSigningKey(c)));
      for (const k of got) assert.deepEqual(k, got[0]);
      assert.ok(candidates.some((c) => Buffer.from(c.secret).equals(Buffer.from(got[0]!.secret))));
    });
    const publicUser = async (over: Partial<UserWithPassword> = {}): Promise<User> => {
      const { passwordHash: _, ...u } = newUser(over);
      await store.createUser({ ...u, passwordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA" });
      return u;
    };

    test("adds contacts with the contact's public user, lists them by username, gets one", async () => {
      const owner = await publicUser();
      const zed = await publicUser({ username: `z.${randomBytes(6).toString("hex")}`, displayName: "Zed" });
      const amy = await publicUser({ username: `a.${randomBytes(6).toString("hex")}`, displayName: "Amy" });
      assert.deepEqual(await store.listContacts(owner.userId), []);
      const put1 = await store.putContact({ ownerId: owner.userId, contactId: zed.userId, nickname: "zz", at: t0 + 1, max: 10 });
      assert.deepEqual(put1, { contact: { user: zed, nickname: "zz", addedAt: t0 + 1 }, created: true });
      await store.putContact({ ownerId: owner.userId, contactId: amy.userId, nickname: "", at: t0 + 2, max: 10 });
      assert.deepEqual(await store.listContacts(owner.userId), [
        { user: amy, nickname: "", addedAt: t0 + 2 },
        { user: zed, nickname: "zz", addedAt: t0 + 1 },
      ]);
      assert.deepEqual(await store.getContact(owner.userId, zed.userId), { user: zed, nickname: "zz", addedAt: t0 + 1 });
      assert.equal(await store.getContact(owner.userId, owner.userId), undefined);
      assert.equal(await store.getContact(owner.userId, ids.next()), undefined);
      // Lists are per owner: zed's list is empty, and zed is nobody's contact but owner's.
      assert.deepEqual(await store.listContacts(zed.userId), []);
      assert.equal(await store.getContact(zed.userId, owner.userId), undefined);
    });

    test("putting an existing contact changes its nickname and keeps when it was added", async () => {
      const owner = await publicUser();
      const other = await publicUser();
      await store.putContact({ ownerId: owner.userId, contactId: other.userId, nickname: "first", at: t0, max: 10 });
      const again = await store.putContact({ ownerId: owner.userId, contactId: other.userId, nickname: "second", at: t0 + 9, max: 10 });
      assert.deepEqual(again, { contact: { user: other, nickname: "second", addedAt: t0 }, created: false });
      assert.equal((await store.listContacts(owner.userId)).length, 1);
      assert.equal((await store.getContact(owner.userId, other.userId))?.nickname, "second");
    });

    test("an unknown contact user is an UnknownUserError and nothing is stored", async () => {
      const owner = await publicUser();
      await assert.rejects(
        store.putContact({ ownerId: owner.userId, contactId: ids.next(), nickname: "", at: t0, max: 10 }),
        UnknownUserError,
      );
      assert.deepEqual(await store.listContacts(owner.userId), []);
    });

    test("deletes a contact once", async () => {
      const owner = await publicUser();
      const other = await publicUser();
      await store.putContact({ ownerId: owner.userId, contactId: other.userId, nickname: "", at: t0, max: 10 });
      assert.equal(await store.deleteContact(owner.userId, other.userId), true);
      assert.equal(await store.deleteContact(owner.userId, other.userId), false);
      assert.equal(await store.getContact(owner.userId, other.userId), undefined);
      assert.equal(await store.deleteContact(owner.userId, ids.next()), false);
    });

    test("the cap: a new contact over max is a ContactLimitError; renaming at the cap works", async () => {
      const owner = await publicUser();
      const others = [await publicUser(), await publicUser(), await publicUser()];
      for (const o of others.slice(0, 2)) {
        await store.putContact({ ownerId: owner.userId, contactId: o.userId, nickname: "", at: t0, max: 2 });
      }
      await assert.rejects(
        store.putContact({ ownerId: owner.userId, contactId: others[2]!.userId, nickname: "", at: t0, max: 2 }),
        ContactLimitError,
      );
      const renamed = await store.putContact({ ownerId: owner.userId, contactId: others[0]!.userId, nickname: "x", at: t0, max: 2 });
      assert.equal(renamed.created, false);
      assert.equal((await store.listContacts(owner.userId)).length, 2);
    });

    test("concurrent adds never take an owner over the cap", async () => {
      const owner = await publicUser();
      const others = await Promise.all(Array.from({ length: 8 }, () => publicUser()));
      const results = await Promise.allSettled(
        others.map((o) => store.putContact({ ownerId: owner.userId, contactId: o.userId, nickname: "", at: t0, max: 3 })),
      );
      assert.equal(results.filter((r) => r.status === "fulfilled").length, 3);
      for (const r of results) if (r.status === "rejected") assert.ok(r.reason instanceof ContactLimitError, String(r.reason));
      assert.equal((await store.listContacts(owner.userId)).length, 3);
    });
  });
}
