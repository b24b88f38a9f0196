import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { ConversationKind, GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { directConversationId, randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { Sql } from "../../../lib/sql.js";
import { loadConfig } from "../src/config.js";
import { GroupsContext } from "../src/context.js";
import { groupsRoutes } from "../src/routes.js";

async function rejectsWith(p: Promise<unknown>, code: Code) {
  await assert.rejects(p, (e: unknown) => ConnectError.from(e).code === code);
}

describe("GroupsService", () => {
  let sql: Sql;
  let ctx: GroupsContext;
  let client: Client<typeof GroupsService>;
  before(async () => {
    sql = await openPglite();
    ctx = await GroupsContext.fromConfig(loadConfig({}), { sql, logger: createLogger("groups", "silent") });
    client = createClient(GroupsService, inProcess(groupsRoutes(ctx)));
  });
  after(async () => {
    await ctx.close();
    await sql.close();
  });

  it("opens the same direct conversation from both sides", async () => {
    const [a, b] = [randomUuid(), randomUuid()];
    const fromA = await client.getOrCreateDirectConversation({ userId: a, peerUserId: b });
    const fromB = await client.getOrCreateDirectConversation({ userId: b, peerUserId: a });
    assert.equal(fromA.created, true);
    assert.equal(fromB.created, false);
    assert.equal(fromA.conversation?.conversationId, directConversationId(a, b));
    assert.equal(fromB.conversation?.conversationId, fromA.conversation?.conversationId);
    assert.equal(fromA.conversation?.kind, ConversationKind.DIRECT);
    const got = await client.getConversation({ conversationId: directConversationId(a, b) });
    assert.deepEqual([...(got.conversation?.memberIds ?? [])].sort(), [a, b].sort());
    const listed = await client.listUserConversations({ userId: b });
    assert.deepEqual(
      listed.conversations.map((c) => c.conversationId),
      [directConversationId(a, b)],
    );
  });

  it("rejects bad input with InvalidArgument and unknown conversations with NotFound", async () => {
    const a = randomUuid();
    await rejectsWith(client.getOrCreateDirectConversation({ userId: a, peerUserId: a }), Code.InvalidArgument);
    await rejectsWith(client.getOrCreateDirectConversation({ userId: "nope", peerUserId: a }), Code.InvalidArgument);
    await rejectsWith(client.getOrCreateDirectConversation({ userId: a, peerUserId: "" }), Code.InvalidArgument);
    await rejectsWith(client.getConversation({ conversationId: "x" }), Code.InvalidArgument);
    await rejectsWith(client.getConversation({ conversationId: randomUuid() }), Code.NotFound);
    await rejectsWith(client.listUserConversations({ userId: "A" }), Code.InvalidArgument);
  });
});
