import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, fromBinary } from "@bufbuild/protobuf";
import { ServerFrameSchema } from "../../gen/parley/client/v1/frames_pb.js";
import { ConversationKind, CursorMoveSchema, type AdvanceCursorsRequest, type CursorMove } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { MessageSchema } from "../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { until } from "../../lib/testing/wait.js";
import { ReceiptQueue, type Receipt } from "../src/core/receipts.js";

interface Told {
  senderId: string;
  senderDeviceId: string;
  conversationId: string;
  userIds: string[];
  receipt: { deliveredSeq: bigint; readSeq: bigint; userId: string };
}

/** A ReceiptQueue over fakes: heads per conversation, moves answered by `moveOf`, messages' senders by seq. */
function harness(moveOf: (c: AdvanceCursorsRequest["cursors"][number]) => Omit<Partial<CursorMove>, "$typeName" | "$unknown"> | undefined, sendersBySeq: string[] = []) {
  const calls: AdvanceCursorsRequest[] = [];
  const told: Told[] = [];
  const heads = new Map<string, bigint>();
  const q = new ReceiptQueue(
    {
      groups: {
        advanceCursors: async (req) => {
          calls.push(req as AdvanceCursorsRequest);
          const moves = (req.cursors ?? []).flatMap((c) => {
            const m = moveOf(c as AdvanceCursorsRequest["cursors"][number]);
            return m ? [create(CursorMoveSchema, { userId: c.userId ?? "", deviceId: c.deviceId ?? "", conversationId: c.conversationId ?? "", ...m })] : [];
          });
          return { moves } as never;
        },
      },
      messagestore: {
        getHeads: async (req) => ({ heads: (req.conversationIds ?? []).map((id) => ({ conversationId: id, lastSeq: heads.get(id) ?? 0n })) }) as never,
        getRange: async (req) => {
          const after = Number(req.afterSeq ?? 0n);
          const messages = sendersBySeq
            .map((senderId, i) => create(MessageSchema, { conversationId: req.conversationId, seq: BigInt(i + 1), senderId }))
            .filter((m) => Number(m.seq) > after)
            .slice(0, req.limit ?? 200);
          return { messages } as never;
        },
      },
      sendEphemeral: async (e) => {
        const f = fromBinary(ServerFrameSchema, e.serverFrame!);
        assert.equal(f.kind.case, "receipt");
        if (f.kind.case !== "receipt") return;
        told.push({
          senderId: e.senderId!,
          senderDeviceId: e.senderDeviceId!,
          conversationId: e.conversationId!,
          userIds: [...(e.userIds ?? [])].sort(),
          receipt: { deliveredSeq: f.kind.value.deliveredSeq, readSeq: f.kind.value.readSeq, userId: f.kind.value.userId },
        });
      },
      logger: createLogger("test", "silent"),
    },
    0,
  );
  return { q, calls, told, heads };
}

const r = (o: Partial<Receipt>): Receipt => ({ userId: "bob", deviceId: "bob-phone", conversationId: "c", deliveredSeq: 0, readSeq: 0, ...o });

describe("ReceiptQueue", () => {
  it("coalesces per device and conversation (highest of each cursor) and cuts at the conversation's newest message", async () => {
    const h = harness(() => undefined);
    h.heads.set("c", 7n);
    h.q.report(r({ deliveredSeq: 3 }));
    h.q.report(r({ deliveredSeq: 5, readSeq: 2 }));
    h.q.report(r({ deliveredSeq: 4, readSeq: 4 }));
    h.q.report(r({ deviceId: "bob-laptop", readSeq: 1 }));
    await until("stored", () => h.calls.length === 1);
    await h.q.stop();
    const cursors = h.calls[0]!.cursors.map((c) => ({ device: c.deviceId, d: c.deliveredSeq, r: c.readSeq, max: c.maxSeq }));
    assert.deepEqual(cursors, [
      { device: "bob-phone", d: 5n, r: 4n, max: 7n },
      { device: "bob-laptop", d: 0n, r: 1n, max: 7n },
    ]);
  });

  it("1:1: the peer hears delivered and read; the reader's own devices hear the read (not the reporting one)", async () => {
    const h = harness((c) => ({
      kind: ConversationKind.DIRECT,
      memberIds: ["alice", "bob"],
      memberCount: 2,
      deliveredFrom: 0n,
      deliveredTo: c.deliveredSeq,
      readFrom: 0n,
      readTo: c.readSeq,
    }));
    h.heads.set("c", 9n);
    h.q.report(r({ deliveredSeq: 3 }));
    await until("told", () => h.told.length === 1);
    assert.deepEqual(h.told[0]!.userIds, ["alice"], "delivered only: the peer");
    h.q.report(r({ readSeq: 3 }));
    await until("told", () => h.told.length === 2);
    assert.deepEqual(h.told[1]!.userIds, ["alice", "bob"], "read: the peer and the reader's other devices");
    assert.equal(h.told[1]!.senderDeviceId, "bob-phone", "excluded as the sending device");
    assert.equal(h.told[1]!.receipt.readSeq, 3n);
    await h.q.stop();
  });

  it("small group: the senders of the covered messages hear it; large group: only the reader's devices", async () => {
    const senders = ["alice", "carol", "bob", "alice", "dave"];
    const small = harness(
      () => ({ kind: ConversationKind.GROUP, memberCount: 5, readFrom: 1n, readTo: 4n, deliveredFrom: 4n, deliveredTo: 4n }),
      senders,
    );
    small.q.report(r({ readSeq: 4 }));
    await until("told", () => small.told.length === 1);
    assert.deepEqual(small.told[0]!.userIds, ["alice", "bob", "carol"], "senders of 2..4 (not dave's 5), and bob's own devices");
    await small.q.stop();

    // Only reads move here: the delivered report below moves nothing (the groups service answers no move).
    const large = harness(
      (c) => (c.readSeq > 0n ? { kind: ConversationKind.GROUP, memberCount: 5000, readFrom: 1n, readTo: 4n, deliveredFrom: 4n, deliveredTo: 4n } : undefined),
      senders,
    );
    large.q.report(r({ readSeq: 4 }));
    await until("told", () => large.told.length === 1);
    assert.deepEqual(large.told[0]!.userIds, ["bob"]);
    large.q.report(r({ deviceId: "x", deliveredSeq: 4 }));
    await large.q.stop();
    assert.equal(large.told.length, 1, "nothing moved, nobody told");
  });
});
