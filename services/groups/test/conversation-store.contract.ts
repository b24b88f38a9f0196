import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { directConversationId, randomUuid } from "../../../lib/ids.js";
import type { ConversationStore } from "../src/conversation-store.js";
import type { ChangeRecord, Conversation } from "../src/model.js";

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
