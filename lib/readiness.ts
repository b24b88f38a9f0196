import { ServingStatus, type HealthRegistry } from "./grpc-health.js";
import type { Discovery, ServiceKind } from "./discovery/discovery.js";
import { envInt, type Env } from "./env.js";
import type { ConnectionRegistry } from "./registry/connection-registry.js";
import type { SqlExecutor } from "./sql.js";

/**
 * Readiness: whether this process should be sent traffic now. A process is ready once it
 * started, while every backend it needs answers (each check within a short deadline),
 * and until it begins to drain; from then on it stays not ready. Liveness (`/healthz`)
 * is something else: the event loop answers, whatever the backends do.
 *
 * Probes may come in storms (every kubelet, load balancer and person with curl): a
 * report younger than `cacheMs` is reused, concurrent callers share one evaluation, and a
 * check whose previous call is still running (a hung backend) is not called again.
 */
export interface ReadinessCheck {
  /** Names the backend in reports: "postgres", "redis", "etcd", "cassandra", ... */
  name: string;
  /** Resolves when the backend answered; rejects when it did not. Aborted at the deadline. */
  check(signal: AbortSignal): Promise<unknown>;
}

export interface CheckResult {
  name: string;
  ok: boolean;
  /** How long the check took (ms, rounded to 0.1). */
  ms: number;
  /** Why it failed. */
  error?: string;
}

export type ReadinessState = "starting" | "serving" | "draining";

export interface ReadinessReport {
  ready: boolean;
  state: ReadinessState;
  /** The names of what is wrong: failing checks, or "starting" / "draining". */
  failing: string[];
  checks: CheckResult[];
  /** When the checks ran (clock ms). */
  checkedAtMs: number;
}

/** Anything that can say whether the process is ready (the ops server and the gateway port ask it). */
export interface ReadinessSource {
  report(): Promise<ReadinessReport>;
}

export interface ReadinessOptions {
  /** Deadline of each check (ms). Default 1,000. */
  timeoutMs?: number;
  /** A report younger than this is answered again without checking (ms). Default 1,000. */
  cacheMs?: number;
  clock?: () => number;
}

export interface ReadinessConfig {
  timeoutMs: number;
  cacheMs: number;
  /** How often the checks run in the background, so gRPC health follows the backends between probes (ms). */
  intervalMs: number;
}

/** `PARLEY_READINESS_TIMEOUT_MS`, `PARLEY_READINESS_CACHE_MS`, `PARLEY_READINESS_INTERVAL_MS`. */
export function readinessConfig(env: Env): ReadinessConfig {
  return {
    timeoutMs: envInt(env, "PARLEY_READINESS_TIMEOUT_MS", 1000, 10, 60_000),
    cacheMs: envInt(env, "PARLEY_READINESS_CACHE_MS", 1000, 0, 60_000),
    intervalMs: envInt(env, "PARLEY_READINESS_INTERVAL_MS", 5000, 100, 3_600_000),
  };
}

export class CheckTimeoutError extends Error {
  override readonly name = "CheckTimeoutError";
}

export class Readiness implements ReadinessSource {
  #checks: readonly ReadinessCheck[] = [];
  #state: ReadinessState = "starting";
  #last: ReadinessReport | undefined;
  #evaluation: Promise<ReadinessReport> | undefined;
  /** A check's call still running (past its deadline too): the next evaluation waits on it instead of calling again. */
  readonly #running = new Map<ReadinessCheck, Promise<unknown>>();
  readonly #listeners = new Set<(ready: boolean) => void>();
  #ready = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #timeoutMs: number;
  readonly #cacheMs: number;
  readonly #clock: () => number;
  /** Check calls made (tests, metrics). */
  calls = 0;

  constructor(o: ReadinessOptions = {}) {
    this.#timeoutMs = o.timeoutMs ?? 1000;
    this.#cacheMs = o.cacheMs ?? 1000;
    this.#clock = o.clock ?? Date.now;
  }

  get state(): ReadinessState {
    return this.#state;
  }

  /** Whether the last report said ready (false before the first one). */
  get ready(): boolean {
    return this.#ready;
  }

