import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { ConversationEventSchema, Role as ClientRole, type ConversationEvent } from "../../../gen/parley/client/v1/types_pb.js";
import {
  ConversationKind,
  GroupsService,
  MemberState,
  Role,
  type Conversation,
} from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { RouterService, type ApplyConversationChangeRequest } from "../../../gen/parley/router/v1/router_service_pb.js";
import { directConversationId, randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { realBackend } from "../../../lib/testing/backends.js";
import type { Sql, SqlExecutor } from "../../../lib/sql.js";
import { loadConfig } from "../src/config.js";
import { GroupsContext } from "../src/context.js";
import { groupsRoutes } from "../src/routes.js";

const CAP = 6;

async function rejectsWith(p: Promise<unknown>, code: Code, message?: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    const ce = ConnectError.from(e);
    assert.equal(Code[ce.code], Code[code], ce.message);
    if (message) assert.match(ce.rawMessage, message);
    return true;
  });
}

/**
 * A RouterService of our own: records ApplyConversationChange calls, answers increasing
 * seqs per conversation (0 without event), and fails the next `failNext` calls.
 */
class FakeRouter {
  readonly attempts: ApplyConversationChangeRequest[] = [];
  readonly applied: ApplyConversationChangeRequest[] = [];
  readonly seqs = new Map<string, bigint>();
  failNext = 0;
  private waiters: (() => void)[] = [];

  readonly transport = inProcess((router) =>
    router.service(RouterService, {
      applyConversationChange: async (req) => {
        this.attempts.push(req);
        if (this.failNext > 0) {
          this.failNext--;
          throw new ConnectError("router down", Code.Unavailable);
        }
        let seq = 0n;
        if (!this.applied.some((a) => a.changeId === req.changeId) && req.event.length > 0) {
          seq = (this.seqs.get(req.conversationId) ?? 0n) + 1n;
          this.seqs.set(req.conversationId, seq);
        }
        this.applied.push(req);
        for (const w of this.waiters.splice(0)) w();
        return { seq };
      },
    }),
  );

  of(conversationId: string): ApplyConversationChangeRequest[] {
    return this.applied.filter((a) => a.conversationId === conversationId);
  }

  events(conversationId: string): ConversationEvent["kind"][] {
    return this.of(conversationId).map((a) => fromBinary(ConversationEventSchema, a.event).kind);
  }

