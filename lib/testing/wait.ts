import assert from "node:assert/strict";

/** One turn of the event loop: queued immediates, promise callbacks and ready I/O run. */
export function nextTurn(): Promise<void> {
  return new Promise<void>((r) => setImmediate(r));
}

/** Lets the event loop run `n` turns (for asserting that something did NOT happen meanwhile). */
export async function turns(n = 10): Promise<void> {
  for (let i = 0; i < n; i++) await nextTurn();
}

/**
 * Waits until `check` holds, yielding one event-loop turn at a time (never sleeping);
 * fails after `timeoutMs`. Time-bounded rather than turn-bounded: work that involves I/O
 * takes more turns on a busy machine.
 */
export async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`never happened: ${what}`);
    await nextTurn();
  }
}
