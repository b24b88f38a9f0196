/**
 * Benchmark: 1:1 messages through the cluster on the real backends (send on one
 * gateway → router → message store (Cassandra) → receive on another gateway), side by
 * side with a bare uWebSockets.js relay run in the same process with the same client
 * load. Reports messages/s, p50/p99 end-to-end latency, and server CPU-seconds, so
 * throughput per CPU-second can be compared.
 *
 *   node --import tsx tools/bench/one-to-one.ts [--pairs 50] [--messages 200] [--window 8]
 *        [--rate <msgs/s>]
 *
 * `--rate` drives an open loop instead: messages go out at that total rate (spread over
 * the pairs) whatever comes back, which is how p99 at a given share of peak load is
 * measured (first run without it to find the peak, then with half of it).
 *
 * `--telemetry off,metrics,tracing` measures the cost of telemetry (docs/observability.md):
 * the cluster is run once per mode (`--repeat N`: N rounds of all modes, alternating, so
 * drift hits every mode alike), without the relay baseline, and each mode is compared with
 * the first. `off`: PARLEY_METRICS=off, tracing off; `metrics`: metrics on (the default of
 * a process that starts telemetry); `tracing`: metrics on and every span exported over
 * OTLP/HTTP to a collector in this process that decodes and discards them; `tracing:10`:
 * the same with 10% of the traces sampled. Telemetry is started in each process by
 * `--import lib/telemetry/register.ts`. Each run first sends `--warmup` messages per pair
 * (default 20 here, 0 otherwise) that are not measured.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { api, FrameClient } from "../e2e/harness.js";
import { ensureInfra, startCluster } from "../cluster/cluster.js";
import { startOtlpCollector, type OtlpCollector } from "../../lib/telemetry/otlp-collector.js";
import { benchLogging, meanBatchSizes, scrapeBatchCounts } from "./batch-sizes.js";
import { backendPids, benchNodeArgs, cpuBetween, cpuSeconds, percentile, snapshotCpu } from "./cpu.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    pairs: { type: "string", default: "50" },
    messages: { type: "string", default: "200" },
    window: { type: "string", default: "8" },
    rate: { type: "string" },
    telemetry: { type: "string" },
    repeat: { type: "string", default: "1" },
    warmup: { type: "string" },
    batches: { type: "boolean", default: false },
  },
});
/** --batches: also report the mean batch size of each hop (the cluster then logs at info). */
const BATCHES = values.batches;
const PAIRS = Number(values.pairs);
const MESSAGES = Number(values.messages);
const WINDOW = Number(values.window);
const RATE = values.rate === undefined ? undefined : Number(values.rate);
/** `tracing` samples every message; `tracing:10` keeps 10% of the traces. */
type TelemetryMode = "off" | "metrics" | "tracing" | `tracing:${number}`;
const MODES = (values.telemetry?.split(",").map((m) => m.trim()).filter(Boolean) ?? []) as TelemetryMode[];
for (const m of MODES) if (!/^(off|metrics|tracing(:\d{1,3})?)$/.test(m)) throw new Error(`--telemetry: unknown mode ${m} (off, metrics, tracing, tracing:<percent>)`);
const REPEAT = Number(values.repeat);
/** Messages per pair sent (and not measured) before the measured ones: JIT, lazily loaded code, connections. */
const WARMUP = Number(values.warmup ?? (MODES.length > 0 ? 20 : 0));

interface Result {
  name: string;
  delivered: number;
  seconds: number;
  serverCpuSeconds: number;
  /** CPU of the backend servers (Cassandra, Postgres, Redis, etcd) over the same run; Parley only. */
  backendCpuSeconds?: number;
  latenciesMs: number[];
}

function report(r: Result) {
  const sorted = [...r.latenciesMs].sort((a, b) => a - b);
  return {
    name: r.name,
    delivered: r.delivered,
    msgsPerSecond: Math.round(r.delivered / r.seconds),
    p50Ms: +percentile(sorted, 50).toFixed(2),
    p99Ms: +percentile(sorted, 99).toFixed(2),
    serverCpuSeconds: +r.serverCpuSeconds.toFixed(2),
    msgsPerCpuSecond: Math.round(r.delivered / r.serverCpuSeconds),
    ...(r.backendCpuSeconds === undefined
      ? {}
      : {
          backendCpuSeconds: +r.backendCpuSeconds.toFixed(2),
          msgsPerCpuSecondWithBackends: Math.round(r.delivered / (r.serverCpuSeconds + r.backendCpuSeconds)),
        }),
  };
}

