import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { MessageSchema } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { NotifyService, StoredMessages } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { createLogger } from "../../../lib/logger.js";
import { until } from "../../../lib/testing/wait.js";
import { NotifyQueue } from "../src/notify-queue.js";

const logger = createLogger("notify-queue-test", "silent");

/** A MessagesStored endpoint that records calls, and fails while `down`. */
function fakeNotify() {
  const calls: StoredMessages[][] = [];
  const state = { down: false, gate: undefined as Promise<void> | undefined };
  const client = {
    async messagesStored(req: { messages: StoredMessages[] }) {
      await state.gate;
      if (state.down) throw new ConnectError("down", Code.Unavailable);
      calls.push(req.messages);
      return {};
    },
  } as unknown as Client<typeof NotifyService>;
  return { client, calls, state };
}

function message(conversationId: string, seq: number, atMs = 1000) {
  return create(MessageSchema, {
    conversationId,
    seq: BigInt(seq),
    messageId: randomUUID(),
    senderId: randomUUID(),
    body: `m${seq}`,
    sentAt: timestampFromMs(atMs),
  });
}

const route = { kind: "group" as const, memberIds: [] };
const opts = { maxConversations: 2, retryBaseMs: 1, retryMaxMs: 5, callTimeoutMs: 1000 };

describe("router NotifyQueue", () => {
  it("merges per conversation while a call is in flight and keeps the earliest stored time", async () => {
    const n = fakeNotify();
    let open!: () => void;
    n.state.gate = new Promise((r) => (open = r));
    const q = new NotifyQueue(n.client, logger, { ...opts, maxConversations: 10 });
    const c = randomUUID();
    q.add(message(c, 1, 500), route); // goes out at once and waits at the gate
    q.add(message(c, 3, 900), route);
    q.add(message(c, 2, 700), route);
    open();
    await until("two calls", () => n.calls.length === 2);
    const second = n.calls[1]![0]!;
    assert.deepEqual([second.seq, second.count, second.preview, second.firstStoredAt?.seconds], [3n, 2, "m3", 0n]);
    assert.equal(Number(second.firstStoredAt?.nanos) / 1e6, 700);
    await q.close();
  });

  it("drops the oldest conversation beyond its cap (counted), and never event messages", async () => {
    const n = fakeNotify();
    n.state.down = true;
    const q = new NotifyQueue(n.client, logger, opts);
    const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
    q.add(message(a, 1), route);
    await until("a failure", () => q.stats.failedCalls >= 1);
    q.add(message(b, 1), route);
    q.add(message(c, 1), route);
    const event = message(randomUUID(), 1);
    event.event = new Uint8Array([1]);
    q.add(event, route);
    assert.equal(q.size, 2);
    assert.equal(q.stats.dropped, 1);
    n.state.down = false;
    await until("handed over", () => n.calls.length === 1);
    assert.deepEqual(n.calls[0]!.map((m) => m.conversationId).sort(), [b, c].sort());
    await q.close();
  });

  it("close() makes one last attempt", async () => {
    const n = fakeNotify();
    n.state.down = true;
    const q = new NotifyQueue(n.client, logger, { ...opts, retryBaseMs: 60_000, retryMaxMs: 60_000 });
    q.add(message(randomUUID(), 1), route);
    await until("a failure", () => q.stats.failedCalls === 1);
    n.state.down = false;
    await q.close();
    assert.equal(n.calls.length, 1);
    assert.equal(q.size, 0);
  });
});