  /** Waits (with a deadline) until a change satisfying `pred` was applied. */
  async waitFor(pred: (a: ApplyConversationChangeRequest) => boolean, ms = 5000): Promise<ApplyConversationChangeRequest> {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.applied.find(pred);
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("change not applied before the deadline");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

describeGroupsService("PGlite (embedded)", () => openPglite());
const postgresUrl = realBackend("postgres");
if (postgresUrl) {
  // A schema of this file's own on the shared server; closing drops it.
  describeGroupsService("Postgres (real server)", () => openPostgresInNewSchema(postgresUrl, "parley_test_groups_svc"));
}

/**
 * The statements `sql` runs, recorded into `log` (inside transactions too), except the
 * outbox's (its background loop polls on its own schedule).
 */
function recording(sql: Sql, log: string[]): Sql {
  const record = (q: SqlExecutor): SqlExecutor => ({
    query<R>(text: string, params?: readonly unknown[]) {
      if (!/conversation_changes/.test(text)) log.push(text);
      return q.query<R>(text, params);
    },
  });
  return {
    ...record(sql),
    transaction: (fn) => sql.transaction((tx) => fn(record(tx))),
    exec: (text) => sql.exec(text),
    close: () => sql.close(),
  };
}

function describeGroupsService(backend: string, openSql: () => Promise<Sql>) {
  describe(`GroupsService on ${backend}`, () => {
    let sql: Sql;
    let ctx: GroupsContext;
    let client: Client<typeof GroupsService>;
    let router: FakeRouter;
    /** Every statement the service ran (but the outbox's); tests clear it and look. */
    const statements: string[] = [];

    before(async () => {
      sql = await openSql();
      router = new FakeRouter();
      const cfg = loadConfig({ PARLEY_GROUP_MEMBER_CAP: String(CAP), PARLEY_GROUPS_OUTBOX_INTERVAL_MS: "10" });
      ctx = await GroupsContext.fromConfig(cfg, {
        sql: recording(sql, statements),
        router: router.transport,
        logger: createLogger("groups", "silent"),
      });
      client = createClient(GroupsService, inProcess(groupsRoutes(ctx)));
    });
    after(async () => {
      await ctx.close();
      await sql.close();
    });
    beforeEach(() => {
      router.failNext = 0;
    });

    async function newGroup(owner: string, members: string[] = [], name = "team"): Promise<Conversation> {
      const { conversation } = await client.createGroup({ actorId: owner, name, memberIds: members });
      assert.ok(conversation);
      return conversation;
    }

    async function membership(conversationId: string, userId: string) {
      return (await client.getMembership({ conversationId, userId })).member;
    }

    describe("direct conversations and blocks", () => {
      it("opens the same direct conversation from both sides", async () => {
        const [a, b] = [randomUuid(), randomUuid()];
        const fromA = await client.getOrCreateDirectConversation({ userId: a, peerUserId: b });
        const fromB = await client.getOrCreateDirectConversation({ userId: b, peerUserId: a });
        assert.equal(fromA.created, true);
        assert.equal(fromB.created, false);
        assert.equal(fromA.conversation?.conversationId, directConversationId(a, b));
        assert.equal(fromB.conversation?.conversationId, fromA.conversation?.conversationId);
        assert.equal(fromA.conversation?.kind, ConversationKind.DIRECT);
        assert.equal(fromA.conversation?.memberCount, 2);
        const got = await client.getConversation({ conversationId: directConversationId(a, b) });
        assert.deepEqual([...(got.conversation?.memberIds ?? [])].sort(), [a, b].sort());
        const listed = await client.listUserConversations({ userId: b });
        assert.deepEqual(
          listed.conversations.map((c) => c.conversation?.conversationId),
          [directConversationId(a, b)],
        );
        assert.equal(listed.conversations[0]?.member?.userId, b);
        assert.equal(listed.conversations[0]?.member?.state, MemberState.ACTIVE);
        const check = await client.checkMembers({ conversationId: directConversationId(a, b), userIds: [a, b, randomUuid()] });
        assert.deepEqual([...check.allowedUserIds].sort(), [a, b].sort());
      });

      it("rejects bad input with InvalidArgument and unknown conversations with NotFound", async () => {
        const a = randomUuid();
        await rejectsWith(client.getOrCreateDirectConversation({ userId: a, peerUserId: a }), Code.InvalidArgument);
        await rejectsWith(client.getOrCreateDirectConversation({ userId: "nope", peerUserId: a }), Code.InvalidArgument);
        await rejectsWith(client.getOrCreateDirectConversation({ userId: a, peerUserId: "" }), Code.InvalidArgument);
        await rejectsWith(client.getConversation({ conversationId: "x" }), Code.InvalidArgument);
        await rejectsWith(client.getConversation({ conversationId: randomUuid() }), Code.NotFound);
        await rejectsWith(client.listUserConversations({ userId: "A" }), Code.InvalidArgument);
        await rejectsWith(client.checkMembers({ conversationId: randomUuid(), userIds: [a] }), Code.NotFound);
        await rejectsWith(client.checkMembers({ conversationId: randomUuid(), userIds: [a, a] }), Code.InvalidArgument);
        await rejectsWith(
          client.checkMembers({ conversationId: randomUuid(), userIds: Array.from({ length: 1001 }, () => randomUuid()) }),
          Code.InvalidArgument,
        );
        await rejectsWith(client.getMembership({ conversationId: randomUuid(), userId: a }), Code.NotFound);
        await rejectsWith(client.getMembership({ conversationId: randomUuid(), userId: "a" }), Code.InvalidArgument);
      });

      it("lists push candidates over RPC, paged, and rejects bad input", async () => {
        const [a, b] = [randomUuid(), randomUuid()];
        const id = (await client.getOrCreateDirectConversation({ userId: a, peerUserId: b })).conversation!.conversationId;
        const got = await client.listPushCandidates({ conversationId: id, seq: 1n, excludeUserIds: [a], limit: 1 });
        assert.deepEqual([got.kind, got.candidates.map((c) => c.userId), got.nextAfterUserId], [ConversationKind.DIRECT, [b], ""]);
        const both = await client.listPushCandidates({ conversationId: id, seq: 1n, limit: 1 });
        assert.equal(both.candidates.length, 1);
        assert.equal(both.nextAfterUserId, both.candidates[0]!.userId, "a full page names where the next one starts");
        assert.deepEqual((await client.listPushCandidates({ conversationId: randomUuid(), seq: 1n })).candidates, []);
        await rejectsWith(client.listPushCandidates({ conversationId: id, seq: 0n }), Code.InvalidArgument);
        await rejectsWith(client.listPushCandidates({ conversationId: "x", seq: 1n }), Code.InvalidArgument);
        await rejectsWith(client.listPushCandidates({ conversationId: id, seq: 1n, userIds: ["u"] }), Code.InvalidArgument);
        await rejectsWith(
          client.listPushCandidates({ conversationId: id, seq: 1n, userIds: Array.from({ length: 1001 }, () => randomUuid()) }),
          Code.InvalidArgument,
        );
        await rejectsWith(client.listPushCandidates({ conversationId: id, seq: 1n, limit: 1001 }), Code.InvalidArgument);
      });

      it("blocks either way: no new 1:1, an existing one is read-only for both; the pair's change is published without event", async () => {
        const [a, b, c] = [randomUuid(), randomUuid(), randomUuid()];
        await client.blockUser({ userId: a, blockedUserId: b });
        const ab = directConversationId(a, b);
        const change = await router.waitFor((x) => x.conversationId === ab);
        assert.equal(change.event.length, 0, "a block carries no event");
        assert.equal(change.actorId, a);
        await rejectsWith(client.getOrCreateDirectConversation({ userId: a, peerUserId: b }), Code.PermissionDenied);
        await rejectsWith(client.getOrCreateDirectConversation({ userId: b, peerUserId: a }), Code.PermissionDenied);
        await rejectsWith(client.getConversation({ conversationId: ab }), Code.NotFound);

        const ac = directConversationId(a, c);
        const before = (await client.getOrCreateDirectConversation({ userId: a, peerUserId: c })).conversation!;
        await client.blockUser({ userId: c, blockedUserId: a });
        await client.blockUser({ userId: c, blockedUserId: a }); // idempotent
        const existing = await client.getOrCreateDirectConversation({ userId: a, peerUserId: c });
        assert.equal(existing.created, false);
        assert.deepEqual([...existing.conversation!.blockedUserIds].sort(), [a, c].sort());
        assert.equal(existing.conversation!.version, before.version + 1n);
        assert.deepEqual((await client.checkMembers({ conversationId: ac, userIds: [a, c] })).allowedUserIds, []);
        assert.equal(router.of(ac).length, 1, "the repeated block changed nothing");

        assert.deepEqual((await client.listBlockedUsers({ userId: a })).userIds, [b]);
        assert.deepEqual((await client.listBlockedUsers({ userId: c })).userIds, [a]);
        await client.unblockUser({ userId: c, blockedUserId: a });
        await client.unblockUser({ userId: c, blockedUserId: a });
        assert.equal(router.of(ac).length, 2);
        assert.deepEqual((await client.listBlockedUsers({ userId: c })).userIds, []);
        assert.deepEqual([...(await client.checkMembers({ conversationId: ac, userIds: [a, c] })).allowedUserIds].sort(), [a, c].sort());
        await client.unblockUser({ userId: a, blockedUserId: b });
        assert.equal((await client.getOrCreateDirectConversation({ userId: b, peerUserId: a })).created, true);

        await rejectsWith(client.blockUser({ userId: a, blockedUserId: a }), Code.InvalidArgument);
        await rejectsWith(client.blockUser({ userId: a, blockedUserId: "b" }), Code.InvalidArgument);
        await rejectsWith(client.unblockUser({ userId: "a", blockedUserId: b }), Code.InvalidArgument);
        await rejectsWith(client.listBlockedUsers({ userId: "" }), Code.InvalidArgument);
      });

      it("refuses to manage direct conversations (after the membership check)", async () => {
        const [a, b, x] = [randomUuid(), randomUuid(), randomUuid()];
        const id = (await client.getOrCreateDirectConversation({ userId: a, peerUserId: b })).conversation!.conversationId;
        await rejectsWith(client.addMembers({ actorId: a, conversationId: id, userIds: [x] }), Code.FailedPrecondition);
        await rejectsWith(client.updateGroup({ actorId: a, conversationId: id, name: "x" }), Code.FailedPrecondition);
        await rejectsWith(client.removeMember({ actorId: a, conversationId: id, userId: b }), Code.FailedPrecondition);
        await rejectsWith(client.deleteGroup({ actorId: a, conversationId: id }), Code.FailedPrecondition);
        await rejectsWith(client.addMembers({ actorId: x, conversationId: id, userIds: [x] }), Code.PermissionDenied);
      });
    });

    describe("creating and reading groups", () => {
      it("creates a group: owner, members, GroupCreated published to the router", async () => {
        const [owner, m1, m2] = [randomUuid(), randomUuid(), randomUuid()];
        const { conversation } = await client.createGroup({ actorId: owner, name: "Ops", topic: "on call", memberIds: [m1, m2] });
        const g = conversation!;
        assert.equal(g.kind, ConversationKind.GROUP);
        assert.equal(g.name, "Ops");
        assert.equal(g.topic, "on call");
        assert.equal(g.createdBy, owner);
        assert.equal(g.memberCount, 3);
        assert.deepEqual(g.memberIds, []);
        // Published before the RPC answered.
        const [created] = router.of(g.conversationId);
        assert.ok(created);
        assert.equal(created.actorId, owner);
        assert.deepEqual(created.joinedUserIds, [owner, m1, m2]);
        const event = fromBinary(ConversationEventSchema, created.event);
        assert.equal(event.kind.case, "groupCreated");
        assert.deepEqual(event.kind.value, { ...event.kind.value, name: "Ops", topic: "on call", memberIds: [owner, m1, m2] });
        assert.equal((await membership(g.conversationId, owner))?.role, Role.OWNER);
        assert.equal((await membership(g.conversationId, m1))?.role, Role.MEMBER);
        assert.deepEqual((await client.getConversation({ conversationId: g.conversationId })).conversation, g);
        const check = await client.checkMembers({ conversationId: g.conversationId, userIds: [m1, randomUuid(), owner] });
        assert.deepEqual([...check.allowedUserIds].sort(), [m1, owner].sort());
        assert.equal(check.conversation?.memberCount, 3);
      });

      it("validates names, topics and initial members; nothing is created", async () => {
        const owner = randomUuid();
        const m = randomUuid();
        const bad = [
          { name: "" },
          { name: "   " },
          { name: "x".repeat(101) },
          { name: "ok", topic: "t".repeat(501) },
          { name: "ok", memberIds: [m, m] },
          { name: "ok", memberIds: [owner] },
          { name: "ok", memberIds: ["not-a-uuid"] },
        { name: "ok", memberIds: Array.from({ length: 1000 }, () => randomUuid()) },
        ];
        for (const req of bad) await rejectsWith(client.createGroup({ actorId: owner, ...req }), Code.InvalidArgument);
        await rejectsWith(client.createGroup({ actorId: "x", name: "ok" }), Code.InvalidArgument);
        await rejectsWith(
          client.createGroup({ actorId: owner, name: "big", memberIds: Array.from({ length: CAP }, () => randomUuid()) }),
          Code.ResourceExhausted,
        );
        assert.deepEqual((await client.listUserConversations({ userId: owner })).conversations, []);
        // Boundaries are accepted (characters, not UTF-16 units).
        const g = await newGroup(owner, Array.from({ length: CAP - 1 }, () => randomUuid()), "é".repeat(100));
        assert.equal(g.memberCount, CAP);
        await client.updateGroup({ actorId: owner, conversationId: g.conversationId, topic: "😀".repeat(500) });
      });

      it("lists a user's conversations with their membership and their groups for many users", async () => {
        const [owner, m1, m2] = [randomUuid(), randomUuid(), randomUuid()];
        const g1 = await newGroup(owner, [m1]);
        const g2 = await newGroup(m1, [m2, owner]);
        await client.getOrCreateDirectConversation({ userId: owner, peerUserId: m1 });
        const mine = await client.listUserConversations({ userId: owner });
        assert.equal(mine.conversations.length, 3);
        const inG2 = mine.conversations.find((c) => c.conversation?.conversationId === g2.conversationId);
        assert.equal(inG2?.member?.role, Role.MEMBER);
        const stranger = randomUuid();
        const res = await client.listUserGroupIds({ userIds: [owner, m2, stranger] });
        assert.deepEqual(
          res.users.map((u) => [u.userId, [...u.conversationIds].sort()]),
          [
            [owner, [g1.conversationId, g2.conversationId].sort()],
            [m2, [g2.conversationId]],
            [stranger, []],
          ],
        );
        await rejectsWith(client.listUserGroupIds({ userIds: ["x"] }), Code.InvalidArgument);
        await rejectsWith(
          client.listUserGroupIds({ userIds: Array.from({ length: 10_001 }, () => randomUuid()) }),
          Code.InvalidArgument,
        );
      });

      it("lists active members in pages, for active members only", async () => {
        const owner = randomUuid();
        const members = Array.from({ length: 4 }, () => randomUuid());
        const g = await newGroup(owner, members);
        const all = [owner, ...members].sort();
        const p1 = await client.listMembers({ actorId: members[0]!, conversationId: g.conversationId, limit: 2 });
        assert.deepEqual(p1.members.map((m) => m.userId), all.slice(0, 2));
        assert.equal(p1.nextAfterUserId, all[1]);
        const p2 = await client.listMembers({ actorId: owner, conversationId: g.conversationId, afterUserId: p1.nextAfterUserId, limit: 2 });
        assert.deepEqual(p2.members.map((m) => m.userId), all.slice(2, 4));
        const p3 = await client.listMembers({ actorId: owner, conversationId: g.conversationId, afterUserId: p2.nextAfterUserId });
        assert.deepEqual(p3.members.map((m) => m.userId), all.slice(4));
        assert.equal(p3.nextAfterUserId, "");
        assert.equal(p3.members[0]!.state, MemberState.ACTIVE);
        await rejectsWith(client.listMembers({ actorId: randomUuid(), conversationId: g.conversationId }), Code.PermissionDenied);
        await rejectsWith(client.listMembers({ actorId: owner, conversationId: randomUuid() }), Code.PermissionDenied);
        await rejectsWith(client.listMembers({ actorId: owner, conversationId: g.conversationId, limit: 1001 }), Code.InvalidArgument);
        await rejectsWith(client.listMembers({ actorId: owner, conversationId: g.conversationId, afterUserId: "z" }), Code.InvalidArgument);
        await client.removeMember({ actorId: members[0]!, conversationId: g.conversationId, userId: members[0]! });
        await rejectsWith(client.listMembers({ actorId: members[0]!, conversationId: g.conversationId }), Code.PermissionDenied);
        const after = await client.listMembers({ actorId: owner, conversationId: g.conversationId });
        assert.ok(!after.members.some((m) => m.userId === members[0]));
      });
    });

    describe("managing groups", () => {
      it("answers unknown, deleted and not-a-member alike (no oracle)", async () => {
        const [owner, x] = [randomUuid(), randomUuid()];
        const g = await newGroup(owner);
        const gone = await newGroup(owner);
        await client.deleteGroup({ actorId: owner, conversationId: gone.conversationId });
        const messages = new Set<string>();
        for (const [actor, id] of [
          [x, g.conversationId],
          [owner, randomUuid()],
          [owner, gone.conversationId],
        ] as const) {
          for (const call of [
            () => client.updateGroup({ actorId: actor, conversationId: id, name: "n" }),
            () => client.addMembers({ actorId: actor, conversationId: id, userIds: [randomUuid()] }),
            () => client.removeMember({ actorId: actor, conversationId: id, userId: randomUuid() }),
            () => client.setMemberRole({ actorId: actor, conversationId: id, userId: randomUuid(), role: Role.ADMIN }),
            () => client.deleteGroup({ actorId: actor, conversationId: id }),
            () => client.listMembers({ actorId: actor, conversationId: id }),
          ]) {
            await assert.rejects(call(), (e: unknown) => {
              const ce = ConnectError.from(e);
              assert.equal(ce.code, Code.PermissionDenied);
              messages.add(ce.rawMessage);
              return true;
            });
          }
        }
        assert.equal(messages.size, 1, [...messages].join(" | "));
      });

      it("updates name and topic (owners and admins), publishing GroupUpdated", async () => {
        const [owner, admin, member] = [randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, [admin, member]);
        await client.setMemberRole({ actorId: owner, conversationId: g.conversationId, userId: admin, role: Role.ADMIN });
        const byAdmin = await client.updateGroup({ actorId: admin, conversationId: g.conversationId, name: "New name" });
        assert.equal(byAdmin.conversation?.name, "New name");
        assert.ok(byAdmin.conversation!.version > g.version);
        const byOwner = await client.updateGroup({ actorId: owner, conversationId: g.conversationId, topic: "topic!" });
        assert.equal(byOwner.conversation?.name, "New name");
        assert.equal(byOwner.conversation?.topic, "topic!");
        const last = router.events(g.conversationId).at(-1);
        assert.equal(last?.case, "groupUpdated");
        assert.equal(last?.value.name, "New name");
        assert.equal(last?.value.topic, "topic!");
        await rejectsWith(client.updateGroup({ actorId: member, conversationId: g.conversationId, name: "mine" }), Code.PermissionDenied, /requires admin/);
        await rejectsWith(client.updateGroup({ actorId: owner, conversationId: g.conversationId }), Code.InvalidArgument);
        await rejectsWith(client.updateGroup({ actorId: owner, conversationId: g.conversationId, name: "" }), Code.InvalidArgument);
        await rejectsWith(client.updateGroup({ actorId: owner, conversationId: g.conversationId, name: "n".repeat(101) }), Code.InvalidArgument);
        await rejectsWith(client.updateGroup({ actorId: owner, conversationId: g.conversationId, topic: "t".repeat(501) }), Code.InvalidArgument);
        assert.equal((await client.getConversation({ conversationId: g.conversationId })).conversation?.name, "New name");
      });

      it("adds members all or nothing: already a member, duplicates, over the cap, wrong role", async () => {
        const [owner, admin, member] = [randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, [admin, member]);
        const id = g.conversationId;
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: admin, role: Role.ADMIN });
        const n1 = randomUuid();
        const added = await client.addMembers({ actorId: admin, conversationId: id, userIds: [n1] });
        assert.equal(added.conversation?.memberCount, 4);
        const ev = router.events(id).at(-1);
        assert.equal(ev?.case, "membersAdded");
        assert.deepEqual(ev?.value.userIds, [n1]);
        assert.deepEqual(router.of(id).at(-1)?.joinedUserIds, [n1]);
        const version = added.conversation!.version;
        const fresh = randomUuid();

        await rejectsWith(client.addMembers({ actorId: owner, conversationId: id, userIds: [fresh, owner] }), Code.AlreadyExists);
        await rejectsWith(client.addMembers({ actorId: owner, conversationId: id, userIds: [fresh, n1] }), Code.AlreadyExists);
        await rejectsWith(client.addMembers({ actorId: owner, conversationId: id, userIds: [fresh, fresh] }), Code.InvalidArgument);
        await rejectsWith(client.addMembers({ actorId: owner, conversationId: id, userIds: [] }), Code.InvalidArgument);
        await rejectsWith(
          client.addMembers({ actorId: owner, conversationId: id, userIds: Array.from({ length: 1001 }, () => randomUuid()) }),
          Code.InvalidArgument,
        );
        await rejectsWith(
          client.addMembers({ actorId: owner, conversationId: id, userIds: [fresh, randomUuid(), randomUuid()] }),
          Code.ResourceExhausted,
        );
        await rejectsWith(client.addMembers({ actorId: member, conversationId: id, userIds: [fresh] }), Code.PermissionDenied, /requires admin/);
        // Nothing changed.
        const now = (await client.getConversation({ conversationId: id })).conversation!;
        assert.equal(now.version, version);
        assert.equal(now.memberCount, 4);
        await rejectsWith(client.getMembership({ conversationId: id, userId: fresh }), Code.NotFound);

        // Exactly up to the cap, concurrently: the cap holds.
        const racers = Array.from({ length: 6 }, () => randomUuid());
        const results = await Promise.allSettled(racers.map((u) => client.addMembers({ actorId: owner, conversationId: id, userIds: [u] })));
        assert.equal(results.filter((r) => r.status === "fulfilled").length, CAP - 4);
        for (const r of results) {
          if (r.status === "rejected") assert.equal(ConnectError.from(r.reason).code, Code.ResourceExhausted);
        }
        assert.equal((await client.getConversation({ conversationId: id })).conversation?.memberCount, CAP);
      });

      it("leaving and removing: roles decide; the removed member keeps history up to left_seq only", async () => {
        const [owner, admin, admin2, m1, m2] = Array.from({ length: 5 }, () => randomUuid()) as [string, string, string, string, string];
        const g = await newGroup(owner, [admin, admin2, m1, m2]);
        const id = g.conversationId;
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: admin, role: Role.ADMIN });
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: admin2, role: Role.ADMIN });

        await rejectsWith(client.removeMember({ actorId: m1, conversationId: id, userId: m2 }), Code.PermissionDenied, /requires admin/);
        await rejectsWith(client.removeMember({ actorId: admin, conversationId: id, userId: admin2 }), Code.PermissionDenied, /requires owner/);
        await rejectsWith(client.removeMember({ actorId: admin, conversationId: id, userId: owner }), Code.PermissionDenied, /requires owner/);
        await rejectsWith(client.removeMember({ actorId: owner, conversationId: id, userId: owner }), Code.FailedPrecondition);
        await rejectsWith(client.removeMember({ actorId: owner, conversationId: id, userId: randomUuid() }), Code.NotFound);
        await rejectsWith(client.removeMember({ actorId: owner, conversationId: id, userId: "u" }), Code.InvalidArgument);

        await client.removeMember({ actorId: admin, conversationId: id, userId: m1 });
        const removed = router.of(id).at(-1)!;
        assert.deepEqual(removed.leftUserIds, [m1]);
        assert.equal(removed.actorId, admin);
        const ev = fromBinary(ConversationEventSchema, removed.event).kind;
        assert.equal(ev.case, "memberRemoved");
        assert.equal(ev.value.userId, m1);
        // Published before the answer: left_seq is the seq the router gave the event.
        const left = (await client.getMembership({ conversationId: id, userId: m1 })).member!;
        assert.equal(left.state, MemberState.LEFT);
        assert.equal(left.leftSeq, router.seqs.get(id));
        assert.ok(left.leftSeq > 0n);
        assert.deepEqual((await client.checkMembers({ conversationId: id, userIds: [m1] })).allowedUserIds, []);
        await rejectsWith(client.listMembers({ actorId: m1, conversationId: id }), Code.PermissionDenied);
        await rejectsWith(client.addMembers({ actorId: m1, conversationId: id, userIds: [randomUuid()] }), Code.PermissionDenied);
        await rejectsWith(client.removeMember({ actorId: owner, conversationId: id, userId: m1 }), Code.NotFound);
        const listed = await client.listUserConversations({ userId: m1 });
        assert.equal(listed.conversations[0]?.member?.state, MemberState.LEFT);
        assert.deepEqual((await client.listUserGroupIds({ userIds: [m1] })).users[0]?.conversationIds, []);

        await client.removeMember({ actorId: m2, conversationId: id, userId: m2 });
        const leftEv = fromBinary(ConversationEventSchema, router.of(id).at(-1)!.event).kind;
        assert.equal(leftEv.case, "memberLeft");
        assert.equal(leftEv.value.userId, m2);
        await client.removeMember({ actorId: owner, conversationId: id, userId: admin2 });
        assert.equal((await membership(id, admin2))?.state, MemberState.LEFT);
        await client.removeMember({ actorId: admin, conversationId: id, userId: admin });
        assert.equal((await client.getConversation({ conversationId: id })).conversation?.memberCount, 1);

        // Re-adding a removed member makes them active again.
        await client.addMembers({ actorId: owner, conversationId: id, userIds: [m1] });
        const back = (await membership(id, m1))!;
        assert.equal(back.state, MemberState.ACTIVE);
        assert.equal(back.leftSeq, 0n);
        assert.equal(back.role, Role.MEMBER);
      });

