import { fromBinary } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { ApplyConversationChangeRequestSchema, type RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import type { ConversationStore } from "./conversation-store.js";
import type { PendingChange } from "./model.js";

export interface ChangePublisherOptions {
  /** How often the background loop looks for unpublished changes; also the backoff base. */
  intervalMs: number;
  /** Deadline of one ApplyConversationChange call. */
  timeoutMs: number;
  /** Longest wait between two attempts at one change. */
  maxBackoffMs?: number;
  clock?: () => number;
}

/** Changes read per conversation per pass, and conversations per background pass. */
const BATCH = 100;
/** Conversations published at once by the background loop. */
const PARALLEL = 16;

/**
 * Publishes the change outbox to the routers (RouterService.ApplyConversationChange).
 * `publish(conversationId)` runs right after a mutation commits and is awaited by the
 * RPC, so a membership change takes effect before the caller hears back; when the
 * router cannot be reached it logs and returns (the change is committed), and one
 * background timer retries unpublished changes with exponential backoff per change.
 *
 * A conversation's changes are published in the order they were committed: a later
 * change waits while an earlier one of the same conversation is unpublished. Within
 * this process one conversation is published by one task at a time; two processes may
 * publish the same change twice, which the router ignores (idempotent on change_id).
 */
export class ChangePublisher {
  private readonly chains = new Map<string, Promise<void>>();
  private readonly backoff = new Map<string, { attempts: number; notBeforeMs: number }>();
  private readonly abort = new AbortController();
  private readonly clock: () => number;
  private readonly maxBackoffMs: number;
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly store: ConversationStore,
    private readonly router: Client<typeof RouterService>,
    private readonly logger: Logger,
    private readonly opts: ChangePublisherOptions,
  ) {
    this.clock = opts.clock ?? Date.now;
    this.maxBackoffMs = opts.maxBackoffMs ?? Math.max(30_000, opts.intervalMs);
  }

  /** Starts the background retry loop (one unref'd timer). */
  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => {
      if (!this.sweeping) this.sweeping = this.sweep().finally(() => (this.sweeping = undefined));
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  /**
   * Publishes the conversation's unpublished changes, oldest first, and resolves when
   * they are published or one failed (logged; the background loop retries). Never rejects.
   */
  publish(conversationId: string): Promise<void> {
    return this.exclusive(conversationId, () => this.drain(conversationId, false));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    this.abort.abort();
    await this.sweeping;
    await Promise.all([...this.chains.values()]);
  }

  /** One pass of the background loop over the conversations with unpublished changes. */
  private async sweep(): Promise<void> {
    let conversations: string[];
    try {
      conversations = await this.store.conversationsWithPendingChanges(BATCH * 10);
    } catch (err) {
      this.logger.warn({ err }, "could not read the change outbox");
      return;
    }
    for (let i = 0; i < conversations.length && !this.closed; i += PARALLEL) {
      await Promise.all(
        conversations.slice(i, i + PARALLEL).map((c) => this.exclusive(c, () => this.drain(c, true))),
      );
    }
  }

  /** Runs `task` after the conversation's previous task; tasks never reject. */
  private exclusive(conversationId: string, task: () => Promise<void>): Promise<void> {
    const previous = this.chains.get(conversationId) ?? Promise.resolve();
    const next = previous.then(task).catch((err: unknown) => {
      this.logger.warn({ err, conversationId }, "publishing conversation changes failed");
    });
    this.chains.set(conversationId, next);
    void next.finally(() => {
      if (this.chains.get(conversationId) === next) this.chains.delete(conversationId);
    });
    return next;
  }

  /** Publishes in order until none is left or one fails (the later ones wait for it). */
  private async drain(conversationId: string, background: boolean): Promise<void> {
    for (;;) {
      if (this.closed) return;
      const pending = await this.store.pendingChanges(conversationId, BATCH);
      for (const change of pending) {
        if (this.closed) return;
        if (background && (this.backoff.get(change.changeId)?.notBeforeMs ?? 0) > this.clock()) return;
        if (!(await this.publishOne(change))) return;
      }
      if (pending.length < BATCH) return;
    }
  }

  private async publishOne(change: PendingChange): Promise<boolean> {
    const request = fromBinary(ApplyConversationChangeRequestSchema, change.payload);
    let seq: number;
    try {
      const res = await this.router.applyConversationChange(request, {
        timeoutMs: this.opts.timeoutMs,
        signal: this.abort.signal,
      });
      seq = Number(res.seq);
    } catch (err) {
      const b = this.backoff.get(change.changeId) ?? { attempts: 0, notBeforeMs: 0 };
      b.attempts++;
      b.notBeforeMs = this.clock() + Math.min(this.maxBackoffMs, this.opts.intervalMs * 2 ** (b.attempts - 1));
      this.backoff.set(change.changeId, b);
      if (!this.closed) {
        this.logger.warn(
          { err, conversationId: change.conversationId, changeId: change.changeId, attempts: b.attempts },
          "conversation change not published yet; will retry",
        );
      }
      return false;
    }
    this.backoff.delete(change.changeId);
    const left = request.deleted ? "all" : request.leftUserIds;
    await this.store.markPublished(change.conversationId, change.changeId, seq, left, this.clock());
    return true;
  }
}
