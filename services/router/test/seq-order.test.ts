import assert from "node:assert/strict";
import { describe, it, mock } from "node:test";
import { SeqOrder } from "../src/seq-order.js";

type Item = { conversationId: string; seq: number };
const item = (seq: number, conversationId = "c"): Item => ({ conversationId, seq });

function collect(holdMs = 100) {
  const out: Item[] = [];
  const order = new SeqOrder<Item>((i) => out.push(i), holdMs);
  return { out, order, seqs: () => out.map((i) => i.seq) };
}

describe("SeqOrder: fan-out in sequence order", () => {
  it("passes messages that arrive in order straight through", () => {
    const { order, seqs } = collect();
    for (let s = 1; s <= 5; s++) order.push(item(s));
    assert.deepEqual(seqs(), [1, 2, 3, 4, 5]);
    assert.equal(order.waiting, 0);
  });

  it("holds a message until its predecessor arrives", () => {
    const { order, seqs } = collect();
    order.push(item(1));
    order.push(item(3));
    order.push(item(4));
    assert.deepEqual(seqs(), [1]);
    order.push(item(2));
    assert.deepEqual(seqs(), [1, 2, 3, 4]);
    assert.equal(order.waiting, 0);
  });

  it("keeps conversations independent", () => {
    const { order, out } = collect();
    order.push(item(1, "a"));
    order.push(item(3, "a"));
    order.push(item(1, "b"));
    assert.deepEqual(
      out.map((i) => `${i.conversationId}${i.seq}`),
      ["a1", "b1"],
    );
  });

  it("gives up on a gap after the hold time and releases in order", () => {
    mock.timers.enable({ apis: ["setTimeout"] });
    try {
      const { order, seqs } = collect(100);
      order.push(item(1));
      order.push(item(4));
      order.push(item(3));
      mock.timers.tick(99);
      assert.deepEqual(seqs(), [1]);
      mock.timers.tick(1);
      assert.deepEqual(seqs(), [1, 3, 4]);
      order.push(item(5));
      assert.deepEqual(seqs(), [1, 3, 4, 5], "continues after the gap");
      order.push(item(2));
      assert.deepEqual(seqs(), [1, 3, 4, 5, 2], "a late message still goes out");
    } finally {
      mock.timers.reset();
    }
  });

  it("a conversation first seen mid-stream waits briefly for an unseen predecessor", () => {
    mock.timers.enable({ apis: ["setTimeout"] });
    try {
      const { order, seqs } = collect(100);
      order.push(item(41));
      order.push(item(40));
      assert.deepEqual(seqs(), [], "40 may have a predecessor too");
      mock.timers.tick(100);
      assert.deepEqual(seqs(), [40, 41]);
    } finally {
      mock.timers.reset();
    }
  });

  it("flush releases everything held", () => {
    const { order, seqs } = collect();
    order.push(item(7));
    order.push(item(9));
    order.flush();
    assert.deepEqual(seqs(), [7, 9]);
  });
});
