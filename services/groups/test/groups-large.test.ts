import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { GroupsService, MemberState } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { Sql } from "../../../lib/sql.js";
import { loadConfig } from "../src/config.js";
import { GroupsContext } from "../src/context.js";
import { groupsRoutes } from "../src/routes.js";

const MEMBERS = 100_000;
const CHUNK = 1000;

/**
 * A group at the default member cap (100,000) on the embedded database: filled through
 * the API in the largest allowed calls, then every per-member operation still answers
 * from indexes (counts, checks, paging) and the cap holds.
 */
describe(`a group of ${MEMBERS.toLocaleString("en")} members (embedded database, default cap)`, () => {
  let sql: Sql;
  let ctx: GroupsContext;
  let client: Client<typeof GroupsService>;
  const joined: number[] = [];
  const owner = randomUuid();
  const users = Array.from({ length: MEMBERS - 1 }, () => randomUuid());
  let id: string;

  before(async () => {
    sql = await openPglite();
    let seq = 0n;
    const router = inProcess((r) =>
      r.service(RouterService, {
        applyConversationChange: (req) => {
          joined.push(req.joinedUserIds.length);
          return { seq: ++seq };
        },
      }),
    );
    ctx = await GroupsContext.fromConfig(loadConfig({}), { sql, router, logger: createLogger("groups", "silent") });
    client = createClient(GroupsService, inProcess(groupsRoutes(ctx)));
  });
  after(async () => {
    await ctx.close();
    await sql.close();
  });

  it("fills up through CreateGroup and AddMembers; each change names only its own joiners", async () => {
    const { conversation } = await client.createGroup({ actorId: owner, name: "everyone", memberIds: users.slice(0, CHUNK - 1) });
    id = conversation!.conversationId;
    for (let i = CHUNK - 1; i < users.length; i += CHUNK) {
      await client.addMembers({ actorId: owner, conversationId: id, userIds: users.slice(i, i + CHUNK) });
    }
    const { conversation: full } = await client.getConversation({ conversationId: id });
    assert.equal(full?.memberCount, MEMBERS);
    assert.deepEqual(full?.memberIds, [], "a group's members are never sent whole");
    assert.equal(joined.reduce((a, b) => a + b, 0), MEMBERS);
    assert.ok(Math.max(...joined) <= CHUNK);
  });

  it("checks senders, answers one membership and pages members", async () => {
    const last = users[users.length - 1]!;
    const stranger = randomUuid();
    const { allowedUserIds } = await client.checkMembers({ conversationId: id, userIds: [users[0]!, last, stranger] });
    assert.deepEqual([...allowedUserIds].sort(), [users[0]!, last].sort());
    assert.equal((await client.getMembership({ conversationId: id, userId: last })).member?.state, MemberState.ACTIVE);
    let pages = 0;
    let seen = 0;
    let after = "";
    do {
      const page = await client.listMembers({ actorId: last, conversationId: id, afterUserId: after, limit: 1000 });
      seen += page.members.length;
      after = page.nextAfterUserId;
      pages++;
    } while (after !== "" && pages < 200);
    assert.equal(seen, MEMBERS);
    assert.equal(pages, MEMBERS / 1000);
  });

  it("refuses member 100,001 with RESOURCE_EXHAUSTED and changes nothing", async () => {
    await assert.rejects(client.addMembers({ actorId: owner, conversationId: id, userIds: [randomUuid()] }), (e: unknown) => {
      assert.equal(ConnectError.from(e).code, Code.ResourceExhausted);
      return true;
    });
    assert.equal((await client.getConversation({ conversationId: id })).conversation?.memberCount, MEMBERS);
    // Room again after someone leaves.
    await client.removeMember({ actorId: users[5]!, conversationId: id, userId: users[5]! });
    await client.addMembers({ actorId: owner, conversationId: id, userIds: [randomUuid()] });
    assert.equal((await client.getConversation({ conversationId: id })).conversation?.memberCount, MEMBERS);
  });

  it("moves 1,000 members' cursors in one call and counts receipts over all members", async () => {
    const some = users.slice(10_000, 11_000);
    const { moves } = await client.advanceCursors({
      cursors: some.map((userId, i) => ({
        userId,
        deviceId: randomUuid(),
        conversationId: id,
        deliveredSeq: 3n,
        readSeq: i < 400 ? 2n : 0n,
        maxSeq: 3n,
      })),
    });
    assert.equal(moves.length, 1000);
    assert.ok(moves.every((m) => m.memberCount === MEMBERS));
    const at = async (seq: bigint) => {
      const r = await client.getReceipts({ conversationId: id, seq });
      return [r.memberCount, r.deliveredCount, r.readCount];
    };
    assert.deepEqual(await at(2n), [MEMBERS, 1000, 400]);
    assert.deepEqual(await at(3n), [MEMBERS, 1000, 0]);
    const readers = await client.getReceipts({ conversationId: id, seq: 1n, includeReaders: true, limit: 1000 });
    assert.deepEqual([...readers.readerIds], some.slice(0, 400).sort());
    assert.equal(readers.nextAfterUserId, "");
  });
});