  /** The process has started: from now on it is ready while `checks` pass. Ignored once draining. */
  begin(checks: readonly ReadinessCheck[]): void {
    if (this.#state === "draining") return;
    this.#checks = checks;
    this.#state = "serving";
    this.#last = undefined;
  }

  /** The process drains: not ready from now on, for good; no more checks run. */
  drain(): void {
    if (this.#state === "draining") return;
    this.#state = "draining";
    this.close();
    this.#last = undefined;
    this.#set(false);
  }

  /** `listener(ready)` runs whenever readiness flips. Returns the unsubscribe. */
  onChange(listener: (ready: boolean) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * The current report: the cached one while fresh, else the checks run (once for all
   * concurrent callers). Never rejects.
   */
  report(): Promise<ReadinessReport> {
    if (this.#state !== "serving") return Promise.resolve(this.#fixed(this.#state));
    const last = this.#last;
    if (last && this.#clock() - last.checkedAtMs < this.#cacheMs) return Promise.resolve(last);
    return (this.#evaluation ??= this.#evaluate().finally(() => (this.#evaluation = undefined)));
  }

  /** Runs the checks every `intervalMs` in the background (one unref'd timer), so listeners follow the backends. */
  watch(intervalMs: number): void {
    if (this.#timer || this.#state === "draining") return;
    this.#timer = setInterval(() => void this.report(), intervalMs);
    this.#timer.unref();
  }

  /** Stops the background checks. */
  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #fixed(state: "starting" | "draining"): ReadinessReport {
    return { ready: false, state, failing: [state], checks: [], checkedAtMs: this.#clock() };
  }

  async #evaluate(): Promise<ReadinessReport> {
    const checks = this.#checks;
    const results = await Promise.all(checks.map((c) => this.#run(c)));
    const failing = results.filter((r) => !r.ok).map((r) => r.name);
    // A drain that began while the checks ran wins.
    if (this.#state !== "serving") return this.#fixed(this.#state);
    const report: ReadinessReport = { ready: failing.length === 0, state: "serving", failing, checks: results, checkedAtMs: this.#clock() };
    this.#last = report;
    this.#set(report.ready);
    return report;
  }

  async #run(c: ReadinessCheck): Promise<CheckResult> {
    const started = performance.now();
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new CheckTimeoutError(`no answer within ${this.#timeoutMs} ms`);
        abort.abort(err);
        reject(err);
      }, this.#timeoutMs);
    });
    let running = this.#running.get(c);
    if (!running) {
      this.calls++;
      try {
        running = Promise.resolve(c.check(abort.signal));
      } catch (err) {
        running = Promise.reject(err);
      }
      const p = running;
      this.#running.set(c, p);
      p.then(
        () => this.#running.delete(c),
        () => this.#running.delete(c),
      );
    }
    try {
      await Promise.race([running, deadline]);
      return { name: c.name, ok: true, ms: elapsed(started) };
    } catch (err) {
      return { name: c.name, ok: false, ms: elapsed(started), error: err instanceof Error ? err.message || err.name : String(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  #set(ready: boolean): void {
    if (ready === this.#ready) return;
    this.#ready = ready;
    for (const l of [...this.#listeners]) l(ready);
  }
}

function elapsed(since: number): number {
  return Math.round((performance.now() - since) * 10) / 10;
}

/** The HTTP answer to a readiness probe: 200 when ready, else 503; a JSON body naming what fails. */
export function readinessHttp(r: ReadinessReport): { status: number; body: string } {
  const status = r.ready ? "ready" : r.state === "serving" ? "not ready" : r.state;
  return {
    status: r.ready ? 200 : 503,
    body: JSON.stringify({ status, failing: r.failing, checks: r.checks }),
  };
}

/**
 * Makes the gRPC health statuses of `names` (and of the server, "") follow readiness:
 * SERVING while ready, NOT_SERVING otherwise. Returns the unsubscribe.
 */
export function followReadiness(health: HealthRegistry, names: readonly string[], readiness: Readiness): () => void {
  const apply = (ready: boolean) => {
    const status = ready ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    for (const name of ["", ...names]) health.set(name, status);
  };
  apply(readiness.ready);
  return readiness.onChange(apply);
}

/** An id no user or conversation has: readiness reads it to reach a backend without touching real data. */
export const PROBE_ID = "00000000-0000-0000-0000-000000000000";

/** `select 1` on a relational database. */
export function sqlCheck(name: string, sql: SqlExecutor): ReadinessCheck {
  return { name, check: () => sql.query("select 1") };
}

/** One lookup (one round trip) in the connection registry: Redis answers, or the memory one does. */
export function registryCheck(name: string, registry: Pick<ConnectionRegistry, "lookup">): ReadinessCheck {
  return { name, check: () => registry.lookup([PROBE_ID]) };
}

/**
 * The etcd check, when the discovery can be pinged (`ping(): Promise<unknown>`, one
 * round trip to its server); none for static discovery or none at all.
 */
export function discoveryChecks(discovery: object | undefined): ReadinessCheck[] {
  const ping = (discovery as { ping?: unknown } | undefined)?.ping;
  if (typeof ping !== "function") return [];
  return [{ name: "etcd", check: () => (ping as () => Promise<unknown>).call(discovery) }];
}

/**
 * Resolves once this process's own discovery view no longer lists `id` (after its
 * registration was closed), or after `timeoutMs`: etcd delivers the delete to every
 * watcher at about the same time, so peers have stopped picking this instance by then.
 * Returns whether it saw the removal.
 */
export function untilDeregistered(discovery: Discovery | undefined, kind: ServiceKind, id: string, timeoutMs: number): Promise<boolean> {
  if (!discovery || !discovery.resolve(kind, id)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (seen: boolean) => {
      unwatch();
      clearTimeout(timer);
      resolve(seen);
    };
    const unwatch = discovery.watch(kind, () => {
      if (!discovery.resolve(kind, id)) done(true);
    });
    const timer = setTimeout(() => done(false), timeoutMs);
  });
}
