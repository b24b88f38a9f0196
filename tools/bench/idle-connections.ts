/**
 * Benchmark: memory per idle authenticated connection in the gateway, side by side with a
 * bare uWebSockets.js relay (tools/bench/relay-baseline.ts) and a socket.io 4 server with
 * a token check and a room per user (tools/bench/socketio-baseline.ts), each holding the
 * same number of idle WebSockets from this process, in one run.
 *
 *   node --import tsx tools/bench/idle-connections.ts [--connections 10000] [--groups 0]
 *
 * Parley: the first gateway of a cluster on the real backends (every client a distinct
 * account, each in `--groups` groups of its own, so its socket holds that many topic
 * subscriptions), each client authenticated and past Hello. The accounts and groups are
 * made through the second gateway, so the measured one has served nothing but the
 * WebSockets (the garbage of 10,000 sign-ups would blur its readings). Every server runs in its
 * own process with `--expose-gc` and tools/bench/memory-probe.ts; its memory is read after
 * a full collection (repeated until two readings agree) at 0, N/4, N/2, 3N/4 and N
 * connections. The figure per connection is the least-squares slope of RSS from N/4 to N —
 * what one more connection costs, without one-time costs such as code compiled or the
 * young generation grown on first use — and the overall (RSS at N − RSS at 0) / N is shown
 * beside it, with the V8 heap's slope.
 *
 * The client sockets all live in this process, so N stays below the open-file limit
 * (20,000 here).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { ensureInfra, startCluster } from "../cluster/cluster.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../e2e/population.js";
import { signBenchToken } from "./bench-token.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    connections: { type: "string", default: "10000" },
    groups: { type: "string", default: "0" },
  },
});
const N = Number(values.connections);
const GROUPS = Number(values.groups);
if (!Number.isInteger(N) || N < 2 || N > 19_000) throw new Error("--connections: 2 to 19,000 (the open-file limit is 20,000 per process)");
if (!Number.isInteger(GROUPS) || GROUPS < 0 || GROUPS > 50) throw new Error("--groups: 0 to 50");
const PROBE = ["--expose-gc", "--min-semi-space-size=16", "--max-semi-space-size=16", "--import", "tsx", "--import", `${ROOT}tools/bench/memory-probe.ts`];
const OPEN_CONCURRENCY = 100;

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

/** Reads a server's memory through its probe: SIGUSR2, then the line it prints. */
class Probe {
  private waiting: ((m: Memory) => void)[] = [];

  constructor(
    readonly pid: number,
    readonly name = "",
  ) {}

  /** Feed every stdout line of the process here. */
  line(line: string): void {
    if (!line.startsWith("parley-bench-memory ")) return;
    const m = JSON.parse(line.slice("parley-bench-memory ".length)) as Memory;
    for (const w of this.waiting.splice(0)) w(m);
  }