      it("sets roles (owner only) and transfers ownership", async () => {
        const [owner, a, b] = [randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, [a, b]);
        const id = g.conversationId;
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: a, role: Role.ADMIN });
        const ev = router.events(id).at(-1);
        assert.equal(ev?.case, "roleChanged");
        assert.equal(ev?.value.userId, a);
        assert.equal(ev?.value.role, ClientRole.ADMIN);
        await rejectsWith(client.setMemberRole({ actorId: a, conversationId: id, userId: b, role: Role.ADMIN }), Code.PermissionDenied, /requires owner/);
        await rejectsWith(client.setMemberRole({ actorId: b, conversationId: id, userId: b, role: Role.ADMIN }), Code.PermissionDenied, /requires owner/);
        await rejectsWith(client.setMemberRole({ actorId: owner, conversationId: id, userId: b, role: Role.UNSPECIFIED }), Code.InvalidArgument);
        await rejectsWith(client.setMemberRole({ actorId: owner, conversationId: id, userId: owner, role: Role.MEMBER }), Code.FailedPrecondition);
        await rejectsWith(client.setMemberRole({ actorId: owner, conversationId: id, userId: randomUuid(), role: Role.ADMIN }), Code.NotFound);
        const count = router.of(id).length;
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: a, role: Role.ADMIN }); // unchanged: no change
        assert.equal(router.of(id).length, count);

        await client.setMemberRole({ actorId: owner, conversationId: id, userId: b, role: Role.OWNER });
        assert.equal((await membership(id, b))?.role, Role.OWNER);
        assert.equal((await membership(id, owner))?.role, Role.ADMIN);
        const transfer = router.events(id).at(-1);
        assert.equal(transfer?.case, "roleChanged");
        assert.equal(transfer?.value.role, ClientRole.OWNER);
        await rejectsWith(client.deleteGroup({ actorId: owner, conversationId: id }), Code.PermissionDenied, /requires owner/);
        // The old owner may now leave.
        await client.removeMember({ actorId: owner, conversationId: id, userId: owner });
      });

      it("deletes a group (owner only): it is gone for everyone, GroupDeleted is published", async () => {
        const [owner, admin, m] = [randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, [admin, m]);
        const id = g.conversationId;
        await client.setMemberRole({ actorId: owner, conversationId: id, userId: admin, role: Role.ADMIN });
        await rejectsWith(client.deleteGroup({ actorId: admin, conversationId: id }), Code.PermissionDenied, /requires owner/);
        await rejectsWith(client.deleteGroup({ actorId: m, conversationId: id }), Code.PermissionDenied, /requires owner/);
        await client.deleteGroup({ actorId: owner, conversationId: id });
        const deleted = router.of(id).at(-1)!;
        assert.equal(deleted.deleted, true);
        assert.equal(fromBinary(ConversationEventSchema, deleted.event).kind.case, "groupDeleted");
        await rejectsWith(client.getConversation({ conversationId: id }), Code.NotFound);
        await rejectsWith(client.getMembership({ conversationId: id, userId: m }), Code.NotFound);
        await rejectsWith(client.checkMembers({ conversationId: id, userIds: [m] }), Code.NotFound);
        assert.deepEqual((await client.listUserConversations({ userId: m })).conversations, []);
        assert.deepEqual((await client.listUserGroupIds({ userIds: [owner] })).users[0]?.conversationIds, []);
        await rejectsWith(client.deleteGroup({ actorId: owner, conversationId: id }), Code.PermissionDenied);
        await rejectsWith(client.setMuted({ userId: m, conversationId: id, muted: true }), Code.PermissionDenied);
      });
    });

    describe("per-member settings", () => {
      it("mutes and moves read cursors forward only, publishing nothing", async () => {
        const [owner, m, x] = [randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, [m]);
        const id = g.conversationId;
        const published = router.applied.length;
        await client.setMuted({ userId: m, conversationId: id, muted: true });
        assert.equal((await membership(id, m))?.muted, true);
        await client.setMuted({ userId: m, conversationId: id, muted: false });
        assert.equal((await membership(id, m))?.muted, false);
        await rejectsWith(client.setMuted({ userId: x, conversationId: id, muted: true }), Code.PermissionDenied);
        await rejectsWith(client.setMuted({ userId: m, conversationId: randomUuid(), muted: true }), Code.PermissionDenied);
        await rejectsWith(client.setMuted({ userId: "m", conversationId: id, muted: true }), Code.InvalidArgument);

        await client.advanceReadCursors({
          cursors: [
            { userId: m, conversationId: id, seq: 9n },
            { userId: owner, conversationId: id, seq: 3n },
            { userId: x, conversationId: id, seq: 50n },
          ],
        });
        await client.advanceReadCursors({ cursors: [{ userId: m, conversationId: id, seq: 2n }] });
        assert.equal((await membership(id, m))?.readSeq, 9n);
        assert.equal((await membership(id, owner))?.readSeq, 3n);
        await rejectsWith(client.getMembership({ conversationId: id, userId: x }), Code.NotFound);
        await rejectsWith(client.advanceReadCursors({ cursors: [{ userId: "x", conversationId: id, seq: 1n }] }), Code.InvalidArgument);
        await rejectsWith(
          client.advanceReadCursors({ cursors: Array.from({ length: 1001 }, () => ({ userId: m, conversationId: id, seq: 1n })) }),
          Code.InvalidArgument,
        );
        assert.equal(router.applied.length, published);
      });
    });

    describe("receipts", () => {
      const cursor = (userId: string, deviceId: string, conversationId: string, d: bigint, r: bigint, max = 100n) => ({
        userId,
        deviceId,
        conversationId,
        deliveredSeq: d,
        readSeq: r,
        maxSeq: max,
      });

      it("moves cursors and answers each move (from → to) with the conversation's kind, members and count", async () => {
        const [a, b, owner, m, x] = [randomUuid(), randomUuid(), randomUuid(), randomUuid(), randomUuid()];
        const [da, db, dm] = [randomUuid(), randomUuid(), randomUuid()];
        const dm1 = directConversationId(a, b);
        await client.getOrCreateDirectConversation({ userId: a, peerUserId: b });
        const g = await newGroup(owner, [m]);
        const published = router.applied.length;
        const { moves } = await client.advanceCursors({
          cursors: [
            cursor(a, da, dm1, 4n, 0n),
            cursor(b, db, dm1, 2n, 9n, 7n), // read cut to max_seq; a read is a delivery
            cursor(m, dm, g.conversationId, 3n, 1n),
            cursor(x, dm, g.conversationId, 3n, 3n), // not a member
          ],
        });
        assert.deepEqual(
          moves.map((mv) => [mv.userId, mv.deviceId, mv.conversationId, mv.deliveredFrom, mv.deliveredTo, mv.readFrom, mv.readTo]),
          [
            [a, da, dm1, 0n, 4n, 0n, 0n],
            [b, db, dm1, 0n, 7n, 0n, 7n],
            [m, dm, g.conversationId, 0n, 3n, 0n, 1n],
          ],
        );
        assert.deepEqual(
          moves.map((mv) => [mv.kind, [...mv.memberIds], mv.memberCount]),
          [
            [ConversationKind.DIRECT, [a, b].sort(), 2],
            [ConversationKind.DIRECT, [a, b].sort(), 2],
            [ConversationKind.GROUP, [], 2],
          ],
        );
        assert.equal((await membership(dm1, b))?.readSeq, 7n);
        // Never back.
        assert.deepEqual((await client.advanceCursors({ cursors: [cursor(b, db, dm1, 1n, 1n)] })).moves, []);
        assert.deepEqual((await client.advanceCursors({ cursors: [] })).moves, []);
        assert.equal(router.applied.length, published, "receipts publish no change");
      });

      it("rejects bad AdvanceCursors input with InvalidArgument and moves nothing", async () => {
        const [u, d] = [randomUuid(), randomUuid()];
        const g = await newGroup(u);
        const id = g.conversationId;
        for (const bad of [
          cursor("u", d, id, 1n, 1n),
          cursor(u, "", id, 1n, 1n),
          cursor(u, d, id.toUpperCase(), 1n, 1n),
          cursor(u, d, id, 1n << 60n, 1n),
        ]) {
          await rejectsWith(client.advanceCursors({ cursors: [cursor(u, d, id, 1n, 1n), bad] }), Code.InvalidArgument, /cursors\[1\]/);
        }
        await rejectsWith(
          client.advanceCursors({ cursors: Array.from({ length: 1001 }, () => cursor(u, d, id, 1n, 1n)) }),
          Code.InvalidArgument,
        );
        assert.equal((await membership(id, u))?.readSeq, 0n);
        const { moves } = await client.advanceCursors({ cursors: Array.from({ length: 1000 }, (_, i) => cursor(u, d, id, BigInt(i), 0n)) });
        // 1,000 is allowed: one device, one move, the highest report cut to max_seq (100).
        assert.deepEqual(moves.map((mv) => [mv.deliveredFrom, mv.deliveredTo]), [[0n, 100n]]);
      });

      it("answers receipts of a message: counts over active members, readers in pages; NotFound, InvalidArgument", async () => {
        const owner = randomUuid();
        const ms = [randomUuid(), randomUuid(), randomUuid(), randomUuid()];
        const g = await newGroup(owner, ms);
        const id = g.conversationId;
        await client.advanceCursors({
          cursors: [
            cursor(owner, randomUuid(), id, 5n, 5n),
            cursor(ms[0]!, randomUuid(), id, 5n, 3n),
            cursor(ms[1]!, randomUuid(), id, 0n, 6n),
            cursor(ms[2]!, randomUuid(), id, 2n, 0n),
          ],
        });
        const r = await client.getReceipts({ conversationId: id, seq: 5n });
        assert.deepEqual([r.memberCount, r.deliveredCount, r.readCount, r.readerIds, r.nextAfterUserId], [5, 3, 2, [], ""]);
        const readers = [owner, ms[1]!].sort();
        const page1 = await client.getReceipts({ conversationId: id, seq: 5n, includeReaders: true, limit: 1 });
        assert.deepEqual([page1.readerIds, page1.nextAfterUserId], [[readers[0]], readers[0]]);
        const page2 = await client.getReceipts({ conversationId: id, seq: 5n, includeReaders: true, limit: 1, afterUserId: readers[0]! });
        assert.deepEqual([page2.readerIds, page2.nextAfterUserId], [[readers[1]], ""]);
        const all = await client.getReceipts({ conversationId: id, seq: 1n, includeReaders: true });
        assert.deepEqual([all.readerIds, all.nextAfterUserId], [[owner, ms[0]!, ms[1]!].sort(), ""]);

        await rejectsWith(client.getReceipts({ conversationId: id, seq: 0n }), Code.InvalidArgument, /seq/);
        await rejectsWith(client.getReceipts({ conversationId: "x", seq: 1n }), Code.InvalidArgument, /conversation_id/);
        await rejectsWith(client.getReceipts({ conversationId: id, seq: 1n, limit: 1001 }), Code.InvalidArgument, /limit/);
        await rejectsWith(client.getReceipts({ conversationId: id, seq: 1n, afterUserId: "x" }), Code.InvalidArgument, /after_user_id/);
        await rejectsWith(client.getReceipts({ conversationId: randomUuid(), seq: 1n }), Code.NotFound);
        await client.deleteGroup({ actorId: owner, conversationId: id });
        await rejectsWith(client.getReceipts({ conversationId: id, seq: 1n }), Code.NotFound);
      });

      it("a group of 2,000 members: 1,000 cursors are two statements, its receipts one", async () => {
        const owner = randomUuid();
        const g = await newGroup(owner);
        const id = g.conversationId;
        const members = Array.from({ length: 1999 }, () => randomUuid());
        // Past the test's member cap: straight into the store.
        await ctx.store.mutateGroup(id, (tx) => tx.addMembers(members, Date.now()));
        const everyone = [owner, ...members];
        for (const start of [0, 1000]) {
          statements.length = 0;
          const batch = everyone.slice(start, start + 1000).map((u, i) => cursor(u, randomUuid(), id, BigInt(((start + i) % 4) + 1), 0n));
          const { moves } = await client.advanceCursors({ cursors: batch });
          assert.equal(moves.length, 1000);
          assert.ok(moves.every((mv) => mv.memberCount === 2000));
          assert.equal(statements.length, 2, statements.join("\n---\n"));
        }
        statements.length = 0;
        const r = await client.getReceipts({ conversationId: id, seq: 3n, includeReaders: true });
        assert.deepEqual([r.memberCount, r.deliveredCount, r.readCount, r.readerIds.length], [2000, 1000, 0, 0]);
        assert.equal(statements.length, 1, statements.join("\n---\n"));
      });
    });

    describe("publishing changes", () => {
      it("publishes each group's changes in commit order", async () => {
        const owner = randomUuid();
        const [a, b] = [randomUuid(), randomUuid()];
        const g = await newGroup(owner);
        await client.addMembers({ actorId: owner, conversationId: g.conversationId, userIds: [a] });
        await client.updateGroup({ actorId: owner, conversationId: g.conversationId, name: "x" });
        await client.addMembers({ actorId: owner, conversationId: g.conversationId, userIds: [b] });
        await client.removeMember({ actorId: owner, conversationId: g.conversationId, userId: a });
        assert.deepEqual(
          router.events(g.conversationId).map((e) => e.case),
          ["groupCreated", "membersAdded", "groupUpdated", "membersAdded", "memberRemoved"],
        );
        assert.equal(new Set(router.of(g.conversationId).map((c) => c.changeId)).size, 5);
      });

      it("answers even when the router fails, retries in order in the background, then sets left_seq", async () => {
        const owner = randomUuid();
        const [a, b] = [randomUuid(), randomUuid()];
        const g = await newGroup(owner, [a, b]);
        const id = g.conversationId;
        const before = router.of(id).length;
        router.failNext = 3;
        await client.removeMember({ actorId: owner, conversationId: id, userId: a }); // attempt 1 fails
        await client.removeMember({ actorId: owner, conversationId: id, userId: b }); // attempt 2 (of a's change) fails
        // The changes are committed at once...
        assert.equal((await membership(id, a))?.state, MemberState.LEFT);
        assert.equal((await membership(id, a))?.leftSeq, 0n, "no seq before the event is stored");
        assert.equal((await client.getConversation({ conversationId: id })).conversation?.memberCount, 1);
        // ...and the background loop publishes them, a's before b's.
        await router.waitFor((c) => c.conversationId === id && c.leftUserIds.includes(b));
        const retried = router.of(id).slice(before);
        assert.deepEqual(retried.map((c) => c.leftUserIds), [[a], [b]]);
        assert.ok(router.attempts.length >= router.applied.length + 3);
        // Publishing is serialized per conversation: this one runs after the background
        // pass that published b's change has recorded it.
        await ctx.publisher.publish(id);
        const aSeq = (await membership(id, a))?.leftSeq ?? 0n;
        const bSeq = (await membership(id, b))?.leftSeq ?? 0n;
        assert.ok(aSeq > 0n);
        assert.ok(bSeq > aSeq);
      });
    });
  });
}
