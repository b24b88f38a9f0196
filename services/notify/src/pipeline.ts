import { randomUUID } from "node:crypto";
import { UuidV7Generator } from "../../../lib/ids.js";
import type { Logger } from "../../../lib/logger.js";
import { nextAttemptDelay } from "./backoff.js";
import { emptyStats, type Device, type Platform, type PushJob, type PushTask, type Stats, type StoredBatch, type TaskInput } from "./model.js";
import type { DeviceTarget, PushSender, SendOutcome } from "./providers/push-sender.js";
import { CANDIDATE_PAGE, type PushCandidate, type PushCandidates } from "./push-candidates.js";
import type { CompleteTask, PushStore } from "./push-store.js";
import { PUSH_TTL_SECONDS, renderPush } from "./render.js";
import type { UserDirectory } from "./user-directory.js";
import { endpointProblem } from "./webpush-hosts.js";

export interface PipelineOptions {
  /** Push delay after a conversation's first pending message; also the collapse window. */
  delayMs: number;
  /** Attempts of one push to one device before it is dead-lettered. */
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** How long claimed work is invisible to other instances. */
  leaseMs: number;
  /** Longest sleep of the loop. */
  pollMs: number;
  /** Hosts Web Push endpoints may point at (checked again before each send). */
  webPushAllowedHosts: readonly string[];
  /** Jobs claimed at once (default 20). */
  jobBatch?: number;
  /** Tasks claimed at once (default 100). */
  taskBatch?: number;
  /** Sends in flight at once (default 32). */
  sendConcurrency?: number;
  /** Batches of each kind per round before the loop yields (default 10). */
  batchesPerRound?: number;
  /** Dead letters are kept this long (default 30 days). */
  deadLetterRetentionMs?: number;
}

export interface PipelineDeps {
  store: PushStore;
  candidates: PushCandidates;
  users: UserDirectory;
  /** One sender per platform (a log sender where no provider is configured). */
  senders: Readonly<Record<Platform, PushSender>>;
  logger: Logger;
  clock?: () => number;
  /** [0, 1): the backoff jitter. */
  random?: () => number;
}

export interface RoundResult {
  /** Jobs that came due and were handled. */
  jobs: number;
  /** Tasks claimed (sent, cancelled or given back). */
  tasks: number;
  /** A batch was full: more work may be due right now. */
  more: boolean;
}

const JOBS_IN_PARALLEL = 4;
const COMPLETIONS_IN_PARALLEL = 8;
const PRUNE_EVERY_MS = 3600_000;

/**
 * The push pipeline: turns due jobs (one per conversation and burst) into tasks (one per
 * user and conversation), and sends due tasks to their users' devices.
 *
 * One timer for the whole pipeline: it fires at the earliest due time (capped by
 * `pollMs`, since other instances add work too) and runs one round (`tick()`); tests
 * call `tick()` themselves with an injected clock. Rounds never overlap. All state is in
 * the store, claimed with leases, so several instances share the work and a crashed
 * instance's work is picked up after its lease: a job is turned into tasks once (its
 * claim is checked in the finishing transaction); a push is sent at least once and at
 * most once more per crash, with the same push id every time.
 */
export class PushPipeline {
  readonly stats: Stats = emptyStats();
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly ids: UuidV7Generator;
  private readonly abort = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private timerAtMs = Infinity;
  /** The earliest due time announced while a round ran (it is scheduled after the round). */
  private wakeAtMs = Infinity;
  private running = false;
  private closed = false;
  private round: Promise<RoundResult> | undefined;
  private lastPruneMs = -Infinity;

  constructor(
    private readonly deps: PipelineDeps,
    private readonly opts: PipelineOptions,
  ) {
    this.clock = deps.clock ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.ids = new UuidV7Generator(this.clock);
  }

  // ---- intake

  /** Stores a hand-over of stored messages (durably, before it resolves) and schedules their jobs. */
  async messagesStored(batches: readonly StoredBatch[]): Promise<void> {
    if (batches.length === 0) return;
    await this.deps.store.addMessages(batches, this.opts.delayMs);
    for (const b of batches) this.stats.messagesReceived += b.count;
    this.wake(Math.min(...batches.map((b) => b.firstStoredAtMs)) + this.opts.delayMs);
  }

  // ---- loop