  private once(): Promise<Memory> {
    return new Promise<Memory>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no memory reading from pid ${this.pid} within 30 s`)), 30_000);
      this.waiting.push((m) => {
        clearTimeout(timer);
        resolve(m);
      });
      process.kill(this.pid, "SIGUSR2");
    });
  }

  /** A reading after collection, repeated until two in a row agree within 0.5% (at most 10). */
  async settled(): Promise<Memory> {
    let last = await this.once();
    for (let i = 0; i < 10; i++) {
      const m = await this.once();
      if (Math.abs(m.rss - last.rss) <= 0.005 * last.rss) return m;
      last = m;
    }
    return last;
  }
}

interface Result {
  name: string;
  connections: number;
  /** Bytes of RSS per connection: the slope from N/4 connections to N. */
  perConnection: number;
  /** (RSS at N − RSS at 0) / N. */
  overallPerConnection: number;
  /** V8 heap bytes per connection, the same slope. */
  heapPerConnection: number;
  /** RSS at 0, N/4, N/2, 3N/4 and N connections. */
  rssMiB: number[];
}

/** Opens `count` sockets with `open(i)` (each resolves once the server has taken it in), 100 at a time. */
async function openAll(count: number, offset: number, open: (i: number) => Promise<WebSocket>): Promise<WebSocket[]> {
  return mapLimit(
    Array.from({ length: count }, (_, i) => offset + i),
    OPEN_CONCURRENCY,
    (i) => open(i),
  );
}

/** Least-squares slope of y over x. */
function slope(points: readonly { x: number; y: number }[]): number {
  const n = points.length;
  const mx = points.reduce((a, p) => a + p.x, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  const sxy = points.reduce((a, p) => a + (p.x - mx) * (p.y - my), 0);
  const sxx = points.reduce((a, p) => a + (p.x - mx) ** 2, 0);
  return sxy / sxx;
}

/**
 * Opens the connections in STEPS equal steps, reading the server's memory after each;
 * the cost per connection is the slope over the readings from N/STEPS on (the first step
 * also pays one-time costs: code compiled, pools and the young generation grown).
 */
async function measure(name: string, probe: Probe, open: (i: number) => Promise<WebSocket>): Promise<Result> {
  const STEPS = 4;
  const readings: { x: number; m: Memory }[] = [{ x: 0, m: await probe.settled() }];
  const sockets: WebSocket[] = [];
  for (let step = 1; step <= STEPS; step++) {
    const upTo = Math.round((N * step) / STEPS);
    sockets.push(...(await openAll(upTo - sockets.length, sockets.length, open)));
    readings.push({ x: upTo, m: await probe.settled() });
  }
  for (const s of sockets) s.terminate();
  const warm = readings.slice(1);
  const mib = (b: number) => +(b / 2 ** 20).toFixed(1);
  const first = readings[0]!.m;
  const last = readings[STEPS]!.m;
  const result: Result = {
    name,
    connections: sockets.length,
    perConnection: Math.round(slope(warm.map((r) => ({ x: r.x, y: r.m.rss })))),
    overallPerConnection: Math.round((last.rss - first.rss) / N),
    heapPerConnection: Math.round(slope(warm.map((r) => ({ x: r.x, y: r.m.heapUsed })))),
    rssMiB: readings.map((r) => mib(r.m.rss)),
  };
  console.error(`${name}: ${result.perConnection} B per connection (overall ${result.overallPerConnection} B, heap ${result.heapPerConnection} B)`);
  return result;
}

/** Starts a baseline script with the probe; resolves with its port once it listens. */
async function startBaseline(script: string, env: Record<string, string> = {}): Promise<{ child: ChildProcess; probe: Probe; port: number }> {
  const child = spawn(process.execPath, [...PROBE, script], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const probe = new Probe(child.pid!);
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code}`)));
    lines.once("line", (l) => resolve((JSON.parse(l) as { port: number }).port));
  });
  lines.on("line", (l) => probe.line(l));
  return { child, probe, port };
}

/** Resolves when the socket is open and `ready` says a message completed the handshake. */
function connect(url: string, opts: WebSocket.ClientOptions & { protocols?: string[] }, ready: (ws: WebSocket, data: Buffer) => boolean): Promise<WebSocket> {
  return new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(url, opts.protocols, opts);
    const done = (err?: Error) => {
      ws.removeAllListeners("message");
      ws.removeAllListeners("error");
      ws.on("error", () => {});
      if (err) reject(err);
      else resolve(ws);
    };
    ws.on("error", (err) => done(err));
    ws.on("close", (code, reason) => done(new Error(`${url}: closed with ${code} (${reason.toString()}) before it was ready`)));
    ws.on("message", (data: Buffer) => {
      if (ready(ws, data)) done();
    });
  });
}

