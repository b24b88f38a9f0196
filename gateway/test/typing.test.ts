import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TypingGate } from "../src/core/typing.js";

describe("TypingGate", () => {
  it("forwards one typing event per user and conversation per window; a flood is dropped and counted", () => {
    const clock = { now: 0 };
    const gate = new TypingGate(() => clock.now, 3000);
    assert.equal(gate.allow("u", "c", false), true);
    for (let i = 0; i < 100; i++) {
      clock.now += 10;
      assert.equal(gate.allow("u", "c", false), false);
    }
    assert.equal(gate.allow("u", "other", false), true, "another conversation has its own window");
    assert.equal(gate.allow("v", "c", false), true, "another user too");
    clock.now = 3000;
    assert.equal(gate.allow("u", "c", false), true);
    assert.equal(gate.dropped, 100);
    assert.equal(gate.forwarded, 4);
  });

  it("forwards a stop after a forwarded typing event, once; a stop with nothing to stop is dropped", () => {
    const clock = { now: 0 };
    const gate = new TypingGate(() => clock.now, 3000);
    assert.equal(gate.allow("u", "c", true), false);
    assert.equal(gate.allow("u", "c", false), true);
    clock.now = 100;
    assert.equal(gate.allow("u", "c", true), true);
    assert.equal(gate.allow("u", "c", true), false);
    clock.now = 200;
    assert.equal(gate.allow("u", "c", false), false, "typing again within the window waits");
    clock.now = 3100;
    assert.equal(gate.allow("u", "c", false), true);
  });

  it("keeps entries only for recent typers (no timer: swept as it goes)", () => {
    const clock = { now: 0 };
    const gate = new TypingGate(() => clock.now, 3000);
    for (let i = 0; i < 1000; i++) gate.allow(`u${i}`, "c", false);
    assert.equal(gate.size, 1000);
    clock.now = 5000;
    gate.allow("late", "c", false);
    assert.equal(gate.size, 1);
  });
});
