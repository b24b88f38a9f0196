import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { directConversationId, randomUuid } from "../../../lib/ids.js";
import type { ConversationStore } from "../src/conversation-store.js";
import type { ChangeRecord, Conversation, CursorMove, DeviceCursor } from "../src/model.js";

type Disposable = ConversationStore & { dispose?(): Promise<void> };

const T0 = 1_700_000_000_000;

function change(atMs = T0, payload = new Uint8Array([1, 2, 3])): ChangeRecord {
  return { changeId: randomUuid(), payload, atMs };
}

const ids = (n: number) => Array.from({ length: n }, () => randomUuid()).sort();

/** The contract every ConversationStore adapter keeps. */
export function describeConversationStore(name: string, open: () => Promise<Disposable>) {
  describe(`ConversationStore contract: ${name}`, () => {
    let store: Disposable;
    before(async () => {
      store = await open();
    });
    after(async () => {
      await store.close();
      await store.dispose?.();
    });

    async function direct(a: string, b: string, atMs = T0) {
      const r = await store.getOrCreateDirect(directConversationId(a, b), a, b, atMs);
      assert.ok(!("blocked" in r), "unexpectedly blocked");
      return r;
    }

    async function group(owner: string, members: string[], extra: Partial<{ name: string; topic: string; atMs: number }> = {}) {
      const conversationId = randomUuid();
      const c = change(extra.atMs ?? T0);
      const conversation = await store.createGroup(
        { conversationId, name: extra.name ?? "team", topic: extra.topic ?? "", createdBy: owner, memberIds: members, atMs: extra.atMs ?? T0 },
        c,
      );
      return { conversation, changeId: c.changeId };
    }

    describe("direct conversations", () => {
      it("creates a direct conversation once, with both members", async () => {
        const [a, b] = ids(2) as [string, string];
        const first = await direct(a, b, T0);
        assert.equal(first.created, true);
        assert.deepEqual(first.conversation.memberIds, [a, b]);
        assert.equal(first.conversation.kind, "direct");
        assert.equal(first.conversation.createdAtMs, T0);
        assert.equal(first.conversation.memberCount, 2);
        assert.deepEqual(first.conversation.blockedUserIds, []);
        const again = await direct(b, a, T0 + 999_000);
        assert.equal(again.created, false);
        assert.deepEqual(again.conversation, first.conversation);
      });

      it("creates a conversation once under concurrent calls", async () => {
        const [a, b] = ids(2) as [string, string];
        const id = directConversationId(a, b);
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) => store.getOrCreateDirect(id, i % 2 ? a : b, i % 2 ? b : a, 1_000 + i)),
        );
        assert.equal(results.filter((r) => "created" in r && r.created).length, 1);
        for (const r of results) assert.ok("conversation" in r && r.conversation.memberIds.length === 2);
      });

      it("gets a conversation by id and says undefined for an unknown one", async () => {
        const [a, b] = ids(2) as [string, string];
        await direct(a, b);
        assert.equal((await store.get(directConversationId(a, b)))?.conversationId, directConversationId(a, b));
        assert.equal(await store.get(randomUuid()), undefined);
      });

      it("does not create a direct conversation across a block (either way), but returns an existing one as blocked", async () => {
        const [a, b, c] = ids(3) as [string, string, string];
        assert.equal(await store.block(a, b, directConversationId(a, b), change()), true);
        assert.deepEqual(await store.getOrCreateDirect(directConversationId(a, b), b, a, T0), { blocked: true });
        assert.deepEqual(await store.getOrCreateDirect(directConversationId(a, b), a, b, T0), { blocked: true });
        assert.equal(await store.get(directConversationId(a, b)), undefined);
        // Existing before the block: still returned, showing both users blocked.
        const before = await direct(a, c);
        assert.equal(await store.block(c, a, directConversationId(a, c), change()), true);
        const after = await store.getOrCreateDirect(directConversationId(a, c), a, c, T0);
        assert.ok("conversation" in after);
        assert.equal(after.created, false);
        assert.deepEqual(after.conversation.blockedUserIds, [a, c].sort());
        assert.equal(after.conversation.version, before.conversation.version + 1);
        // Unblocking lifts it.
        assert.equal(await store.unblock(a, b, directConversationId(a, b), change()), true);
        assert.equal((await direct(a, b)).created, true);
      });

      it("blocks and unblocks idempotently, recording one outbox change per real change", async () => {
        const [a, b, c] = ids(3) as [string, string, string];
        const id = directConversationId(a, b);
        assert.equal(await store.block(a, b, id, change()), true);
        assert.equal(await store.block(a, b, id, change()), false);
        assert.equal(await store.block(a, c, directConversationId(a, c), change()), true);
        assert.deepEqual(await store.listBlocked(a), [b, c].sort());
        assert.deepEqual(await store.listBlocked(b), []);
        assert.equal((await store.pendingChanges(id, 10)).length, 1);
        assert.equal(await store.unblock(a, b, id, change()), true);
        assert.equal(await store.unblock(a, b, id, change()), false);
        assert.deepEqual(await store.listBlocked(a), [c]);
        assert.equal((await store.pendingChanges(id, 10)).length, 2);
      });

      it("checkMembers: both users may send, nobody when blocked, strangers never", async () => {
        const [a, b, x] = ids(3) as [string, string, string];
        const id = directConversationId(a, b);
        await direct(a, b);
        assert.deepEqual((await store.checkMembers(id, [a, b, x]))?.allowed, [a, b]);
        await store.block(b, a, id, change());
        const blocked = await store.checkMembers(id, [a, b]);
        assert.deepEqual(blocked?.allowed, []);
        assert.deepEqual(blocked?.conversation.blockedUserIds, [a, b]);
        assert.equal(await store.checkMembers(randomUuid(), [a]), undefined);
      });
    });

    describe("groups", () => {
      it("creates a group with its owner, members, count and a pending change", async () => {
        const owner = randomUuid();
        const members = ids(3);
        const { conversation: g, changeId } = await group(owner, members, { name: "Ops", topic: "on call" });
        assert.equal(g.kind, "group");
        assert.equal(g.name, "Ops");
        assert.equal(g.topic, "on call");
        assert.equal(g.createdBy, owner);
        assert.equal(g.memberCount, 4);
        assert.deepEqual(g.memberIds, []);
        assert.equal(g.version, 1);
        assert.deepEqual(await store.get(g.conversationId), g);
        const mine = await store.getMembership(g.conversationId, owner);
        assert.equal(mine?.member.role, "owner");
        assert.equal(mine?.member.state, "active");
        assert.equal(mine?.member.joinedAtMs, T0);
        assert.equal((await store.getMembership(g.conversationId, members[0]!))?.member.role, "member");
        assert.equal(await store.getMembership(g.conversationId, randomUuid()), undefined);
        const pending = await store.pendingChanges(g.conversationId, 10);
        assert.deepEqual(
          pending.map((p) => [p.changeId, p.conversationId, [...p.payload]]),
          [[changeId, g.conversationId, [1, 2, 3]]],
        );
      });

      it("lists members ordered by user id, active only, in pages", async () => {
        const owner = randomUuid();
        const members = ids(5);
        const { conversation: g } = await group(owner, members);
        const all = [owner, ...members].sort();
        const first = await store.listMembers(g.conversationId, "", 3);
        assert.deepEqual(first.map((m) => m.userId), all.slice(0, 3));
        const rest = await store.listMembers(g.conversationId, first[2]!.userId, 10);
        assert.deepEqual(rest.map((m) => m.userId), all.slice(3));
        await store.mutateGroup(g.conversationId, (tx) => tx.leave([members[0]!]));
        assert.deepEqual(
          (await store.listMembers(g.conversationId, "", 10)).map((m) => m.userId),
          all.filter((u) => u !== members[0]),
        );
      });

      it("mutates under the row lock: add, leave, re-add, roles, settings; version and count follow", async () => {
        const owner = randomUuid();
        const [m1, m2] = ids(2) as [string, string];
        const { conversation: g } = await group(owner, [m1]);
        const id = g.conversationId;
        await store.mutateGroup(id, async (tx) => {
          assert.equal(tx.conversation?.conversationId, id);
          assert.deepEqual((await tx.members([owner, m1, m2])).map((m) => m.userId).sort(), [owner, m1].sort());
          await tx.addMembers([m2], T0 + 1);
          await tx.recordChange(change(T0 + 1));
        });
        let now = await store.get(id);
        assert.equal(now?.memberCount, 3);
        assert.equal(now?.version, 2);
        assert.equal((await store.getMembership(id, m2))?.member.joinedAtMs, T0 + 1);

        await store.mutateGroup(id, async (tx) => {
          await tx.leave([m2, randomUuid()]);
          await tx.recordChange(change(T0 + 2));
        });
        now = await store.get(id);
        assert.equal(now?.memberCount, 2);
        assert.equal(now?.version, 3);
        const left = await store.getMembership(id, m2);
        assert.equal(left?.member.state, "left");
        assert.equal(left?.member.leftSeq, 0);
        await store.advanceReadCursors([{ userId: m2, conversationId: id, seq: 4 }]);

        // Re-adding makes them active again with a new joined_at; the role is reset.
        await store.mutateGroup(id, async (tx) => {
          await tx.setRole(m2, "admin");
          await tx.addMembers([m2], T0 + 3);
          await tx.setRole(m1, "admin");
          await tx.update({ name: "renamed" });
          await tx.update({ topic: "new topic" });
          const cur = await tx.current();
          assert.equal(cur.name, "renamed");
          assert.equal(cur.memberCount, 3);
        });
        const back = await store.getMembership(id, m2);
        assert.equal(back?.member.state, "active");
        assert.equal(back?.member.role, "member");
        assert.equal(back?.member.joinedAtMs, T0 + 3);
        assert.equal(back?.member.leftSeq, 0);
        assert.equal(back?.member.readSeq, 4);
        assert.equal((await store.getMembership(id, m1))?.member.role, "admin");
        now = await store.get(id);
        assert.equal(now?.name, "renamed");
        assert.equal(now?.topic, "new topic");
        assert.equal(now?.memberCount, 3);

        // Adding an active member again changes nothing.
        await store.mutateGroup(id, (tx) => tx.addMembers([m1], T0 + 9));
        assert.equal((await store.get(id))?.memberCount, 3);
        assert.equal((await store.getMembership(id, m1))?.member.joinedAtMs, T0);
      });

      it("rolls everything back when the work throws", async () => {
        const owner = randomUuid();
        const { conversation: g } = await group(owner, []);
        const newcomer = randomUuid();
        await assert.rejects(
          store.mutateGroup(g.conversationId, async (tx) => {
            await tx.addMembers([newcomer], T0);
            await tx.update({ name: "nope" });
            await tx.recordChange(change());
            throw new Error("rule says no");
          }),
          /rule says no/,
        );
        assert.deepEqual(await store.get(g.conversationId), g);
        assert.equal(await store.getMembership(g.conversationId, newcomer), undefined);
        assert.equal((await store.pendingChanges(g.conversationId, 10)).length, 1);
      });

      it("serializes concurrent mutations of one group: a cap checked inside is never exceeded", async () => {
        const owner = randomUuid();
        const { conversation: g } = await group(owner, []);
        const cap = 5;
        const results = await Promise.allSettled(
          ids(12).map((u) =>
            store.mutateGroup(g.conversationId, async (tx) => {
              const count = tx.conversation!.memberCount;
              if (count + 1 > cap) throw new Error("over cap");
              await tx.addMembers([u], T0);
              await tx.recordChange(change());
            }),
          ),
        );
        assert.equal(results.filter((r) => r.status === "fulfilled").length, cap - 1);
        const now = await store.get(g.conversationId);
        assert.equal(now?.memberCount, cap);
        assert.equal(now?.version, cap);
        assert.equal((await store.listMembers(g.conversationId, "", 100)).length, cap);
      });

      it("gives the work no conversation for unknown and deleted ones", async () => {
        assert.equal(await store.mutateGroup(randomUuid(), async (tx) => tx.conversation), undefined);
        const { conversation: g } = await group(randomUuid(), ids(2));
        await store.mutateGroup(g.conversationId, (tx) => tx.markDeleted(T0 + 5));
        assert.equal(await store.mutateGroup(g.conversationId, async (tx) => tx.conversation), undefined);
      });

      it("hides deleted groups everywhere, and every member has left", async () => {
        const owner = randomUuid();
        const [m1] = ids(1) as [string];
        const { conversation: g } = await group(owner, [m1]);
        const { conversation: other } = await group(owner, []);
        await store.mutateGroup(g.conversationId, async (tx) => {
          await tx.markDeleted(T0 + 1);
          await tx.recordChange(change());
        });
        assert.equal(await store.get(g.conversationId), undefined);
        assert.equal(await store.getMembership(g.conversationId, owner), undefined);
        assert.equal(await store.checkMembers(g.conversationId, [owner]), undefined);
        assert.deepEqual((await store.listForUser(owner, 10)).map((r) => r.conversation.conversationId), [other.conversationId]);
        assert.deepEqual((await store.listUserGroupIds([owner, m1])).get(m1), []);
        assert.equal(await store.setMuted(g.conversationId, owner, true), false);
        assert.deepEqual(await store.listMembers(g.conversationId, "", 10), []);
      });

      it("checkMembers answers the active members among the asked users", async () => {
        const owner = randomUuid();
        const [m1, m2, x] = ids(3) as [string, string, string];
        const { conversation: g } = await group(owner, [m1, m2]);
        await store.mutateGroup(g.conversationId, (tx) => tx.leave([m2]));
        const r = await store.checkMembers(g.conversationId, [m1, m2, x, owner]);
        assert.deepEqual(r?.allowed, [m1, owner].sort());
        assert.equal(r?.conversation.memberCount, 2);
        assert.deepEqual((await store.checkMembers(g.conversationId, []))?.allowed, []);
      });
    });

    describe("per-user views", () => {
      it("lists a user's conversations, current and past, newest first, with their membership", async () => {
        const [me, p1, p2, stranger] = ids(4) as [string, string, string, string];
        const c1 = directConversationId(me, p1);
        const c2 = directConversationId(me, p2);
        await direct(me, p1, 10_000);
        await direct(p2, me, 20_000);
        await direct(p1, p2, 30_000);
        const { conversation: g } = await group(p1, [me], { atMs: 40_000 });
        await store.mutateGroup(g.conversationId, (tx) => tx.leave([me]));
        const listed = await store.listForUser(me, 10);
        assert.deepEqual(listed.map((r) => r.conversation.conversationId), [g.conversationId, c2, c1]);
        assert.equal(listed[0]!.member.state, "left");
        assert.equal(listed[1]!.member.state, "active");
        assert.equal(listed[1]!.member.userId, me);
        assert.deepEqual(await store.listForUser(stranger, 10), []);
        assert.equal((await store.listForUser(me, 1)).length, 1);
      });

      it("lists the groups each user is an active member of, for many users at once", async () => {
        const [a, b, c, nobody] = ids(4) as [string, string, string, string];
        const { conversation: g1 } = await group(a, [b]);
        const { conversation: g2 } = await group(b, [a, c]);
        await direct(a, b);
        await store.mutateGroup(g2.conversationId, (tx) => tx.leave([c]));
        const map = await store.listUserGroupIds([a, b, c, nobody]);
        assert.deepEqual(map.get(a), [g1.conversationId, g2.conversationId].sort());
        assert.deepEqual(map.get(b), [g1.conversationId, g2.conversationId].sort());
        assert.deepEqual(map.get(c), []);
        assert.deepEqual(map.get(nobody), []);
        assert.equal((await store.listUserGroupIds([])).size, 0);
      });

      it("moves read cursors forward only, in one batch, ignoring non-members", async () => {
        const [a, b, x] = ids(3) as [string, string, string];
        const id = directConversationId(a, b);
        await direct(a, b);
        const { conversation: g } = await group(a, [b]);
        await store.advanceReadCursors([
          { userId: a, conversationId: id, seq: 10 },
          { userId: b, conversationId: id, seq: 3 },
          { userId: a, conversationId: g.conversationId, seq: 7 },
          { userId: a, conversationId: g.conversationId, seq: 5 },
          { userId: x, conversationId: id, seq: 99 },
          { userId: a, conversationId: randomUuid(), seq: 1 },
        ]);
        await store.advanceReadCursors([{ userId: a, conversationId: id, seq: 4 }]);
        assert.equal((await store.getMembership(id, a))?.member.readSeq, 10);
        assert.equal((await store.getMembership(id, b))?.member.readSeq, 3);
        assert.equal((await store.getMembership(g.conversationId, a))?.member.readSeq, 7);
        assert.equal((await store.getMembership(g.conversationId, b))?.member.readSeq, 0);
        assert.equal(await store.getMembership(id, x), undefined);
        await store.advanceReadCursors([]);
      });

      it("mutes and unmutes a member's own conversation; nothing for non-members", async () => {
        const [a, b] = ids(2) as [string, string];
        const id = directConversationId(a, b);
        await direct(a, b);
        assert.equal(await store.setMuted(id, a, true), true);
        assert.equal((await store.getMembership(id, a))?.member.muted, true);
        assert.equal((await store.getMembership(id, b))?.member.muted, false);
        assert.equal(await store.setMuted(id, a, false), true);
        assert.equal((await store.getMembership(id, a))?.member.muted, false);
        assert.equal(await store.setMuted(id, randomUuid(), true), false);
        assert.equal(await store.setMuted(randomUuid(), a, true), false);
      });
    });

    describe("receipts", () => {
      /** A cursor report; `max` defaults to 100. */
      const cur = (userId: string, deviceId: string, conversationId: string, d: number, r: number, max = 100): DeviceCursor => ({
        userId,
        deviceId,
        conversationId,
        deliveredSeq: d,
        readSeq: r,
        maxSeq: max,
      });
      /** The moving part of a move: [user, device, delivered from, to, read from, to]. */
      const brief = (m: CursorMove) => [m.userId, m.deviceId, m.deliveredFrom, m.deliveredTo, m.readFrom, m.readTo];

      it("answers each moved cursor from → to, never moves back, and a read is a delivery of that device", async () => {
        const [a, b, c] = ids(3) as [string, string, string];
        const [da, db, db2] = ids(3) as [string, string, string];
        const { conversation: g } = await group(a, [b, c]);
        const id = g.conversationId;
        const first = await store.advanceCursors([cur(a, da, id, 5, 0), cur(b, db, id, 3, 2), cur(c, randomUuid(), id, 0, 0)]);
        assert.deepEqual(first.map(brief), [
          [a, da, 0, 5, 0, 0],
          [b, db, 0, 3, 0, 2],
        ]);
        assert.deepEqual(
          first.map((m) => [m.conversationId, m.kind, m.memberIds, m.memberCount]),
          [
            [id, "group", [], 3],
            [id, "group", [], 3],
          ],
        );
        // Lower or equal reports move nothing.
        assert.deepEqual(await store.advanceCursors([cur(a, da, id, 4, 0), cur(b, db, id, 3, 1)]), []);
        // A read beyond the delivered cursor moves both; only delivered moves: read from === to.
        assert.deepEqual((await store.advanceCursors([cur(b, db, id, 0, 4), cur(a, da, id, 6, 0)])).map(brief), [
          [b, db, 3, 4, 2, 4],
          [a, da, 5, 6, 0, 0],
        ]);
        // Another device of b: its own delivered cursor starts at 0; the user's read cursor is shared.
        assert.deepEqual((await store.advanceCursors([cur(b, db2, id, 0, 3)])).map(brief), [[b, db2, 0, 3, 4, 4]]);
        assert.equal((await store.getMembership(id, b))?.member.readSeq, 4);
        assert.equal((await store.getMembership(id, a))?.member.readSeq, 0);
        assert.deepEqual(await store.advanceCursors([]), []);
      });

      it("cuts to max_seq and, for past members, to left_seq; ignores non-members, unknown and deleted conversations", async () => {
        const [owner, gone, pending, stranger] = ids(4) as [string, string, string, string];
        const dev = randomUuid();
        const { conversation: g, changeId } = await group(owner, [gone, pending]);
        const id = g.conversationId;
        await store.markPublished(id, changeId, 1, [], T0);
        const leave = change();
        await store.mutateGroup(id, async (tx) => {
          await tx.leave([gone, pending]);
          await tx.recordChange(leave);
        });
        await store.markPublished(id, leave.changeId, 20, [gone], T0); // `pending` has no left_seq yet
        const { conversation: deleted } = await group(owner, [stranger]);
        await store.mutateGroup(deleted.conversationId, (tx) => tx.markDeleted(T0));
        const moves = await store.advanceCursors([
          cur(owner, dev, id, 50, 40, 30),
          cur(gone, dev, id, 25, 22, 30),
          cur(pending, dev, id, 5, 5, 30),
          cur(stranger, dev, id, 5, 5, 30),
          cur(owner, dev, randomUuid(), 5, 5, 30),
          cur(stranger, dev, deleted.conversationId, 5, 5, 30),
        ]);
        assert.deepEqual(moves.map(brief), [
          [owner, dev, 0, 30, 0, 30],
          [gone, dev, 0, 20, 0, 20],
        ]);
        assert.equal(moves[0]!.memberCount, 1);
        assert.equal((await store.getMembership(id, gone))?.member.readSeq, 20);
        assert.equal((await store.getMembership(id, pending))?.member.readSeq, 0);
        // max_seq 0 (nothing stored yet): nothing moves.
        assert.deepEqual(await store.advanceCursors([cur(owner, randomUuid(), id, 5, 5, 0)]), []);
      });

      it("takes the highest of several cursors of one device in a batch, and answers a user's read move once", async () => {
        const [a, b] = ids(2) as [string, string];
        const [d1, d2, d3] = ids(3) as [string, string, string];
        await direct(a, b);
        const id = directConversationId(a, b);
        const moves = await store.advanceCursors([
          cur(a, d1, id, 3, 1),
          cur(a, d2, id, 2, 6),
          cur(a, d1, id, 7, 2),
          cur(a, d3, id, 1, 0),
          cur(a, d2, id, 0, 4),
          cur(b, d1, id, 9, 9, 8),
        ]);
        // One move per device, in order of first appearance; a's read 0 → 6 is answered
        // on d2 (the highest read); d1 and d3 answer the new read cursor as from === to.
        assert.deepEqual(moves.map(brief), [
          [a, d1, 0, 7, 6, 6],
          [a, d2, 0, 6, 0, 6],
          [a, d3, 0, 1, 6, 6],
          [b, d1, 0, 8, 0, 8],
        ]);
        for (const m of moves) {
          assert.equal(m.kind, "direct");
          assert.deepEqual(m.memberIds, [a, b]);
          assert.equal(m.memberCount, 2);
        }
        assert.equal((await store.getMembership(id, a))?.member.readSeq, 6);
        assert.equal((await store.getMembership(id, b))?.member.readSeq, 8);
      });

      it("moves each cursor once under concurrent batches: the answered moves chain without gaps or overlaps", async () => {
        const [a] = ids(1) as [string];
        const dev = randomUuid();
        const { conversation: g } = await group(a, []);
        const batches = await Promise.all(
          Array.from({ length: 10 }, (_, i) => store.advanceCursors([cur(a, dev, g.conversationId, i + 1, i + 1)])),
        );
        const moves = batches.flat().sort((x, y) => x.deliveredFrom - y.deliveredFrom);
        let at = 0;
        for (const m of moves) {
          assert.equal(m.deliveredFrom, at);
          assert.equal(m.readFrom, at);
          assert.ok(m.deliveredTo > at);
          at = m.deliveredTo;
        }
        assert.equal(at, 10);
      });

      it("counts receipts of one message over active members and pages its readers", async () => {
        const owner = randomUuid();
        const ms = ids(5) as [string, string, string, string, string];
        const { conversation: g, changeId } = await group(owner, ms);
        const id = g.conversationId;
        await store.markPublished(id, changeId, 1, [], T0);
        await store.advanceCursors([
          cur(ms[0], randomUuid(), id, 10, 10), // read 10
          cur(ms[1], randomUuid(), id, 10, 4), // received 10, read 4
          cur(ms[2], randomUuid(), id, 6, 0), // received 6
          cur(ms[2], randomUuid(), id, 0, 0),
        ]);
        await store.advanceReadCursors([{ userId: ms[3], conversationId: id, seq: 8 }]); // read 8, no device reported
        await store.advanceCursors([cur(owner, randomUuid(), id, 10, 10)]);
        const at = async (seq: number) => {
          const r = await store.getReceipts(id, seq);
          return r && [r.memberCount, r.deliveredCount, r.readCount, r.readerIds];
        };
        assert.deepEqual(await at(4), [6, 5, 4, []]);
        assert.deepEqual(await at(6), [6, 5, 3, []]);
        assert.deepEqual(await at(7), [6, 4, 3, []]);
        assert.deepEqual(await at(9), [6, 3, 2, []]);
        assert.deepEqual(await at(11), [6, 0, 0, []]);
        // Who left is no longer counted.
        const leave = change();
        await store.mutateGroup(id, async (tx) => {
          await tx.leave([ms[0]]);
          await tx.recordChange(leave);
        });
        await store.markPublished(id, leave.changeId, 11, [ms[0]], T0);
        assert.deepEqual(await at(9), [5, 2, 1, []]);

        const readers = [ms[1], ms[3], owner].sort();
        assert.deepEqual((await store.getReceipts(id, 4, { afterUserId: "", limit: 10 }))?.readerIds, readers);
        assert.deepEqual((await store.getReceipts(id, 4, { afterUserId: "", limit: 2 }))?.readerIds, readers.slice(0, 2));
        assert.deepEqual((await store.getReceipts(id, 4, { afterUserId: readers[1]!, limit: 2 }))?.readerIds, readers.slice(2));
        assert.deepEqual((await store.getReceipts(id, 4, { afterUserId: readers[2]!, limit: 2 }))?.readerIds, []);

        assert.equal(await store.getReceipts(randomUuid(), 1), undefined);
        await store.mutateGroup(id, (tx) => tx.markDeleted(T0));
        assert.equal(await store.getReceipts(id, 1), undefined);
      });

      it("counts receipts in a group of 2,000 members after batches of 1,000 cursors", async () => {
        const owner = randomUuid();
        const first = ids(999);
        const { conversation: g } = await group(owner, first);
        const id = g.conversationId;
        const more = ids(1000);
        await store.mutateGroup(id, (tx) => tx.addMembers(more, T0));
        const everyone = [owner, ...first, ...more];
        // Member i received up to (i % 20) + 1 and read up to i % 10.
        for (let i = 0; i < everyone.length; i += 1000) {
          const batch = everyone.slice(i, i + 1000).map((u, j) => cur(u, randomUuid(), id, ((i + j) % 20) + 1, (i + j) % 10));
          const moves = await store.advanceCursors(batch);
          assert.equal(moves.length, batch.length);
          assert.ok(moves.every((m) => m.memberCount === 2000));
        }
        const r = await store.getReceipts(id, 5);
        // Delivered ≥ 5: (i % 20) ≥ 4 → 16 of 20; read ≥ 5: (i % 10) ≥ 5 → 5 of 10.
        assert.deepEqual(r && [r.memberCount, r.deliveredCount, r.readCount], [2000, 1600, 1000]);
        assert.equal((await store.getReceipts(id, 5, { afterUserId: "", limit: 1000 }))?.readerIds.length, 1000);
      });
    });

    describe("push candidates", () => {
      const cur = (userId: string, conversationId: string, d: number, r: number): DeviceCursor => ({
        userId,
        deviceId: randomUuid(),
        conversationId,
        deliveredSeq: d,
        readSeq: r,
        maxSeq: 100,
      });
      const users = (c: { candidates: { userId: string }[] } | undefined) => c?.candidates.map((x) => x.userId);

      it("lists active, unmuted members that neither received nor read up to seq, paged by user id", async () => {
        const owner = randomUuid();
        const [got, readIt, muted, behind, leaver, fresh] = ids(6) as [string, string, string, string, string, string];
        const { conversation: g, changeId } = await group(owner, [got, readIt, muted, behind, leaver, fresh]);
        const id = g.conversationId;
        await store.markPublished(id, changeId, 1, [], T0);
        await store.advanceCursors([cur(got, id, 9, 0), cur(behind, id, 4, 3), cur(muted, id, 2, 0)]);
        await store.advanceReadCursors([{ userId: readIt, conversationId: id, seq: 9 }]);
        await store.setMuted(id, muted, true);
        await store.mutateGroup(id, (tx) => tx.leave([leaver]));
        const all = await store.listPushCandidates(id, 9, { excludeUserIds: [owner], afterUserId: "", limit: 100 });
        assert.deepEqual([all?.kind, all?.name], ["group", "team"]);
        assert.deepEqual(users(all), [behind, fresh].sort());
        const behindRow = all?.candidates.find((c) => c.userId === behind);
        assert.deepEqual(behindRow && [behindRow.deliveredSeq, behindRow.readSeq], [4, 3]);
        // At seq 5 the one who received 9 is not asked, the one who received 4 is; at 4, not.
        assert.deepEqual(users(await store.listPushCandidates(id, 4, { excludeUserIds: [], afterUserId: "", limit: 100 })), [owner, fresh].sort());
        assert.deepEqual(users(await store.listPushCandidates(id, 5, { excludeUserIds: [], afterUserId: "", limit: 100 })), [owner, behind, fresh].sort());
        // Paging and filtering.
        const sorted = [owner, behind, fresh].sort();
        assert.deepEqual(users(await store.listPushCandidates(id, 9, { excludeUserIds: [], afterUserId: "", limit: 2 })), sorted.slice(0, 2));
        assert.deepEqual(users(await store.listPushCandidates(id, 9, { excludeUserIds: [], afterUserId: sorted[1]!, limit: 2 })), sorted.slice(2));
        assert.deepEqual(users(await store.listPushCandidates(id, 9, { userIds: [fresh, got, randomUuid()], excludeUserIds: [], afterUserId: "", limit: 100 })), [fresh]);
        // A direct conversation: the peer, until their device received the message.
        const d = await direct(owner, fresh);
        const dq = { excludeUserIds: [owner], afterUserId: "", limit: 10 };
        const peer = await store.listPushCandidates(d.conversation.conversationId, 3, dq);
        assert.deepEqual([peer?.kind, users(peer)], ["direct", [fresh]]);
        await store.advanceCursors([cur(fresh, d.conversation.conversationId, 3, 0)]);
        assert.deepEqual(users(await store.listPushCandidates(d.conversation.conversationId, 3, dq)), []);
        // Unknown and deleted conversations have none.
        assert.equal(await store.listPushCandidates(randomUuid(), 1, { excludeUserIds: [], afterUserId: "", limit: 10 }), undefined);
        await store.mutateGroup(id, (tx) => tx.markDeleted(T0));
        assert.equal(await store.listPushCandidates(id, 9, { excludeUserIds: [], afterUserId: "", limit: 10 }), undefined);
      });
    });

    describe("change outbox", () => {
      it("keeps a conversation's changes in commit order until published", async () => {
        const owner = randomUuid();
        const { conversation: g, changeId: first } = await group(owner, []);
        const later: string[] = [];
        for (let i = 0; i < 3; i++) {
          const c = change(T0, new Uint8Array([i]));
          later.push(c.changeId);
          await store.mutateGroup(g.conversationId, (tx) => tx.recordChange(c));
        }
        assert.deepEqual((await store.pendingChanges(g.conversationId, 10)).map((p) => p.changeId), [first, ...later]);
        assert.deepEqual((await store.pendingChanges(g.conversationId, 2)).map((p) => p.changeId), [first, later[0]]);
        assert.ok((await store.conversationsWithPendingChanges(10_000)).includes(g.conversationId));
        await store.markPublished(g.conversationId, first, 1, [], T0);
        assert.deepEqual((await store.pendingChanges(g.conversationId, 10)).map((p) => p.changeId), later);
        for (const id of later) await store.markPublished(g.conversationId, id, 0, [], T0);
        assert.deepEqual(await store.pendingChanges(g.conversationId, 10), []);
        assert.ok(!(await store.conversationsWithPendingChanges(10_000)).includes(g.conversationId));
      });

      it("sets left_seq on publication for the users who left with the change, once", async () => {
        const owner = randomUuid();
        const [m1, m2, m3] = ids(3) as [string, string, string];
        const { conversation: g, changeId: created } = await group(owner, [m1, m2, m3]);
        await store.markPublished(g.conversationId, created, 1, [], T0);
        const leave = change();
        await store.mutateGroup(g.conversationId, async (tx) => {
          await tx.leave([m1, m2]);
          await tx.recordChange(leave);
        });
        await store.markPublished(g.conversationId, leave.changeId, 42, [m1, m3], T0);
        assert.equal((await store.getMembership(g.conversationId, m1))?.member.leftSeq, 42);
        assert.equal((await store.getMembership(g.conversationId, m2))?.member.leftSeq, 0, "not named in the change");
        assert.equal((await store.getMembership(g.conversationId, m3))?.member.leftSeq, 0, "still active");
        await store.markPublished(g.conversationId, leave.changeId, 50, "all", T0);
        assert.equal((await store.getMembership(g.conversationId, m1))?.member.leftSeq, 42, "never moved once set");
        assert.equal((await store.getMembership(g.conversationId, m2))?.member.leftSeq, 50);
        assert.equal((await store.getMembership(g.conversationId, m3))?.member.state, "active");
      });

      it("counts members without reading them: a large group stays consistent", async () => {
        const owner = randomUuid();
        const { conversation: g } = await group(owner, ids(1000));
        const more = ids(1000);
        await store.mutateGroup(g.conversationId, (tx) => tx.addMembers(more, T0));
        await store.mutateGroup(g.conversationId, (tx) => tx.leave(more.slice(0, 10)));
        const now: Conversation | undefined = await store.get(g.conversationId);
        assert.equal(now?.memberCount, 1991);
        assert.equal((await store.checkMembers(g.conversationId, more.slice(0, 20)))?.allowed.length, 10);
      });
    });
  });
}
