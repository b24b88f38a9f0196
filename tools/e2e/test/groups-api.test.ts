import assert from "node:assert/strict";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { ErrorCode, type ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { ConversationKind, Role, type Conversation, type Message } from "../../../gen/parley/client/v1/types_pb.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster } from "../../cluster/cluster.js";
import { api, FrameClient, startPlatformProcess, tempDir, type ApiClients } from "../harness.js";
import { rejectsWith } from "../../../lib/testing/connect.js";

/**
 * The public contacts, group and conversation API end to end, with every authorization
 * rule: over Connect (binary and JSON) and over the WebSocket. Runs against the embedded
 * platform (as `npm start` starts it) and, when the real backends are configured, against
 * the distributed cluster on them.
 */

const PASSWORD = "correct horse battery";
const NOT_A_MEMBER = "not a member of this conversation";

const denied = (p: Promise<unknown>) => rejectsWith(p, Code.PermissionDenied, NOT_A_MEMBER);

function errorOf(f: ServerFrame) {
  assert.equal(f.kind.case, "error", `expected an error frame, got ${f.kind.case}`);
  return f.kind.value as Extract<ServerFrame["kind"], { case: "error" }>["value"];
}

function messagesOf(c: FrameClient, conversationId: string): Message[] {
  return c.frames.flatMap((f) => (f.kind.case === "message" && f.kind.value.conversationId === conversationId ? [f.kind.value] : []));
}

interface Target {
  publicUrl: string;
  wsUrl: string;
  stop(): Promise<unknown>;
}

interface Person {
  id: string;
  username: string;
  token: string;
  /** Binary Connect clients; `json` speaks the JSON encoding. */
  api: ApiClients;
  json: ApiClients;
}

function describeGroupsApi(name: string, start: () => Promise<Target>): void {
  describe(`public contacts, groups and conversations API: ${name}`, () => {
    let t: Target;
    const suffix = randomUUID().slice(0, 6);
    const people: Record<"alice" | "bob" | "carol" | "dave" | "eve" | "frank", Person> = {} as never;
    const sockets: FrameClient[] = [];
    let groupId: string;
    /** Alice and Eve's 1:1. */
    let directId: string;
    let ref = 1;

    const connect = async (p: Person) => {
      const c = await FrameClient.connect(t.wsUrl, p.token);
      sockets.push(c);
      return c;
    };
    /** Sends on `c` and resolves with the answering frame (ack or error). */
    const send = async (c: FrameClient, conversationId: string, body: string): Promise<ServerFrame> => {
      const r = ref++;
      c.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } });
      return c.waitFor(`answer to ${body}`, (f) => f.ref === r);
    };
    const ackSeq = (f: ServerFrame): bigint => {
      assert.equal(f.kind.case, "ack", f.kind.case === "error" ? f.kind.value.message : String(f.kind.case));
      return f.kind.case === "ack" ? f.kind.value.seq : 0n;
    };
    const history = async (p: Person, conversationId: string, beforeSeq = 0n): Promise<Message[]> =>
      (await p.api.chat.getHistory({ conversationId, beforeSeq, limit: 200 })).messages;
    const listed = async (p: Person, conversationId: string): Promise<Conversation | undefined> =>
      (await p.api.chat.listConversations({})).conversations.find((c) => c.conversationId === conversationId);

    before(async () => {
      t = await start();
      for (const who of ["alice", "bob", "carol", "dave", "eve", "frank"] as const) {
        const username = `${who}-${suffix}`;
        const res = await api(t.publicUrl).auth.signUp({ username, password: PASSWORD, displayName: who });
        const token = res.tokens!.accessToken;
        people[who] = { id: res.user!.userId, username, token, api: api(t.publicUrl, token), json: api(t.publicUrl, token, false) };
      }
    });
    after(async () => {
      for (const s of sockets) await s.close();
      await t?.stop();
    });

    describe("ContactsService", () => {
      it("puts, renames, gets, lists and deletes the caller's own contacts (user_id empty or own)", async () => {
        const { alice, bob, carol } = people;
        const put = await alice.json.contacts.putContact({ contactUserId: bob.id, nickname: "Bobby" });
        assert.equal(put.created, true);
        assert.equal(put.contact?.user?.userId, bob.id);
        assert.equal(put.contact?.user?.username, bob.username);
        assert.equal(put.contact?.nickname, "Bobby");
        assert.ok(put.contact?.addedAt);
        const renamed = await alice.api.contacts.putContact({ userId: alice.id, contactUserId: bob.id, nickname: "Bob" });
        assert.equal(renamed.created, false);
        assert.equal(renamed.contact?.nickname, "Bob");
        await alice.api.contacts.putContact({ contactUserId: carol.id });
        const list = await alice.api.contacts.listContacts({});
        assert.deepEqual(
          list.contacts.map((c) => [c.user?.username, c.nickname]),
          [
            [bob.username, "Bob"],
            [carol.username, ""],
          ],
        );
        assert.deepEqual((await alice.api.contacts.listContacts({ userId: alice.id })).contacts.length, 2);
        const got = await alice.api.contacts.getContact({ contactUserId: bob.id });
        assert.equal(got.contact?.nickname, "Bob");
        await alice.api.contacts.deleteContact({ contactUserId: carol.id });
        await rejectsWith(alice.api.contacts.getContact({ contactUserId: carol.id }), Code.NotFound);
        await rejectsWith(alice.api.contacts.deleteContact({ contactUserId: carol.id }), Code.NotFound);
        // Adding Bob to Alice's list put nothing in Bob's.
        assert.deepEqual((await bob.api.contacts.listContacts({})).contacts, []);
      });

      it("nobody reads or changes another user's contacts: PERMISSION_DENIED, nothing changed", async () => {
        const { alice, bob, eve } = people;
        await rejectsWith(eve.api.contacts.listContacts({ userId: alice.id }), Code.PermissionDenied);
        await rejectsWith(eve.api.contacts.getContact({ userId: alice.id, contactUserId: bob.id }), Code.PermissionDenied);
        await rejectsWith(eve.json.contacts.putContact({ userId: alice.id, contactUserId: eve.id, nickname: "x" }), Code.PermissionDenied);
        await rejectsWith(eve.api.contacts.deleteContact({ userId: alice.id, contactUserId: bob.id }), Code.PermissionDenied);
        await rejectsWith(eve.api.contacts.listContacts({ userId: "not-a-uuid" }), Code.PermissionDenied);
        const list = await alice.api.contacts.listContacts({});
        assert.deepEqual(
          list.contacts.map((c) => c.user?.userId),
          [bob.id],
        );
      });

      it("bad contact input: unknown user, oneself, long nickname, malformed id, no token", async () => {
        const { alice, bob } = people;
        await rejectsWith(alice.api.contacts.putContact({ contactUserId: randomUUID() }), Code.NotFound);
        await rejectsWith(alice.api.contacts.putContact({ contactUserId: alice.id }), Code.InvalidArgument);
        await rejectsWith(alice.api.contacts.putContact({ contactUserId: bob.id, nickname: "n".repeat(65) }), Code.InvalidArgument);
        await rejectsWith(alice.api.contacts.getContact({ contactUserId: "bob" }), Code.InvalidArgument);
        await rejectsWith(api(t.publicUrl).contacts.listContacts({}), Code.Unauthenticated);
        assert.equal((await alice.api.contacts.getContact({ contactUserId: bob.id })).contact?.nickname, "Bob");
      });
    });

    describe("GroupService", () => {
      it("creates a group: the caller is OWNER, the named users MEMBERs; GetGroup shows it to members", async () => {
        const { alice, bob, carol } = people;
        const { conversation } = await alice.json.groups.createGroup({
          name: "Climbing",
          topic: "Saturdays",
          memberIds: [bob.id, carol.id],
        });
        const c = conversation!;
        groupId = c.conversationId;
        assert.equal(c.kind, ConversationKind.GROUP);
        assert.equal(c.name, "Climbing");
        assert.equal(c.topic, "Saturdays");
        assert.equal(c.memberCount, 3);
        assert.equal(c.role, Role.OWNER);
        assert.equal(c.active, true);
        assert.deepEqual(c.memberIds, []);
        const asBob = (await bob.api.groups.getGroup({ conversationId: groupId })).conversation!;
        assert.equal(asBob.role, Role.MEMBER);
        assert.equal(asBob.name, "Climbing");
        assert.equal(asBob.memberCount, 3);
      });

      it("bad CreateGroup input is a typed error and creates nothing", async () => {
        const { alice, bob } = people;
        const before = (await alice.api.groups.listGroups({})).conversations.length;
        await rejectsWith(alice.api.groups.createGroup({ name: "x", memberIds: [bob.id, randomUUID()] }), Code.NotFound);
        await rejectsWith(alice.api.groups.createGroup({ name: "x", memberIds: [alice.id] }), Code.InvalidArgument);
        await rejectsWith(alice.api.groups.createGroup({ name: "x", memberIds: [bob.id, bob.id] }), Code.InvalidArgument);
        await rejectsWith(alice.api.groups.createGroup({ name: "x", memberIds: ["bob"] }), Code.InvalidArgument);
        await rejectsWith(alice.api.groups.createGroup({ name: "" }), Code.InvalidArgument, /^name/);
        await rejectsWith(alice.api.groups.createGroup({ name: "n".repeat(101) }), Code.InvalidArgument, /^name/);
        await rejectsWith(alice.api.groups.createGroup({ name: "x", topic: "t".repeat(501) }), Code.InvalidArgument, /^topic/);
        await rejectsWith(api(t.publicUrl).groups.createGroup({ name: "x" }), Code.Unauthenticated);
        assert.equal((await alice.api.groups.listGroups({})).conversations.length, before);
      });

      it("non-members get the same PERMISSION_DENIED as for an unknown or a 1:1-only id", async () => {
        const { eve, alice } = people;
        const { conversation } = await eve.api.chat.openDirectConversation({ peer: { case: "peerUserId", value: alice.id } });
        directId = conversation!.conversationId;
        for (const id of [groupId, randomUUID()]) {
          await denied(eve.api.groups.getGroup({ conversationId: id }));
          await denied(eve.api.groups.listMembers({ conversationId: id }));
          await denied(eve.api.groups.updateGroup({ conversationId: id, name: "mine" }));
          await denied(eve.api.groups.deleteGroup({ conversationId: id }));
          await denied(eve.api.groups.addMembers({ conversationId: id, userIds: [people.frank.id] }));
          await denied(eve.api.groups.removeMember({ conversationId: id, userId: people.bob.id }));
          await denied(eve.api.groups.leaveGroup({ conversationId: id }));
          await denied(eve.api.groups.setMemberRole({ conversationId: id, userId: eve.id, role: Role.OWNER }));
          await denied(eve.api.chat.getHistory({ conversationId: id }));
          await denied(eve.api.chat.markRead({ conversationId: id, seq: 1n }));
          await denied(eve.api.chat.setMuted({ conversationId: id, muted: true }));
        }
        // Bob reuses the id of Alice and Eve's 1:1, which he saw somewhere.
        await denied(people.bob.api.chat.getHistory({ conversationId: directId }));
        await denied(people.bob.api.groups.getGroup({ conversationId: directId }));
        await denied(people.bob.api.chat.markRead({ conversationId: directId, seq: 1n }));
        assert.equal((await people.alice.api.groups.getGroup({ conversationId: groupId })).conversation?.memberCount, 3);
      });

      it("ListGroups: the caller's own active groups only", async () => {
        const { bob, eve } = people;
        const mine = await bob.api.groups.listGroups({});
        assert.deepEqual(
          mine.conversations.map((c) => c.conversationId),
          [groupId],
        );
        assert.deepEqual((await bob.api.groups.listGroups({ userId: bob.id })).conversations.length, 1);
        await rejectsWith(eve.api.groups.listGroups({ userId: bob.id }), Code.PermissionDenied);
        assert.deepEqual((await eve.api.groups.listGroups({})).conversations, []);
      });

      it("UpdateGroup: owners and admins only; only the fields that are set change", async () => {
        const { alice, bob } = people;
        await rejectsWith(bob.api.groups.updateGroup({ conversationId: groupId, name: "Bob's" }), Code.PermissionDenied);
        const { conversation } = await alice.api.groups.updateGroup({ conversationId: groupId, name: "Climbing club" });
        assert.equal(conversation?.name, "Climbing club");
        assert.equal(conversation?.topic, "Saturdays");
        await rejectsWith(alice.api.groups.updateGroup({ conversationId: groupId, name: "" }), Code.InvalidArgument);
        await rejectsWith(alice.api.groups.updateGroup({ conversationId: groupId, topic: "t".repeat(501) }), Code.InvalidArgument);
        assert.equal((await bob.api.groups.getGroup({ conversationId: groupId })).conversation?.name, "Climbing club");
      });

      it("ListMembers: members only, ordered by user id, paged", async () => {
        const { alice, bob, carol } = people;
        const all = await carol.api.groups.listMembers({ conversationId: groupId });
        const expected = [alice, bob, carol].map((p) => p.id).sort();
        assert.deepEqual(
          all.members.map((m) => m.userId),
          expected,
        );
        assert.equal(all.members.find((m) => m.userId === alice.id)?.role, Role.OWNER);
        assert.equal(all.members.find((m) => m.userId === bob.id)?.role, Role.MEMBER);
        assert.equal(all.nextAfterUserId, "");
        const first = await bob.api.groups.listMembers({ conversationId: groupId, limit: 2 });
        assert.deepEqual(
          first.members.map((m) => m.userId),
          expected.slice(0, 2),
        );
        const rest = await bob.api.groups.listMembers({ conversationId: groupId, afterUserId: first.nextAfterUserId, limit: 2 });
        assert.deepEqual(
          rest.members.map((m) => m.userId),
          expected.slice(2),
        );
        await rejectsWith(bob.api.groups.listMembers({ conversationId: groupId, limit: 1001 }), Code.InvalidArgument);
      });

      it("roles: the owner makes an admin; admins add members; plain members manage nothing", async () => {
        const { alice, bob, carol, dave, eve } = people;
        await rejectsWith(carol.api.groups.setMemberRole({ conversationId: groupId, userId: bob.id, role: Role.ADMIN }), Code.PermissionDenied);
        await rejectsWith(
          alice.api.groups.setMemberRole({ conversationId: groupId, userId: bob.id, role: Role.UNSPECIFIED }),
          Code.InvalidArgument,
        );
        await alice.api.groups.setMemberRole({ conversationId: groupId, userId: bob.id, role: Role.ADMIN });
        assert.equal((await bob.api.groups.getGroup({ conversationId: groupId })).conversation?.role, Role.ADMIN);
        // Admins may not promote (owner only).
        await rejectsWith(bob.api.groups.setMemberRole({ conversationId: groupId, userId: carol.id, role: Role.ADMIN }), Code.PermissionDenied);

        await rejectsWith(carol.api.groups.addMembers({ conversationId: groupId, userIds: [dave.id] }), Code.PermissionDenied);
        const added = await bob.api.groups.addMembers({ conversationId: groupId, userIds: [dave.id] });
        assert.equal(added.conversation?.memberCount, 4);
        // Adding an active member again, an unknown user, oneself, nobody, or a name twice: typed errors, nothing changed.
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: [dave.id] }), Code.AlreadyExists);
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: [eve.id, randomUUID()] }), Code.NotFound);
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: [bob.id] }), Code.InvalidArgument);
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: [] }), Code.InvalidArgument);
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: [eve.id, eve.id] }), Code.InvalidArgument);
        const tooMany = Array.from({ length: 1001 }, () => randomUUID());
        await rejectsWith(bob.api.groups.addMembers({ conversationId: groupId, userIds: tooMany }), Code.InvalidArgument);
        assert.equal((await alice.api.groups.getGroup({ conversationId: groupId })).conversation?.memberCount, 4);
        await denied(eve.api.groups.getGroup({ conversationId: groupId }));

        // An admin removes plain members but not the owner; the owner cannot leave.
        await rejectsWith(bob.api.groups.removeMember({ conversationId: groupId, userId: alice.id }), Code.PermissionDenied);
        await rejectsWith(alice.api.groups.leaveGroup({ conversationId: groupId }), Code.FailedPrecondition);
        assert.equal((await alice.api.groups.getGroup({ conversationId: groupId })).conversation?.role, Role.OWNER);
      });
    });

    describe("group messages and the membership rules on the WebSocket", () => {
      it("a message reaches every member's socket; the sender gets the ack; history holds the events", async () => {
        const { alice, bob, carol, dave } = people;
        const [a, b, c, d] = [await connect(alice), await connect(bob), await connect(carol), await connect(dave)];
        const seq = ackSeq(await send(a, groupId, "hello climbers"));
        for (const [s, who] of [
          [b, "bob"],
          [c, "carol"],
          [d, "dave"],
        ] as const) {
          const m = await s.waitFor(`the message at ${who}`, (f) => f.kind.case === "message" && f.kind.value.body === "hello climbers");
          assert.equal(m.kind.case === "message" && m.kind.value.seq, seq);
        }
        assert.equal(messagesOf(a, groupId).filter((m) => m.body === "hello climbers").length, 0, "not echoed to the sending socket");
        const h = await history(bob, groupId);
        assert.equal(h[0]?.body, "hello climbers");
        const events = h.filter((m) => m.event !== undefined).reverse();
        assert.deepEqual(
          events.map((m) => m.event!.kind.case),
          ["groupCreated", "groupUpdated", "roleChanged", "membersAdded"],
        );
        const created = events[0]!;
        assert.equal(created.senderId, alice.id);
        assert.equal(created.body, "");
        assert.equal(created.event?.kind.case === "groupCreated" && created.event.kind.value.name, "Climbing");
        const addedEv = events[3]!.event!;
        assert.deepEqual(addedEv.kind.case === "membersAdded" && addedEv.kind.value.userIds, [dave.id]);
        assert.equal(events[3]!.senderId, bob.id);
      });

      it("a non-member cannot post to the group, even with its id (error frame PERMISSION_DENIED, nothing stored)", async () => {
        const { eve, bob } = people;
        const e = await connect(eve);
        const before = (await history(bob, groupId))[0]!.seq;
        const err = errorOf(await send(e, groupId, "let me in"));
        assert.equal(err.code, ErrorCode.PERMISSION_DENIED);
        assert.equal((await history(bob, groupId))[0]!.seq, before);
      });

      it("a removed member is cut off at once and afterwards reads only history up to her removal", async () => {
        const { alice, bob, carol } = people;
        const c = sockets[2]!;
        const b = sockets[1]!;
        await bob.api.groups.removeMember({ conversationId: groupId, userId: carol.id });
        // Sending is refused before the call returned.
        assert.equal(errorOf(await send(c, groupId, "still here?")).code, ErrorCode.PERMISSION_DENIED);
        const removed = await b.waitFor("the removal event at bob", (f) => f.kind.case === "message" && f.kind.value.event?.kind.case === "memberRemoved");
        const removedSeq = removed.kind.case === "message" ? removed.kind.value.seq : 0n;
        const after = ackSeq(await send(sockets[0]!, groupId, "after carol"));
        assert.ok(after > removedSeq);
        await b.waitFor("the later message at bob", (f) => f.kind.case === "message" && f.kind.value.body === "after carol");

        // Her read access ends at the removal event: the newest message she sees is that event.
        // Recorded before RemoveMember answered (the change was published first).
        const mine = (await listed(carol, groupId))!;
        assert.equal(mine.active, false);
        assert.equal(mine.leftSeq, removedSeq);
        assert.equal(mine.lastSeq, removedSeq);
        assert.equal(mine.lastMessage?.seq, removedSeq);
        assert.equal(mine.lastMessage?.event?.kind.case, "memberRemoved");
        const h = await history(carol, groupId);
        assert.equal(h[0]?.seq, removedSeq);
        assert.ok(h.every((m) => m.seq <= removedSeq));
        assert.ok(h.some((m) => m.body === "hello climbers"), "earlier history stays readable");
        // A later before_seq does not get around the cap.
        const forged = await history(carol, groupId, after + 10n);
        assert.equal(forged[0]?.seq, removedSeq);
        // MarkRead is clamped to what she may read.
        assert.equal((await carol.api.chat.markRead({ conversationId: groupId, seq: after + 10n })).readSeq, removedSeq);
        // Not a member for anything else.
        await denied(carol.api.groups.getGroup({ conversationId: groupId }));
        await denied(carol.api.groups.listMembers({ conversationId: groupId }));
        assert.deepEqual((await carol.api.groups.listGroups({})).conversations, []);
        // And her socket got nothing after the removal.
        assert.equal(messagesOf(c, groupId).filter((m) => m.body === "after carol").length, 0);
        // The others still see the group; the member count dropped.
        assert.equal((await alice.api.groups.getGroup({ conversationId: groupId })).conversation?.memberCount, 3);

        // Her list shows the group as it was at her removal, and orders it so: activity in
        // it afterwards does not lift it above a conversation she used since.
        const dm = (await carol.api.chat.openDirectConversation({ peer: { case: "peerUserId", value: people.frank.id } })).conversation!;
        const dmAck = await send(c, dm.conversationId, "hi frank");
        assert.equal((await listed(carol, dm.conversationId))?.lastSeq, ackSeq(dmAck));
        const laterAck = await send(sockets[0]!, groupId, "later still");
        const at = (f: ServerFrame) => (f.kind.case === "ack" ? timestampMs(f.kind.value.sentAt!) : 0);
        assert.ok(at(laterAck) > at(dmAck), "the group's newest message is newer than her 1:1 message");
        const order = (await carol.api.chat.listConversations({})).conversations.map((x) => x.conversationId);
        assert.ok(order.indexOf(dm.conversationId) < order.indexOf(groupId), `ordered by what she may see: ${order.join(", ")}`);
      });

      it("a member who leaves keeps history up to the leave event", async () => {
        const { dave, bob } = people;
        await dave.api.groups.leaveGroup({ conversationId: groupId });
        assert.equal(errorOf(await send(sockets[3]!, groupId, "bye?")).code, ErrorCode.PERMISSION_DENIED);
        const left = await sockets[1]!.waitFor("the leave event at bob", (f) => f.kind.case === "message" && f.kind.value.event?.kind.case === "memberLeft");
        const leftSeq = left.kind.case === "message" ? left.kind.value.seq : 0n;
        ackSeq(await send(sockets[1]!, groupId, "after dave"));
        const conv = (await listed(dave, groupId))!;
        assert.equal(conv.leftSeq, leftSeq);
        assert.equal((await history(dave, groupId))[0]?.seq, leftSeq);
        await denied(dave.api.groups.leaveGroup({ conversationId: groupId }));
        assert.ok((await bob.api.groups.getGroup({ conversationId: groupId })).conversation!.memberCount === 2);
      });
    });

    describe("ChatService: conversation list, read cursors, mute", () => {
      it("lists the caller's conversations by last activity with preview, read position and unread count", async () => {
        const { alice, bob } = people;
        const { conversation } = await bob.api.chat.openDirectConversation({ peer: { case: "peerUsername", value: alice.username } });
        const dm = conversation!.conversationId;
        assert.equal(conversation?.kind, ConversationKind.DIRECT);
        assert.equal(conversation?.active, true);
        ackSeq(await send(sockets[1]!, dm, "psst"));
        let list = (await bob.api.chat.listConversations({})).conversations;
        assert.deepEqual(
          list.slice(0, 2).map((c) => c.conversationId),
          [dm, groupId],
        );
        assert.equal(list[0]?.lastMessage?.body, "psst");
        const last = ackSeq(await send(sockets[0]!, groupId, "newest"));
        list = (await bob.api.chat.listConversations({ userId: bob.id })).conversations;
        assert.equal(list[0]?.conversationId, groupId, "the group moved to the top");
        assert.equal(list[0]?.lastSeq, last);
        assert.equal(list[0]?.lastMessage?.body, "newest");
        assert.equal(list[0]?.name, "Climbing club");
        assert.equal(list[0]?.role, Role.ADMIN);
        assert.equal(list[0]?.unreadCount, last - list[0]!.readSeq);
        assert.equal((await bob.api.chat.listConversations({ limit: 1 })).conversations.length, 1);
        await rejectsWith(bob.api.chat.listConversations({ limit: 201 }), Code.InvalidArgument);
        await rejectsWith(people.eve.api.chat.listConversations({ userId: bob.id }), Code.PermissionDenied);
      });

      it("MarkRead moves forward only, never past the newest message; SetMuted shows in the list", async () => {
        const { bob } = people;
        const head = (await listed(bob, groupId))!;
        assert.equal((await bob.api.chat.markRead({ conversationId: groupId, seq: head.lastSeq - 1n })).readSeq, head.lastSeq - 1n);
        assert.equal((await listed(bob, groupId))?.unreadCount, 1n);
        assert.equal((await bob.api.chat.markRead({ conversationId: groupId, seq: 1n })).readSeq, head.lastSeq - 1n, "never back");
        assert.equal((await bob.json.chat.markRead({ conversationId: groupId, seq: head.lastSeq + 100n })).readSeq, head.lastSeq);
        const after = (await listed(bob, groupId))!;
        assert.equal(after.readSeq, head.lastSeq);
        assert.equal(after.unreadCount, 0n);
        await bob.api.chat.setMuted({ conversationId: groupId, muted: true });
        assert.equal((await listed(bob, groupId))?.muted, true);
        assert.equal((await bob.api.groups.getGroup({ conversationId: groupId })).conversation?.muted, true);
        await bob.api.chat.setMuted({ conversationId: groupId, muted: false });
        assert.equal((await listed(bob, groupId))?.muted, false);
        await rejectsWith(bob.api.chat.markRead({ conversationId: "x", seq: 1n }), Code.InvalidArgument);
      });
    });

    describe("blocking", () => {
      it("a blocked user cannot open a 1:1 with the blocker", async () => {
        const { alice, frank } = people;
        await alice.api.contacts.blockUser({ blockedUserId: frank.id });
        await rejectsWith(frank.api.chat.openDirectConversation({ peer: { case: "peerUserId", value: alice.id } }), Code.PermissionDenied);
        await rejectsWith(alice.api.chat.openDirectConversation({ peer: { case: "peerUserId", value: frank.id } }), Code.PermissionDenied);
      });

      it("an existing 1:1 becomes read-only for both while a block exists; unblocking restores it", async () => {
        const { alice, eve } = people;
        const e = sockets[4]!; // Eve's, opened by the non-member test
        ackSeq(await send(e, directId, "hi alice"));
        await alice.api.contacts.blockUser({ blockedUserId: eve.id });
        assert.equal(errorOf(await send(e, directId, "are you there?")).code, ErrorCode.PERMISSION_DENIED);
        assert.equal(errorOf(await send(sockets[0]!, directId, "go away")).code, ErrorCode.PERMISSION_DENIED);
        assert.equal((await listed(eve, directId))?.blocked, true);
        assert.equal((await history(eve, directId))[0]?.body, "hi alice", "history stays readable");
        const blocked = await alice.api.contacts.listBlockedUsers({});
        assert.deepEqual(
          blocked.users.map((u) => u.userId).sort(),
          [eve.id, people.frank.id].sort(),
        );
        assert.equal(blocked.users.find((u) => u.userId === eve.id)?.username, eve.username);
        assert.deepEqual((await eve.api.contacts.listBlockedUsers({})).users, [], "blocks are the blocker's own list");
        await alice.api.contacts.unblockUser({ blockedUserId: eve.id });
        ackSeq(await send(e, directId, "friends again"));
        assert.equal((await listed(eve, directId))?.blocked, false);
        assert.deepEqual(
          (await alice.api.contacts.listBlockedUsers({})).users.map((u) => u.userId),
          [people.frank.id],
        );
      });

      it("blocking oneself or an unknown user is a typed error", async () => {
        const { alice } = people;
        await rejectsWith(alice.api.contacts.blockUser({ blockedUserId: alice.id }), Code.InvalidArgument);
        await rejectsWith(alice.api.contacts.blockUser({ blockedUserId: randomUUID() }), Code.NotFound);
        await rejectsWith(alice.api.contacts.blockUser({ blockedUserId: "frank" }), Code.InvalidArgument);
        await rejectsWith(api(t.publicUrl).contacts.listBlockedUsers({}), Code.Unauthenticated);
      });
    });

    describe("ownership and deletion", () => {
      it("the owner transfers ownership and may then leave; only the owner deletes", async () => {
        const { alice, bob } = people;
        const { conversation } = await alice.api.groups.createGroup({ name: "Handover", memberIds: [bob.id] });
        const id = conversation!.conversationId;
        await alice.api.groups.setMemberRole({ conversationId: id, userId: bob.id, role: Role.OWNER });
        assert.equal((await bob.api.groups.getGroup({ conversationId: id })).conversation?.role, Role.OWNER);
        assert.equal((await alice.api.groups.getGroup({ conversationId: id })).conversation?.role, Role.ADMIN);
        await rejectsWith(alice.api.groups.deleteGroup({ conversationId: id }), Code.PermissionDenied);
        await alice.api.groups.leaveGroup({ conversationId: id });
        await denied(alice.api.groups.getGroup({ conversationId: id }));
        await bob.api.groups.deleteGroup({ conversationId: id });
        await denied(bob.api.groups.getGroup({ conversationId: id }));
      });

      it("after DeleteGroup nobody reads, lists or posts to it", async () => {
        const { alice, bob } = people;
        await rejectsWith(bob.api.groups.deleteGroup({ conversationId: groupId }), Code.PermissionDenied);
        await alice.api.groups.deleteGroup({ conversationId: groupId });
        for (const p of [alice, bob, people.carol]) {
          await denied(p.api.chat.getHistory({ conversationId: groupId }));
          await denied(p.api.groups.getGroup({ conversationId: groupId }));
          assert.equal(await listed(p, groupId), undefined);
          assert.ok(!(await p.api.groups.listGroups({})).conversations.some((c) => c.conversationId === groupId));
        }
        assert.equal(errorOf(await send(sockets[1]!, groupId, "anyone?")).code, ErrorCode.PERMISSION_DENIED);
      });
    });
  });
}

describeGroupsApi("embedded platform (npm start)", async () => {
  const data = tempDir("parley-e2e-groups-");
  const p = await startPlatformProcess(data.path);
  return {
    publicUrl: p.publicUrl,
    wsUrl: p.wsUrl,
    stop: async () => {
      await p.stop();
      data.remove();
    },
  };
});

const backends = realClusterBackends();
if (backends) {
  describeGroupsApi("cluster on the real backends", async () => {
    const cluster = await startCluster({
      backends,
      counts: { gateway: 1 },
    });
    const publicUrl = cluster.gatewayUrls()[0]!;
    return { publicUrl, wsUrl: `${publicUrl.replace(/^http/, "ws")}/ws`, stop: () => cluster.stop() };
  });
}
