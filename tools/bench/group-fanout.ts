/**
 * Benchmark: group fan-out through the cluster on the real backends, side by side with a
 * bare uWebSockets.js relay publishing to one topic, with the same client load in the
 * same run. For each group size, `--online` members are connected (alternately to the
 * two gateways; all of them when the group is smaller) and `--senders` of them send
 * `--messages` each, at most `--window` in flight per sender (a message counts as
 * landed when one chosen other member got it). Every message is stored (Cassandra)
 * and reaches every other connected member.
 *
 * Reports delivered messages per second and per server CPU-second (the node
 * processes; and with the backend servers too: Cassandra, Postgres, Redis, etcd), and
 * p50/p99 latency from send to each delivery. `BENCH_NODE_ARGS` / `BENCH_NODE_KIND`
 * pass flags (e.g. --cpu-prof) to the cluster's processes of one kind.
 *
 *   node --import tsx tools/bench/group-fanout.ts [--sizes 100,5000] [--online 1000]
 *        [--senders 8] [--messages 50] [--window 32]
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { ensureInfra, startCluster, type Cluster } from "../cluster/cluster.js";
import { FrameClient } from "../e2e/harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../e2e/population.js";
import { benchLogging, meanBatchSizes, scrapeBatchCounts } from "./batch-sizes.js";
import { backendPids, benchNodeArgs, cpuBetween, cpuSeconds, percentile, snapshotCpu } from "./cpu.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    sizes: { type: "string", default: "100,5000" },
    online: { type: "string", default: "1000" },
    senders: { type: "string", default: "8" },
    messages: { type: "string", default: "50" },
    window: { type: "string", default: "32" },
    batches: { type: "boolean", default: false },
  },
});
const SIZES = values.sizes.split(",").map(Number);
const ONLINE = Number(values.online);
const SENDERS = Number(values.senders);
const MESSAGES = Number(values.messages);
const WINDOW = Number(values.window);
const DEADLINE_MS = 600_000;
/** --batches: also report the mean batch size of each hop (the cluster then logs at info). */
const BATCHES = values.batches;
const logging = benchLogging(BATCHES);

interface Run {
  seconds: number;
  latencies: number[];
  delivered: number;
}

interface Result {
  name: string;
  groupSize: number;
  online: number;
  delivered: number;
  deliveredPerSecond: number;
  serverCpuSeconds: number;
  deliveredPerCpuSecond: number;
  /** Including the backend servers (Parley only). */
  withBackendsCpuSeconds?: number;
  deliveredPerCpuSecondWithBackends?: number;
  p50Ms: number;
  p99Ms: number;
}

function result(name: string, groupSize: number, online: number, run: Run, cpu: number, backends?: number): Result {
  const sorted = [...run.latencies].sort((a, b) => a - b);
  return {
    ...(backends === undefined
      ? {}
      : { withBackendsCpuSeconds: +(cpu + backends).toFixed(2), deliveredPerCpuSecondWithBackends: Math.round(run.delivered / (cpu + backends)) }),
    name,
    groupSize,
    online,
    delivered: run.delivered,
    deliveredPerSecond: Math.round(run.delivered / run.seconds),
    serverCpuSeconds: +cpu.toFixed(2),
    deliveredPerCpuSecond: Math.round(run.delivered / cpu),
    p50Ms: +percentile(sorted, 50).toFixed(2),
    p99Ms: +percentile(sorted, 99).toFixed(2),
  };
}

/**
 * The body of a bench message, `~<sender>|<send time>~`, read back straight from the
 * received bytes (the protobuf frame holds the body as plain UTF-8), so that the one
 * client process, which receives every delivery, spends little CPU per frame and the
 * measured latency is the servers', not the client's.
 */
function bodyOf(data: Buffer): string | undefined {
  const start = data.indexOf(0x7e);
  const end = start < 0 ? -1 : data.indexOf(0x7e, start + 1);
  return end < 0 ? undefined : data.toString("latin1", start + 1, end);
}

/**
 * Senders 0..S-1 are members 0..S-1. Bodies are `~<sender>|<send time>~`. A sender's
 * message has landed when member (sender + 1) got it; each sender keeps at most WINDOW
 * not landed. Resolves when every other member got every message.
 */
function drive(
  online: number,
  send: (sender: number, body: string) => void,
  listen: (member: number, onBody: (body: string) => void) => void,
): Promise<Run> {
  const expected = SENDERS * MESSAGES * (online - 1);
  const latencies: number[] = [];
  const sent = new Array<number>(SENDERS).fill(0);
  const landed = new Array<number>(SENDERS).fill(0);
  return new Promise<Run>((resolve, reject) => {
    const started = performance.now();
    const timer = setTimeout(() => reject(new Error(`deadline: ${latencies.length} of ${expected} delivered`)), DEADLINE_MS);
    const pump = (s: number) => {
      while (sent[s]! < MESSAGES && sent[s]! - landed[s]! < WINDOW) {
        sent[s]!++;
        send(s, `~${s}|${performance.now()}~`);
      }
    };
    for (let m = 0; m < online; m++) {
      listen(m, (body) => {
        const bar = body.indexOf("|");
        const s = Number(body.slice(0, bar));
        latencies.push(performance.now() - Number(body.slice(bar + 1)));
        if (m === (s + 1) % online) {
          landed[s]!++;
          pump(s);
        }
        if (latencies.length === expected) {
          clearTimeout(timer);
          resolve({ seconds: (performance.now() - started) / 1000, latencies, delivered: latencies.length });
        }
      });
    }
    for (let s = 0; s < SENDERS; s++) pump(s);
  });
}