/**
 * Drives P sender→receiver pairs: each sender keeps at most WINDOW messages not yet
 * received by its peer; the body carries the send time. Resolves when all arrived.
 */
async function drive(
  senders: ((body: string) => void)[],
  onReceive: (pair: number, handler: (body: string) => void) => void,
  messages = MESSAGES,
): Promise<{ seconds: number; latencies: number[] }> {
  return RATE === undefined ? driveWindowed(senders, onReceive, messages) : driveAtRate(senders, onReceive, RATE, messages);
}

/**
 * Open loop: sends at `rate` messages per second in total, round-robin over the pairs,
 * on a 5 ms tick (so a slow server does not slow the offered load down). Resolves when
 * every message arrived, or rejects after a deadline with how many did.
 */
async function driveAtRate(
  senders: ((body: string) => void)[],
  onReceive: (pair: number, handler: (body: string) => void) => void,
  rate: number,
  messages: number,
): Promise<{ seconds: number; latencies: number[] }> {
  const total = senders.length * messages;
  const latencies: number[] = [];
  const started = performance.now();
  return new Promise((resolve, reject) => {
    for (let pair = 0; pair < senders.length; pair++) {
      onReceive(pair, (body) => {
        latencies.push(performance.now() - Number(body));
        if (latencies.length === total) {
          clearInterval(tick);
          clearTimeout(deadline);
          resolve({ seconds: (performance.now() - started) / 1000, latencies });
        }
      });
    }
    let sent = 0;
    const tick = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
      for (; sent < due; sent++) senders[sent % senders.length]!(`${performance.now()}`);
    }, 5);
    const deadline = setTimeout(() => {
      clearInterval(tick);
      reject(new Error(`open loop at ${rate}/s: ${latencies.length} of ${total} arrived before the deadline`));
    }, (total / rate) * 1000 + 60_000);
  });
}

async function driveWindowed(
  senders: ((body: string) => void)[],
  onReceive: (pair: number, handler: (body: string) => void) => void,
  messages: number,
): Promise<{ seconds: number; latencies: number[] }> {
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(
    senders.map(
      (send, pair) =>
        new Promise<void>((resolve) => {
          let sent = 0;
          let received = 0;
          const pump = () => {
            while (sent < messages && sent - received < WINDOW) send(`${performance.now()}`), sent++;
          };
          onReceive(pair, (body) => {
            latencies.push(performance.now() - Number(body));
            received++;
            if (received === messages) resolve();
            else pump();
          });
          pump();
        }),
    ),
  );
  return { seconds: (performance.now() - started) / 1000, latencies };
}

/** Environment and node flags of a telemetry mode (none: the processes as they start by default). */
function telemetrySetup(mode: TelemetryMode | undefined, collector: OtlpCollector | undefined): { env: Record<string, string>; nodeArgs: string[] } {
  if (mode === undefined) return { env: {}, nodeArgs: [] };
  const nodeArgs = mode === "off" ? [] : ["--import", "tsx", "--import", `${ROOT}lib/telemetry/register.ts`];
  const tracing = mode.startsWith("tracing");
  const env: Record<string, string> = { PARLEY_METRICS: mode === "off" ? "off" : "on", PARLEY_TRACING: tracing ? "otlp" : "off" };
  if (tracing) {
    env.OTEL_EXPORTER_OTLP_ENDPOINT = collector!.endpoint;
    env.PARLEY_TRACING_SAMPLE_PERCENT = mode.split(":")[1] ?? "100";
  }
  return { env, nodeArgs };
}

