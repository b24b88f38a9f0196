import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { directConversationId, randomUuid } from "../../../lib/ids.js";
import type { ConversationStore } from "../src/conversation-store.js";

/** The contract every ConversationStore adapter keeps. */
export function describeConversationStore(name: string, open: () => Promise<ConversationStore & { dispose?(): Promise<void> }>) {
  describe(`ConversationStore contract: ${name}`, () => {
    let store: ConversationStore & { dispose?(): Promise<void> };
    before(async () => {
      store = await open();
    });
    after(async () => {
      await store.close();
      await store.dispose?.();
    });

    it("creates a direct conversation once, with both members", async () => {
      const [a, b] = [randomUuid(), randomUuid()];
      const id = directConversationId(a, b);
      const first = await store.getOrCreateDirect(id, a, b, 1_700_000_000_000);
      assert.equal(first.created, true);
      assert.deepEqual([...first.conversation.memberIds].sort(), [a, b].sort());
      assert.equal(first.conversation.kind, "direct");
      assert.equal(first.conversation.createdAtMs, 1_700_000_000_000);
      const again = await store.getOrCreateDirect(id, b, a, 1_700_000_999_000);
      assert.equal(again.created, false);
      assert.deepEqual(again.conversation, first.conversation);
    });

    it("creates a conversation once under concurrent calls", async () => {
      const [a, b] = [randomUuid(), randomUuid()];
      const id = directConversationId(a, b);
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => store.getOrCreateDirect(id, i % 2 ? a : b, i % 2 ? b : a, 1_000 + i)),
      );
      assert.equal(results.filter((r) => r.created).length, 1);
      for (const r of results) assert.equal(r.conversation.memberIds.length, 2);
    });

    it("gets a conversation by id and says undefined for an unknown one", async () => {
      const [a, b] = [randomUuid(), randomUuid()];
      const id = directConversationId(a, b);
      await store.getOrCreateDirect(id, a, b, 5_000);
      assert.equal((await store.get(id))?.conversationId, id);
      assert.equal(await store.get(randomUuid()), undefined);
    });

    it("lists a user's conversations and only theirs, newest first", async () => {
      const [me, p1, p2, stranger] = [randomUuid(), randomUuid(), randomUuid(), randomUuid()];
      const c1 = directConversationId(me, p1);
      const c2 = directConversationId(me, p2);
      await store.getOrCreateDirect(c1, me, p1, 10_000);
      await store.getOrCreateDirect(c2, p2, me, 20_000);
      await store.getOrCreateDirect(directConversationId(p1, p2), p1, p2, 30_000);
      assert.deepEqual(
        (await store.listForUser(me, 10)).map((c) => c.conversationId),
        [c2, c1],
      );
      assert.deepEqual(await store.listForUser(stranger, 10), []);
      assert.equal((await store.listForUser(me, 1)).length, 1);
    });
  });
}