  /** Starts the background loop. */
  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.schedule(0);
  }

  /** Work is due at `atMs` (or now): run a round then, unless one is scheduled earlier. */
  wake(atMs = this.clock()): void {
    if (!this.running || this.closed) return;
    if (this.round) {
      this.wakeAtMs = Math.min(this.wakeAtMs, atMs);
      return;
    }
    if (atMs < this.timerAtMs) this.schedule(atMs - this.clock());
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    const delay = Math.max(0, Math.min(delayMs, this.opts.pollMs));
    this.timerAtMs = this.clock() + delay;
    this.timer = setTimeout(() => void this.loop(), delay);
    this.timer.unref();
  }

  private async loop(): Promise<void> {
    this.timer = undefined;
    this.timerAtMs = Infinity;
    let next: number = this.opts.pollMs;
    try {
      const r = await this.tick();
      if (this.closed) return;
      if (r.more) {
        next = 0;
      } else {
        const due = await this.deps.store.nextDueAtMs();
        const at = Math.min(due ?? Infinity, this.wakeAtMs);
        if (at !== Infinity) next = at - this.clock();
      }
    } catch (err) {
      this.deps.logger.warn({ err }, "push round failed");
    }
    this.wakeAtMs = Infinity;
    if (!this.closed) this.schedule(next);
  }

  /**
   * One round: due jobs become tasks, then due tasks are sent. Waits for a round in
   * flight first (rounds never overlap).
   */
  tick(): Promise<RoundResult> {
    const previous = this.round ?? Promise.resolve(undefined);
    const round: Promise<RoundResult> = previous
      .catch(() => undefined)
      .then(() => (this.closed ? { jobs: 0, tasks: 0, more: false } : this.runRound()))
      .finally(() => {
        if (this.round === round) this.round = undefined;
      });
    this.round = round;
    return round;
  }

  /** Stops the loop and waits for the round in flight (sends in flight are aborted: they count as retries). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.abort.abort(new Error("notify pipeline closed"));
    await this.round?.catch(() => undefined);
  }

  private async runRound(): Promise<RoundResult> {
    const jobBatch = this.opts.jobBatch ?? 20;
    const taskBatch = this.opts.taskBatch ?? 100;
    const rounds = this.opts.batchesPerRound ?? 10;
    let jobs = 0;
    let tasks = 0;
    let more = false;
    for (let i = 0; i < rounds && !this.closed; i++) {
      const claimed = await this.deps.store.claimDueJobs(this.clock(), this.opts.leaseMs, jobBatch, randomUUID());
      await inParallel(claimed, JOBS_IN_PARALLEL, (job) => this.processJob(job));
      jobs += claimed.length;
      more = claimed.length === jobBatch;
      if (!more) break;
    }
    let moreTasks = false;
    for (let i = 0; i < rounds && !this.closed; i++) {
      const claimed = await this.deps.store.claimDueTasks(this.clock(), this.opts.leaseMs, taskBatch, randomUUID());
      if (claimed.length > 0) await this.processTasks(claimed);
      tasks += claimed.length;
      moreTasks = claimed.length === taskBatch;
      if (!moreTasks) break;
    }
    await this.maybePrune();
    return { jobs, tasks, more: more || moreTasks };
  }

  // ---- jobs → tasks

  private async processJob(job: PushJob): Promise<void> {
    this.stats.jobsDue++;
    const log = this.deps.logger;
    try {
      const now = this.clock();
      const direct = job.kind === "direct" && job.recipientIds.length > 0;
      const only = direct ? job.recipientIds.filter((u) => u !== job.senderId) : undefined;
      const tasks: TaskInput[] = [];
      let name = "";
      if (!only || only.length > 0) {
        let after = "";
        for (;;) {
          const page = await this.deps.candidates.candidates(
            {
              conversationId: job.conversationId,
              seq: job.lastSeq,
              ...(only ? { userIds: only } : {}),
              excludeUserIds: [job.senderId],
              afterUserId: after,
              limit: CANDIDATE_PAGE,
            },
            this.abort.signal,
          );
          if (page.kind === undefined) break; // unknown or deleted conversation
          name = page.name;
          const pushable = await this.deps.store.pushableUsers(
            page.candidates.map((c) => c.userId),
            now,
          );
          for (const c of page.candidates) {
            if (!pushable.has(c.userId)) continue;
            const unread = job.lastSeq - Math.max(c.deliveredSeq, c.readSeq);
            if (unread <= 0) continue;
            tasks.push({ userId: c.userId, count: Math.min(job.count, unread), unread, pushId: this.ids.next() });
          }
          if (!page.nextAfterUserId || only) break;
          after = page.nextAfterUserId;
        }
      }
      const r = await this.deps.store.finishJob(job, { name }, tasks, this.clock());
      if (!r.finished) {
        log.warn({ conversationId: job.conversationId }, "push job was taken over by another instance (lease expired); left to it");
        return;
      }
      this.stats.pushesCreated += r.pushes;
    } catch (err) {
      // Closing aborts the calls in flight: give the job back at once (another instance may take it).
      if (!this.closed) log.warn({ err, conversationId: job.conversationId }, "push job failed; will retry");
      const retryAt = this.clock() + (this.closed ? 0 : this.opts.retryBaseMs);
      await this.deps.store.releaseJob(job, retryAt).catch((e: unknown) => {
        log.warn({ err: e, conversationId: job.conversationId }, "could not give a push job back (it returns after its lease)");
      });
    }
  }

  // ---- tasks → sends

  private async processTasks(claimed: PushTask[]): Promise<void> {
    const log = this.deps.logger;
    const now = this.clock();

    // 1. Still wanted? One candidates call per conversation, for the batch's users.
    const keep: PushTask[] = [];
    const cancel: PushTask[] = [];
    const byConversation = groupBy(claimed, (t) => t.conversationId);
    await inParallel([...byConversation], JOBS_IN_PARALLEL, async ([conversationId, tasks]) => {
      let found: Map<string, PushCandidate>;
      try {
        found = await this.currentCandidates(conversationId, tasks);
      } catch (err) {
        // Left claimed: they come back after the lease.
        if (!this.closed) log.warn({ err, conversationId }, "could not re-check push candidates; pushes wait for their lease");
        return;
      }
      for (const t of tasks) {
        const c = found.get(t.userId);
        const cursor = c ? Math.max(c.deliveredSeq, c.readSeq) : Infinity;
        if (cursor >= t.upToSeq) {
          cancel.push(t);
        } else {
          keep.push({ ...t, count: Math.max(1, Math.min(t.count, t.upToSeq - cursor)) });
        }
      }
    });
    // 2. "Do not disturb", and the privacy setting.
    const settings = await this.deps.store.settingsOf([...new Set(keep.map((t) => t.userId))]);
    const toSend: PushTask[] = [];
    for (const t of keep) {
      const muted = settings.get(t.userId)?.mutedUntilMs;
      if (muted !== undefined && muted > now) cancel.push(t);
      else toSend.push(t);
    }
    if (cancel.length > 0) this.stats.pushesCancelled += await this.deps.store.cancelTasks(cancel, now);
    if (toSend.length === 0) return;

    // 3. Names (one directory call per round) and devices (one query).
    const named = toSend.filter((t) => settings.get(t.userId)?.privacy !== "none").map((t) => t.senderId);
    let names = new Map<string, string>();
    if (named.length > 0) {
      try {
        names = await this.deps.users.displayNames([...new Set(named)], this.abort.signal);
      } catch (err) {
        log.warn({ err }, "could not look up sender names; pushes go out without them");
      }
    }
    const devices = new Map(
      (await this.deps.store.devicesByIds([...new Set(toSend.flatMap((t) => t.deviceIds))])).map((d) => [d.deviceId, d]),
    );

    // 4. Send every (task, device) with bounded concurrency.
    interface Send {
      task: PushTask;
      device: Device;
      outcome?: SendOutcome;
    }
    const sends: Send[] = [];
    for (const task of toSend) {
      for (const id of task.deviceIds) {
        const device = devices.get(id);
        // Gone (unregistered, moved to another user): nothing to do for it.
        if (device && device.userId === task.userId) sends.push({ task, device });
      }
    }
    await inParallel(sends, this.opts.sendConcurrency ?? 32, async (s) => {
      const push = renderPush({
        privacy: settings.get(s.task.userId)?.privacy ?? "full",
        kind: s.task.kind,
        conversationName: s.task.conversationName,
        senderName: names.get(s.task.senderId),
        preview: s.task.preview,
        count: s.task.count,
        conversationId: s.task.conversationId,
        seq: s.task.upToSeq,
        messageId: s.task.messageId,
        pushId: s.task.pushId,
      });
      s.outcome = await this.sendOne(s.device, push);
    });

    // 5. Record the outcomes, per task.
    const invalid: Device[] = [];
    const byTask = groupBy(sends, (s) => `${s.task.userId}/${s.task.conversationId}`);
    const completions = toSend.map((task) => {
      const mine = byTask.get(`${task.userId}/${task.conversationId}`) ?? [];
      const attempt = task.attempts + 1;
      const exhausted = attempt >= this.opts.maxAttempts;
      const done: CompleteTask = { retry: [], nextAttemptAtMs: now, lastError: "", deadLetters: [] };
      let delay = 0;
      for (const s of mine) {
        const o = s.outcome!;
        switch (o.status) {
          case "sent":
            this.stats.sendsOk++;
            break;
          case "invalid-token":
            invalid.push(s.device);
            log.info({ deviceId: s.device.deviceId, platform: s.device.platform, reason: o.reason }, "push device removed: invalid token");
            break;
          case "failed":
            done.deadLetters.push({ deviceId: s.device.deviceId, platform: s.device.platform, reason: o.reason });
            break;
          case "retry":
            if (exhausted) {
              done.deadLetters.push({
                deviceId: s.device.deviceId,
                platform: s.device.platform,
                reason: `gave up after ${attempt} attempts: ${o.reason}`,
              });
            } else {
              this.stats.sendsRetried++;
              done.retry.push(s.device.deviceId);
              done.lastError = o.reason;
              const retryAfter = o.retryAfterMs === undefined ? undefined : Math.min(o.retryAfterMs, PUSH_TTL_SECONDS * 1000);
              delay = Math.max(
                delay,
                nextAttemptDelay(
                  { baseMs: this.opts.retryBaseMs, maxMs: this.opts.retryMaxMs, attempt, retryAfterMs: retryAfter },
                  this.random,
                ),
              );
            }
            break;
        }
      }
      done.nextAttemptAtMs = now + delay;
      this.stats.deadLettered += done.deadLetters.length;
      for (const d of done.deadLetters) {
        log.warn({ userId: task.userId, conversationId: task.conversationId, deviceId: d.deviceId, reason: d.reason }, "push dead-lettered");
      }
      return { task, done };
    });
    if (invalid.length > 0) {
      this.stats.devicesRemoved += await this.deps.store.removeDevices(
        invalid.map((d) => ({ deviceId: d.deviceId, updatedAtMs: d.updatedAtMs })),
      );
    }
    await inParallel(completions, COMPLETIONS_IN_PARALLEL, ({ task, done }) => this.deps.store.completeTask(task, done, this.clock()));
  }

  /** The candidates among the tasks' users (one call per conversation and 1,000 users), by user id. */
  private async currentCandidates(conversationId: string, tasks: PushTask[]): Promise<Map<string, PushCandidate>> {
    const found = new Map<string, PushCandidate>();
    const users = [...new Set(tasks.map((t) => t.userId))];
    const seq = Math.max(...tasks.map((t) => t.upToSeq));
    for (let i = 0; i < users.length; i += CANDIDATE_PAGE) {
      const page = await this.deps.candidates.candidates(
        { conversationId, seq, userIds: users.slice(i, i + CANDIDATE_PAGE), excludeUserIds: [], afterUserId: "", limit: CANDIDATE_PAGE },
        this.abort.signal,
      );
      for (const c of page.candidates) found.set(c.userId, c);
    }
    return found;
  }

  private async sendOne(device: Device, push: ReturnType<typeof renderPush>): Promise<SendOutcome> {
    const target: DeviceTarget =
      device.platform === "webpush"
        ? {
            platform: "webpush",
            token: "",
            subscription: { endpoint: device.tokenKey, p256dh: device.p256dh, auth: device.auth },
            appId: device.appId,
          }
        : { platform: device.platform, token: device.tokenKey, appId: device.appId };
    if (device.platform === "webpush") {
      const problem = endpointProblem(this.opts.webPushAllowedHosts, device.tokenKey);
      if (problem) return { status: "invalid-token", reason: `web push endpoint ${problem}` };
    }
    const sender = this.deps.senders[device.platform];
    try {
      return await sender.send(target, push, this.abort.signal);
    } catch (err) {
      // Senders classify their errors; a throw is a bug or an unexpected failure: try again later.
      return { status: "retry", reason: `sender error: ${(err as Error).message}` };
    }
  }

  private async maybePrune(): Promise<void> {
    const now = this.clock();
    if (now - this.lastPruneMs < PRUNE_EVERY_MS) return;
    this.lastPruneMs = now;
    try {
      await this.deps.store.pruneDeadLetters(now - (this.opts.deadLetterRetentionMs ?? 30 * 24 * 3600_000));
    } catch (err) {
      this.deps.logger.warn({ err }, "could not prune dead letters");
    }
  }
}

function groupBy<T>(items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = out.get(k);
    if (list) list.push(item);
    else out.set(k, [item]);
  }
  return out;
}

/** Runs `fn` over `items` with at most `limit` at once; rejects with the first error after all settled. */
async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.err;
}