async function benchRelay(groupSize: number): Promise<Result> {
  const online = Math.min(groupSize, ONLINE);
  const child = spawn(process.execPath, ["--import", "tsx", "tools/bench/relay-baseline.ts"], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  try {
    const { port } = await new Promise<{ port: number }>((resolve) =>
      createInterface({ input: child.stdout! }).once("line", (l) => resolve(JSON.parse(l))),
    );
    const sockets = await mapLimit(
      Array.from({ length: online }, (_, i) => i),
      50,
      (i) =>
        new Promise<WebSocket>((resolve, reject) => {
          const w = new WebSocket(`ws://127.0.0.1:${port}/ws?id=${i}&group=1`);
          w.once("open", () => resolve(w));
          w.once("error", reject);
        }),
    );
    const cpu0 = cpuSeconds(child.pid!);
    const run = await drive(
      online,
      (s, body) => sockets[s]!.send(`*|${body}`),
      (m, onBody) =>
        sockets[m]!.on("message", (d: Buffer) => {
          const body = bodyOf(d);
          if (body) onBody(body);
        }),
    );
    const cpu = cpuSeconds(child.pid!) - cpu0;
    for (const w of sockets) w.close();
    return result("bare uWebSockets.js relay, one topic (baseline)", groupSize, online, run, cpu);
  } finally {
    child.kill("SIGTERM");
  }
}

async function benchParley(cluster: Cluster, accounts: Account[], groupSize: number): Promise<Result> {
  const online = Math.min(groupSize, ONLINE);
  const gateways = cluster.discovery.list("gateway");
  const publicUrl = gateways[0]!.publicUrl!;
  const members = accounts.slice(0, groupSize);
  const conversationId = await createGroup(publicUrl, members[0]!, members, `bench ${groupSize}`);
  const clients = await mapLimit(members.slice(0, online), 20, (m, i) =>
    FrameClient.connect(`${gateways[i % gateways.length]!.publicUrl!.replace(/^http/, "ws")}/ws`, m.token),
  );
  const procs = cluster.processes.map((p) => ({ name: p.name, pid: p.child.pid! }));
  const pids = backendPids(ROOT);
  const before = snapshotCpu(procs, pids);
  const batchesBefore = BATCHES ? await scrapeBatchCounts(logging.urls) : undefined;
  const run = await drive(
    online,
    (s, body) => clients[s]!.send({ kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } }),
    (m, onBody) => {
      // Past Hello the harness's decoding listener goes: frames are read cheaply.
      clients[m]!.ws.removeAllListeners("message");
      clients[m]!.ws.on("message", (d: Buffer) => {
        const body = bodyOf(d);
        if (body) onBody(body);
      });
    },
  );
  const cpu = cpuBetween(before, snapshotCpu(procs, pids));
  console.error(`group of ${groupSize}: server CPU-seconds by process:`, cpu.line);
  if (batchesBefore) console.error(`group of ${groupSize}: mean batch sizes:`, meanBatchSizes(batchesBefore, await scrapeBatchCounts(logging.urls)));
  await Promise.all(clients.map((c) => c.close()));
  return result("parley cluster (2 gw, 2 routers, 2 stores; Cassandra)", groupSize, online, run, cpu.nodeSeconds, cpu.backendSeconds);
}

const results: Result[] = [];
for (const size of SIZES) results.push(await benchRelay(size));
const cluster = await startCluster({
  backends: ensureInfra(),
  extraEnv: {
    PARLEY_FRAMES_PER_SECOND: "1000000",
    PARLEY_FRAME_BURST: "1000000",
    ...CHEAP_PASSWORD_HASHING,
  },
  nodeArgs: benchNodeArgs,
  logLevel: logging.logLevel,
  onLine: logging.onLine,
});
try {
  const accounts = await signUpMany(cluster.discovery.list("gateway")[0]!.publicUrl!, Math.max(...SIZES), "bench");
  for (const size of SIZES) results.push(await benchParley(cluster, accounts, size));
} finally {
  await cluster.stop();
}
console.log(JSON.stringify({ senders: SENDERS, messagesPerSender: MESSAGES, window: WINDOW, results }, null, 2));
for (const size of SIZES) {
  const [relay, parley] = results.filter((r) => r.groupSize === size);
  console.log(
    `group of ${size} (${parley!.online} online): parley / relay: delivered/s ${(parley!.deliveredPerSecond / relay!.deliveredPerSecond).toFixed(3)}x, ` +
      `delivered per server CPU-second ${(parley!.deliveredPerCpuSecond / relay!.deliveredPerCpuSecond).toFixed(3)}x ` +
      `(${(parley!.deliveredPerCpuSecondWithBackends! / relay!.deliveredPerCpuSecond).toFixed(3)}x counting the backends), p99 ${(parley!.p99Ms / relay!.p99Ms).toFixed(1)}x`,
  );
}
process.exit(0);