async function benchParley(mode?: TelemetryMode, collector?: OtlpCollector): Promise<Result> {
  const telemetry = telemetrySetup(mode, collector);
  const logging = benchLogging(BATCHES);
  const cluster = await startCluster({
    backends: ensureInfra(),
    extraEnv: {
      PARLEY_FRAMES_PER_SECOND: "1000000",
      PARLEY_FRAME_BURST: "1000000",
      ...telemetry.env,
    },
    // BENCH_NODE_ARGS="--cpu-prof" BENCH_NODE_KIND=messagestore,router: flags for those kinds only.
    nodeArgs: (kind) => [...telemetry.nodeArgs, ...benchNodeArgs(kind)],
    logLevel: logging.logLevel,
    onLine: logging.onLine,
  });
  try {
    const [g1, g2] = cluster.discovery.list("gateway");
    const ws = (g: typeof g1) => `${g!.publicUrl!.replace(/^http/, "ws")}/ws`;
    const password = randomUUID();
    const pairs = await Promise.all(
      Array.from({ length: PAIRS }, async (_, i) => {
        const a = await api(g1!.publicUrl!).auth.signUp({ username: `bench-a${i}-${randomUUID().slice(0, 6)}`, password });
        const b = await api(g1!.publicUrl!).auth.signUp({ username: `bench-b${i}-${randomUUID().slice(0, 6)}`, password });
        const { conversation } = await api(g1!.publicUrl!, a.tokens!.accessToken).chat.openDirectConversation({
          peer: { case: "peerUserId", value: b.user!.userId },
        });
        const sender = await FrameClient.connect(ws(g1), a.tokens!.accessToken);
        const receiver = await FrameClient.connect(ws(g2), b.tokens!.accessToken);
        return { sender, receiver, conversationId: conversation!.conversationId };
      }),
    );
    const senders = pairs.map((p) => (body: string) =>
      p.sender.send({ kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: p.conversationId, body } } }),
    );
    const listeners: (() => void)[] = [];
    const onReceive = (i: number, handler: (body: string) => void) => {
      const ws = pairs[i]!.receiver.ws;
      const listener = () => {
        const f = pairs[i]!.receiver.frames.pop();
        if (f?.kind.case === "message") handler(f.kind.value.body);
      };
      ws.on("message", listener);
      listeners.push(() => ws.off("message", listener));
    };
    if (WARMUP > 0) {
      await drive(senders, onReceive, WARMUP);
      for (const off of listeners.splice(0)) off();
    }
    const procs = cluster.processes.map((p) => ({ name: p.name, pid: p.child.pid! }));
    const pids = backendPids(ROOT);
    const before = snapshotCpu(procs, pids);
    const batchesBefore = BATCHES ? await scrapeBatchCounts(logging.urls) : undefined;
    const { seconds, latencies } = await drive(senders, onReceive);
    const cpu = cpuBetween(before, snapshotCpu(procs, pids));
    console.error("server CPU-seconds by process:", cpu.line);
    if (batchesBefore) console.error("mean batch sizes:", meanBatchSizes(batchesBefore, await scrapeBatchCounts(logging.urls)));
    for (const p of pairs) {
      const errors = p.sender.frames.filter((f) => f.kind.case === "error");
      if (errors.length > 0) throw new Error(`send errors: ${errors.length}`);
      await p.sender.close();
      await p.receiver.close();
    }
    const name = `parley cluster (2 gw, 2 routers, 2 stores; Cassandra)${mode ? ` telemetry=${mode}` : ""}`;
    return { name, delivered: latencies.length, seconds, serverCpuSeconds: cpu.nodeSeconds, backendCpuSeconds: cpu.backendSeconds, latenciesMs: latencies };
  } finally {
    await cluster.stop();
  }
}

