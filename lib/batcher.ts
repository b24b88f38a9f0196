/**
 * Client-side batching of a hot unary call: calls made while a batch is in flight (or
 * in the same event-loop turn) travel together in the next batch, one batch in flight
 * per destination. Under load the batches grow and the per-call cost of a hop (a
 * stream, its headers, a wake-up of each process) is shared; when idle a call leaves
 * at once, alone. With one batch in flight per destination, items reach it in the
 * order they were submitted.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { ItemErrorSchema, type ItemError } from "../gen/parley/common/v1/batch_pb.js";

/** One item's outcome, in the shape of the generated `oneof result { ok; error }`. */
export type ItemOutcome<Out> = { case: "ok"; value: Out } | { case: "error"; value: ItemError } | { case: undefined; value?: undefined };

export function itemError(err: unknown): ItemError {
  const ce = ConnectError.from(err);
  return create(ItemErrorSchema, { code: ce.code, message: ce.rawMessage });
}

export function fromItemError(e: ItemError): ConnectError {
  const code = e.code >= 1 && e.code <= 16 ? (e.code as Code) : Code.Unknown;
  return new ConnectError(e.message, code);
}

/** Settles each item of `items` from `run`, which must not throw for one item's failure. */
export async function settleEach<In, Out>(items: readonly In[], run: (item: In) => Promise<Out>): Promise<{ result: ItemOutcome<Out> }[]> {
  const settled = await Promise.allSettled(items.map(run));
  return settled.map((s) =>
    s.status === "fulfilled" ? { result: { case: "ok" as const, value: s.value } } : { result: { case: "error" as const, value: itemError(s.reason) } },
  );
}

interface Waiting<In, Out> {
  item: In;
  resolve(out: Out): void;
  reject(err: ConnectError): void;
}

/** Sends a batch, answers one outcome per item, in order. */
export type BatchCall<In, Out> = (items: In[]) => Promise<ItemOutcome<Out>[]>;

/** The queue of one destination: at most one batch in flight. */
export class BatchQueue<In, Out> {
  private queue: Waiting<In, Out>[] = [];
  private busy = false;
  private idleWaiters: (() => void)[] = [];
  batches = 0;

  constructor(
    private readonly call: BatchCall<In, Out>,
    private readonly maxBatch = 256,
  ) {}

  submit(item: In): Promise<Out> {
    return new Promise<Out>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (!this.busy) {
        this.busy = true;
        // Let the rest of this turn's input (other frames on other sockets) join the batch.
        setImmediate(() => void this.drain());
      }
    });
  }

  /** Resolves when nothing is queued or in flight. */
  idle(): Promise<void> {
    return this.busy ? new Promise((resolve) => this.idleWaiters.push(resolve)) : Promise.resolve();
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, this.maxBatch);
      this.batches++;
      let outcomes: ItemOutcome<Out>[];
      try {
        outcomes = await this.call(batch.map((w) => w.item));
        if (outcomes.length !== batch.length) {
          throw new ConnectError(`batch of ${batch.length} answered with ${outcomes.length} results`, Code.Internal);
        }
      } catch (err) {
        const ce = ConnectError.from(err);
        for (const w of batch) w.reject(ce);
        continue;
      }
      for (let i = 0; i < batch.length; i++) {
        const o = outcomes[i]!;
        if (o.case === "ok") batch[i]!.resolve(o.value);
        else if (o.case === "error") batch[i]!.reject(fromItemError(o.value));
        else batch[i]!.reject(new ConnectError("batch result without an outcome", Code.Internal));
      }
    }
    this.busy = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}

/** A transport that can say which instance owns a key (lib/balancer.ts). */
export interface Routable {
  route(key: string): { id: string; transport: Transport };
}

function isRoutable(t: Transport): t is Transport & Routable {
  return typeof (t as Partial<Routable>).route === "function";
}

/**
 * Batches per destination: items go to the instance that owns their key when the
 * transport is balanced over several instances, otherwise to the transport's one peer.
 */
export class ShardedBatcher<In, Out> {
  private readonly queues = new Map<string, { transport: Transport; queue: BatchQueue<In, Out> }>();

  constructor(
    private readonly transport: Transport,
    private readonly keyOf: (item: In) => string,
    private readonly callFor: (transport: Transport) => BatchCall<In, Out>,
    private readonly maxBatch = 256,
  ) {}

  submit(item: In): Promise<Out> {
    let id = "";
    let transport = this.transport;
    if (isRoutable(this.transport)) {
      try {
        ({ id, transport } = this.transport.route(this.keyOf(item)));
      } catch (err) {
        return Promise.reject(ConnectError.from(err));
      }
    }
    let q = this.queues.get(id);
    if (!q || q.transport !== transport) {
      // New instance, or it came back at another address: a fresh queue (the old one
      // finishes its batch in flight on its own).
      q = { transport, queue: new BatchQueue(this.callFor(transport), this.maxBatch) };
      this.queues.set(id, q);
    }
    return q.queue.submit(item);
  }

  /** Batches sent so far, over all destinations (for tests and metrics). */
  get batches(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.queue.batches;
    return n;
  }

  async idle(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.queue.idle()));
  }
}