async function benchRelay(): Promise<Result> {
  const { child, probe, port } = await startBaseline("tools/bench/relay-baseline.ts");
  try {
    return await measure("bare uWebSockets.js relay (baseline)", probe, (i) =>
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?id=${i}`);
        ws.once("open", () => resolve(ws));
        ws.once("error", reject);
      }),
    );
  } finally {
    child.kill("SIGTERM");
  }
}

async function benchSocketIo(): Promise<Result> {
  const key = randomBytes(32).toString("hex");
  const { child, probe, port } = await startBaseline("tools/bench/socketio-baseline.ts", { BENCH_TOKEN_KEY: key });
  try {
    // Engine.IO 4 over a plain WebSocket: open packet "0{…}", then "40{auth}" joins the
    // default namespace, answered with "40{sid}"; pings ("2") get pongs ("3").
    return await measure("socket.io 4 with a token check and a room per user (baseline)", probe, (i) =>
      connect(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`, {}, (ws, data) => {
        const text = data.toString();
        if (text.startsWith("0")) ws.send(`40${JSON.stringify({ token: signBenchToken(key, `user-${i}`) })}`);
        if (text === "2") ws.send("3");
        if (text.startsWith("44")) throw new Error(`socket.io refused the connection: ${text}`);
        if (!text.startsWith("40")) return false;
        ws.on("message", (d: Buffer) => {
          if (d.toString() === "2") ws.send("3");
        });
        return true;
      }),
    );
  } finally {
    child.kill("SIGTERM");
  }
}

async function benchParley(): Promise<Result> {
  let probe: Probe | undefined;
  const cluster = await startCluster({
    backends: ensureInfra(),
    extraEnv: { ...CHEAP_PASSWORD_HASHING },
    nodeArgs: (kind) => (kind === "gateway" ? PROBE : []),
    onLine: (proc, line) => {
      if (proc === probe?.name) probe.line(line);
    },
  });
  try {
    const [measured, other] = cluster.discovery.list("gateway");
    const gateway = cluster.processes.find((p) => p.name === measured!.id)!;
    probe = new Probe(gateway.child.pid!, gateway.name);
    const publicUrl = other!.publicUrl!;
    console.error(`signing up ${N} accounts${GROUPS > 0 ? `, each in ${GROUPS} groups` : ""}`);
    const accounts: Account[] = await signUpMany(publicUrl, N, "idle");
    if (GROUPS > 0) {
      // Groups of 10 members: each account in GROUPS of them (own topic subscriptions).
      for (let g = 0; g < GROUPS; g++) {
        await mapLimit(
          Array.from({ length: Math.ceil(N / 10) }, (_, i) => i),
          8,
          async (i) => {
            const members = accounts.slice(i * 10, i * 10 + 10);
            await createGroup(publicUrl, members[0]!, members, `idle ${g}/${i}`);
          },
        );
      }
    }
    const wsUrl = `${measured!.publicUrl!.replace(/^http/, "ws")}/ws`;
    return await measure(`parley gateway (cluster, real backends${GROUPS > 0 ? `, ${GROUPS} groups per user` : ""})`, probe, (i) =>
      // Binary protocol; the first frame is Hello, sent once the connection is registered.
      connect(wsUrl, { protocols: ["parley.v1"], headers: { authorization: `Bearer ${accounts[i]!.token}` } }, () => true),
    );
  } finally {
    await cluster.stop();
  }
}

const results = [await benchRelay(), await benchSocketIo(), await benchParley()];
console.log(JSON.stringify({ connections: N, groupsPerUser: GROUPS, results }, null, 2));
const [relay, socketIo, parley] = results as [Result, Result, Result];
console.log(
  `\nper idle connection: parley ${parley.perConnection} B, relay ${relay.perConnection} B, socket.io ${socketIo.perConnection} B; ` +
    `parley / relay ${(parley.perConnection / relay.perConnection).toFixed(2)}x, parley / socket.io ${(parley.perConnection / socketIo.perConnection).toFixed(2)}x` +
    `\nV8 heap per idle connection: parley ${parley.heapPerConnection} B, relay ${relay.heapPerConnection} B, socket.io ${socketIo.heapPerConnection} B`,
);
process.exit(0);
