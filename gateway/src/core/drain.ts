import { envInt, ConfigError, type Env } from "../../../lib/env.js";
import type { Logger } from "../../../lib/logger.js";
import type { Connection } from "./connection.js";
import { CloseCode, DRAINING_REASON } from "./protocol.js";

/**
 * The graceful drain of a gateway (SIGTERM, a rolling deploy), in this order:
 *
 * 1. not ready (`/readyz` 503, gRPC health NOT_SERVING) and no new connection (upgrades
 *    answer 503), then leave discovery and wait until the removal is visible, so
 *    AssignGateway sends nobody here any more;
 * 2. close the open connections with 4012 (DRAINING: "reconnect elsewhere now"), in
 *    batches spread evenly over `spreadMs`, so their reconnects and resumes do not hit
 *    the other gateways all at once. One timer for the whole drain, none per connection.
 *    A connection with sends in flight is closed once they are all acked (a send acked
 *    is stored: nothing acknowledged is lost); sends it receives after its close began
 *    are refused with an UNAVAILABLE error frame carrying their client_msg_id (not
 *    stored: the client sends them again, same id, after reconnecting);
 * 3. the core's own drain: whatever is still open is closed, the registry removals are
 *    flushed, presence, read cursors and receipts write their last batch.
 *
 * Everything is bounded by `deadlineMs` from the start: connections still waiting for an
 * ack then are cut (their sends were never acked; the client resends them).
 */
export interface DrainTarget {
  stopAccepting(): void;
  openConnections(): Connection[];
  drain(): Promise<void>;
}

export interface DrainDeps {
  core: DrainTarget;
  /** Marks the gateway not ready (readyz 503, gRPC health NOT_SERVING). */
  notReady(): void;
  /** Leaves discovery and resolves once peers no longer see this gateway (bounded by the caller). */
  deregister(): Promise<void>;
  logger: Logger;
}

export interface DrainOptions {
  /** Closes are spread evenly over this long (ms); 0 closes everything at once. */
  spreadMs: number;
  /** The whole drain ends by then (ms from its start), whatever is still open. */
  deadlineMs: number;
  /** Least time between two batches (ms). Default 100. */
  tickMs?: number;
}

export interface DrainResult {
  /** Connections open when the closing began. */
  connections: number;
  /** Closed gently (after their sends in flight were acked). */
  closed: number;
  /** Still waiting for an ack at the deadline: cut. */
  cut: number;
  /** How many batches, and the time between two (ms). */
  batches: number;
  intervalMs: number;
  elapsedMs: number;
}

export interface DrainConfig {
  /** `PARLEY_GATEWAY_DRAIN_MS`: the closes of a drain are spread over this long. */
  drainMs: number;
  /** `PARLEY_GATEWAY_DRAIN_DEADLINE_MS`: the whole stop ends by then, or the process exits with code 1. */
  deadlineMs: number;
}

/** The drain settings of a gateway process (gateway/src/main.ts). */
export function drainConfig(env: Env): DrainConfig {
  const drainMs = envInt(env, "PARLEY_GATEWAY_DRAIN_MS", 5000, 0, 600_000);
  const deadlineMs = envInt(env, "PARLEY_GATEWAY_DRAIN_DEADLINE_MS", drainMs + 10_000, 1000, 3_600_000);
  if (deadlineMs <= drainMs) throw new ConfigError("PARLEY_GATEWAY_DRAIN_DEADLINE_MS must be above PARLEY_GATEWAY_DRAIN_MS");
  return { drainMs, deadlineMs };
}

/** The batches of a drain: how many, and the time between two. */
export function drainPlan(connections: number, spreadMs: number, tickMs = 100): { batches: number; intervalMs: number } {
  const batches = Math.max(1, Math.min(connections, Math.floor(spreadMs / tickMs)));
  return { batches, intervalMs: batches > 1 ? spreadMs / batches : 0 };
}

export async function drainGateway(deps: DrainDeps, o: DrainOptions): Promise<DrainResult> {
  const started = performance.now();
  const left = () => Math.max(0, o.deadlineMs - (performance.now() - started));
  const { core, logger } = deps;
  deps.notReady();
  core.stopAccepting();
  await bounded(
    deps.deregister().catch((err: unknown) => logger.warn({ err }, "leaving discovery failed")),
    left(),
  );

  const conns = core.openConnections();
  const { batches, intervalMs } = drainPlan(conns.length, o.spreadMs, o.tickMs);
  logger.info({ connections: conns.length, batches, intervalMs: Math.round(intervalMs) }, "draining: closing connections");
  let closed = 0;
  let timer: NodeJS.Timeout | undefined;
  const all = new Promise<void>((resolve) => {
    let pending = conns.length;
    if (pending === 0) return resolve();
    const done = () => {
      closed++;
      if (--pending === 0) resolve();
    };
    let batch = 0;
    const next = () => {
      timer = undefined;
      const from = Math.floor((batch * conns.length) / batches);
      const to = Math.floor(((batch + 1) * conns.length) / batches);
      batch++;
      for (let i = from; i < to; i++) closeGently(conns[i]!, done);
      if (batch < batches) timer = setTimeout(next, intervalMs);
    };
    next();
  });
  const finished = await bounded(all, left());
  clearTimeout(timer);
  const cut = conns.length - closed;
  if (!finished) logger.warn({ cut, deadlineMs: o.deadlineMs }, "drain deadline: cutting connections still waiting for acks");
  const last = core.drain().catch((err: unknown) => logger.error({ err }, "the core's drain failed"));
  if (!(await bounded(last, left()))) logger.warn("drain deadline: the last registry and presence writes did not finish");
  const result: DrainResult = {
    connections: conns.length,
    closed,
    cut,
    batches,
    intervalMs,
    elapsedMs: Math.round(performance.now() - started),
  };
  logger.info(result, "drained");
  return result;
}

/**
 * Closes `conn` with DRAINING once it has no send in flight; from now on its new sends
 * are refused (GatewayCore.send). Calls `done` once, when it closed it (or found it closed).
 */
function closeGently(conn: Connection, done: () => void): void {
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    conn.socket?.close(CloseCode.DRAINING, DRAINING_REASON);
    done();
  };
  conn.closing = finish;
  if (conn.closed || conn.inFlightSends === 0) finish();
}

/** Whether `p` settled within `ms` (it keeps running otherwise). */
async function bounded(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