async function benchRelay(): Promise<Result> {
  const child = spawn(process.execPath, ["--import", "tsx", "tools/bench/relay-baseline.ts"], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  try {
    const { port } = await new Promise<{ port: number }>((resolve) =>
      createInterface({ input: child.stdout! }).once("line", (l) => resolve(JSON.parse(l))),
    );
    const open = (id: number) =>
      new Promise<WebSocket>((resolve, reject) => {
        const w = new WebSocket(`ws://127.0.0.1:${port}/ws?id=${id}`);
        w.once("open", () => resolve(w));
        w.once("error", reject);
      });
    const pairs = await Promise.all(
      Array.from({ length: PAIRS }, async (_, i) => ({ sender: await open(2 * i), receiver: await open(2 * i + 1), target: 2 * i + 1 })),
    );
    const cpu0 = cpuSeconds(child.pid!);
    const { seconds, latencies } = await drive(
      pairs.map((p) => (body) => p.sender.send(`${p.target}|${body}`)),
      (i, handler) => pairs[i]!.receiver.on("message", (d: Buffer) => handler(d.toString())),
    );
    const cpu1 = cpuSeconds(child.pid!);
    for (const p of pairs) {
      p.sender.close();
      p.receiver.close();
    }
    return { name: "bare uWebSockets.js relay (baseline)", delivered: latencies.length, seconds, serverCpuSeconds: cpu1 - cpu0, latenciesMs: latencies };
  } finally {
    child.kill("SIGTERM");
  }
}

if (MODES.length > 0) {
  // The cost of telemetry: the same load once per mode (and round), compared with the first mode.
  // BENCH_SPAN_STATS=1 keeps the spans and prints how many of each kind every process made.
  const keep = process.env.BENCH_SPAN_STATS === "1";
  const collector = MODES.some((m) => m.startsWith("tracing")) ? await startOtlpCollector({ keep }) : undefined;
  const runs: (ReturnType<typeof report> & { mode: TelemetryMode; cpuMsPerMessage: number })[] = [];
  try {
    for (let round = 0; round < REPEAT; round++) {
      for (const mode of MODES) {
        const before = collector?.counts.spans ?? 0;
        const r = report(await benchParley(mode, collector));
        runs.push({ ...r, mode, cpuMsPerMessage: +((1000 * r.serverCpuSeconds) / r.delivered).toFixed(4) });
        if (keep && collector) {
          const byName = new Map<string, number>();
          for (const sp of collector.spans.splice(0)) byName.set(`${sp.service} ${sp.name}`, (byName.get(`${sp.service} ${sp.name}`) ?? 0) + 1);
          console.error([...byName].sort((a, b) => b[1] - a[1]).map(([k, n]) => `  ${n}\t${k}`).join("\n"));
        }
        if (mode.startsWith("tracing")) console.error(`tracing: ${collector!.counts.spans - before} spans exported (${((collector!.counts.spans - before) / (r.delivered + WARMUP * PAIRS)).toFixed(1)} per message)`);
      }
    }
  } finally {
    await collector?.close();
  }
  const byMode = new Map<TelemetryMode, typeof runs>();
  for (const r of runs) byMode.set(r.mode, [...(byMode.get(r.mode) ?? []), r]);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const summary = [...byMode].map(([mode, rs]) => ({
    mode,
    msgsPerSecond: Math.round(mean(rs.map((r) => r.msgsPerSecond))),
    cpuMsPerMessage: +mean(rs.map((r) => r.cpuMsPerMessage)).toFixed(4),
    p50Ms: +mean(rs.map((r) => r.p50Ms)).toFixed(2),
    p99Ms: +mean(rs.map((r) => r.p99Ms)).toFixed(2),
  }));
  const base = summary[0]!;
  console.log(JSON.stringify({ pairs: PAIRS, messagesPerPair: MESSAGES, warmupPerPair: WARMUP, window: RATE === undefined ? WINDOW : undefined, rate: RATE, repeat: REPEAT, runs, summary }, null, 2));
  for (const s of summary.slice(1)) {
    console.log(
      `\n${s.mode} / ${base.mode}: throughput ${(s.msgsPerSecond / base.msgsPerSecond).toFixed(3)}x, ` +
        `server CPU per message ${(s.cpuMsPerMessage / base.cpuMsPerMessage).toFixed(3)}x ` +
        `(${s.cpuMsPerMessage} vs ${base.cpuMsPerMessage} ms), p99 ${(s.p99Ms / base.p99Ms).toFixed(2)}x`,
    );
  }
  process.exit(0);
}

const relay = report(await benchRelay());
const parley = report(await benchParley());
console.log(JSON.stringify({ pairs: PAIRS, messagesPerPair: MESSAGES, window: RATE === undefined ? WINDOW : undefined, rate: RATE, results: [relay, parley] }, null, 2));
console.log(
  `\nparley / relay: throughput ${(parley.msgsPerSecond / relay.msgsPerSecond).toFixed(3)}x, ` +
    `msgs per server CPU-second ${(parley.msgsPerCpuSecond / relay.msgsPerCpuSecond).toFixed(3)}x ` +
    `(${(parley.msgsPerCpuSecondWithBackends! / relay.msgsPerCpuSecond).toFixed(3)}x counting the backends), ` +
    `p99 ${(parley.p99Ms / relay.p99Ms).toFixed(1)}x`,
);
process.exit(0);
