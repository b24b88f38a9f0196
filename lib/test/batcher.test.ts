import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { BatchQueue, ShardedBatcher, itemError, settleEach, type ItemOutcome } from "../batcher.js";
import { until } from "../../lib/testing/wait.js";

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const ok = <T>(value: T): ItemOutcome<T> => ({ case: "ok", value });

/** A batch call that records each batch and answers when the test releases it. */
function gatedCall() {
  const batches: number[][] = [];
  const gates: Deferred<void>[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const call = async (items: number[]) => {
    batches.push(items);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    const gate = deferred<void>();
    gates.push(gate);
    await gate.promise;
    inFlight--;
    return items.map((i) => ok(i * 10));
  };
  return { call, batches, gates, maxInFlight: () => maxInFlight };
}

describe("BatchQueue", () => {
  it("sends the calls of one turn together, then everything queued meanwhile, one batch in flight, in order", async () => {
    const g = gatedCall();
    const q = new BatchQueue(g.call);
    const first = [1, 2, 3].map((i) => q.submit(i));
    await until("first batch", () => g.batches.length === 1);
    const second = [4, 5, 6, 7].map((i) => q.submit(i));
    await new Promise((r) => setImmediate(r));
    assert.equal(g.batches.length, 1, "the next batch waits for the one in flight");
    g.gates[0]!.resolve();
    assert.deepEqual(await Promise.all(first), [10, 20, 30]);
    await until("second batch", () => g.batches.length === 2);
    g.gates[1]!.resolve();
    assert.deepEqual(await Promise.all(second), [40, 50, 60, 70]);
    assert.deepEqual(g.batches, [[1, 2, 3], [4, 5, 6, 7]]);
    assert.equal(g.maxInFlight(), 1);
    await q.idle();
  });

  it("splits at maxBatch", async () => {
    const batches: number[][] = [];
    const q = new BatchQueue(async (items: number[]) => (batches.push(items), items.map(ok)), 4);
    assert.deepEqual(await Promise.all(Array.from({ length: 10 }, (_, i) => q.submit(i))), Array.from({ length: 10 }, (_, i) => i));
    assert.deepEqual(batches.map((b) => b.length), [4, 4, 2]);
  });

  it("rejects only the items that failed, with their codes; a failed call rejects its whole batch and the queue goes on", async () => {
    let failNext = false;
    const q = new BatchQueue(async (items: number[]) => {
      if (failNext) {
        failNext = false;
        throw new ConnectError("router gone", Code.Unavailable);
      }
      return items.map((i): ItemOutcome<number> => (i % 2 ? ok(i) : { case: "error", value: itemError(new ConnectError(`even ${i}`, Code.PermissionDenied)) }));
    });
    const settled = await Promise.allSettled([1, 2, 3].map((i) => q.submit(i)));
    assert.deepEqual(settled.map((s) => (s.status === "fulfilled" ? s.value : ConnectError.from(s.reason).code)), [1, Code.PermissionDenied, 3]);
    assert.equal(ConnectError.from((settled[1] as PromiseRejectedResult).reason).rawMessage, "even 2");
    failNext = true;
    const failed = await Promise.allSettled([5, 7].map((i) => q.submit(i)));
    assert.deepEqual(failed.map((s) => s.status === "rejected" && ConnectError.from(s.reason).code), [Code.Unavailable, Code.Unavailable]);
    assert.equal(await q.submit(9), 9);
  });

  it("treats an answer with the wrong number of results as Internal for the whole batch", async () => {
    const q = new BatchQueue(async (items: number[]) => items.slice(1).map(ok));
    await assert.rejects(q.submit(1), (err) => ConnectError.from(err).code === Code.Internal);
  });
});

describe("ShardedBatcher", () => {
  it("batches per owning instance, as the transport's route() says, and fails Unavailable when no instance is live", async () => {
    const sent: { instance: string; items: string[] }[] = [];
    let live = true;
    const fakeTransport = (id: string) => ({ id }) as unknown as Transport;
    const a = fakeTransport("a");
    const b = fakeTransport("b");
    const routed = {
      route(key: string) {
        if (!live) throw new ConnectError("no live router instance", Code.Unavailable);
        return key.startsWith("a") ? { id: "a", transport: a } : { id: "b", transport: b };
      },
    } as unknown as Transport;
    const batcher = new ShardedBatcher<string, string>(
      routed,
      (s) => s,
      (t) => async (items) => {
        sent.push({ instance: (t as unknown as { id: string }).id, items });
        return items.map((i) => ok(i.toUpperCase()));
      },
    );
    const out = await Promise.all(["a1", "b1", "a2", "b2", "a3"].map((k) => batcher.submit(k)));
    assert.deepEqual(out, ["A1", "B1", "A2", "B2", "A3"]);
    assert.deepEqual(sent.sort((x, y) => (x.instance < y.instance ? -1 : 1)), [
      { instance: "a", items: ["a1", "a2", "a3"] },
      { instance: "b", items: ["b1", "b2"] },
    ]);
    assert.equal(batcher.batches, 2);
    live = false;
    await assert.rejects(batcher.submit("a4"), (err) => ConnectError.from(err).code === Code.Unavailable);
  });

  it("uses one queue for a plain transport", async () => {
    const sizes: number[] = [];
    const batcher = new ShardedBatcher<number, number>({} as Transport, String, () => async (items) => (sizes.push(items.length), items.map(ok)));
    await Promise.all([1, 2, 3].map((i) => batcher.submit(i)));
    assert.deepEqual(sizes, [3]);
  });
});

describe("settleEach", () => {
  it("maps each item to ok or its typed error", async () => {
    const out = await settleEach([1, 2], async (i) => {
      if (i === 2) throw new ConnectError("nope", Code.NotFound);
      return i;
    });
    assert.deepEqual(out.map((o) => o.result.case), ["ok", "error"]);
    assert.equal(out[1]!.result.case === "error" && out[1]!.result.value.code, Code.NotFound);
  });
});
