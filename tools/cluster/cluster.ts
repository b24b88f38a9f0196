import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import cassandra from "cassandra-driver";
import pg from "pg";
import type { ServiceKind } from "../../lib/discovery/discovery.js";
import { EtcdDiscovery } from "../../lib/discovery/discovery-etcd.js";

const ROOT = new URL("../..", import.meta.url).pathname;

const ENTRY: Record<ServiceKind, string> = {
  session: "services/session/src/main.ts",
  groups: "services/groups/src/main.ts",
  messagestore: "services/messagestore/src/main.ts",
  presence: "services/presence/src/main.ts",
  notify: "services/notify/src/main.ts",
  router: "services/router/src/main.ts",
  gateway: "gateway/src/main.ts",
};

const PORT_VAR: Record<ServiceKind, string> = {
  session: "PARLEY_SESSION_PORT",
  groups: "PARLEY_GROUPS_PORT",
  messagestore: "PARLEY_MESSAGESTORE_PORT",
  presence: "PARLEY_PRESENCE_PORT",
  notify: "PARLEY_NOTIFY_PORT",
  router: "PARLEY_ROUTER_PORT",
  gateway: "PARLEY_GATEWAY_INTERNAL_PORT",
};

/** Where the real backends are (tools/infra/infra.sh env prints them). */
export interface Backends {
  postgresUrl: string;
  redisUrl: string;
  etcdUrl: string;
  /** host:port */
  cassandra: string;
}

export interface ClusterOptions {
  backends: Backends;
  /** How many of each kind (defaults: 2 gateways, 2 routers, 2 message stores, 1 of the rest). */
  counts?: Partial<Record<ServiceKind, number>>;
  /** Public port of gateway i is `gatewayBasePort + i` (0: free ports). */
  gatewayBasePort?: number;
  /**
   * etcd key prefix, Redis key prefix, Cassandra keyspace and Postgres schema (a fresh
   * one isolates a test cluster; a generated one's Postgres schema and Cassandra keyspace
   * are dropped by stop()).
   */
  namespace?: string;
  logLevel?: string;
  extraEnv?: Record<string, string>;
  /** Extra node flags for every process, or per kind (e.g. --cpu-prof for the routers). */
  nodeArgs?: string[] | ((kind: ServiceKind) => string[]);
  /** Each process's output lines, for logs. */
  onLine?: (proc: string, line: string) => void;
}

const PINO_LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
/**
 * Lines at or above this pino level are echoed to stderr with the process name, so a
 * failing test shows what the cluster said (PARLEY_CLUSTER_ECHO: a level name, or "off";
 * default warn). Lines that are not pino JSON (a crash's stack trace) always count.
 */
const ECHO_LEVEL: number | undefined = (() => {
  const v = process.env.PARLEY_CLUSTER_ECHO ?? "warn";
  return v === "off" ? undefined : (PINO_LEVELS[v] ?? PINO_LEVELS.warn);
})();

function levelOf(line: string): number {
  const m = /^\{"level":(\d+)/.exec(line);
  return m ? Number(m[1]) : 60;
}

/** One process of the cluster. */
export class ClusterProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  exitCode: number | null | undefined;
  readonly exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly kind: ServiceKind,
    readonly env: Record<string, string>,
    onLine?: (proc: string, line: string) => void,
    nodeArgs: readonly string[] = [],
  ) {
    this.child = spawn(process.execPath, [...nodeArgs, "--import", "tsx", ENTRY[kind]], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.exited = new Promise((resolve) =>
      this.child.once("exit", (code) => {
        this.exitCode = code;
        resolve(code);
      }),
    );
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      createInterface({ input: stream }).on("line", (line) => {
        if (this.lines.length > 200) this.lines.shift();
        this.lines.push(line);
        if (ECHO_LEVEL !== undefined && levelOf(line) >= ECHO_LEVEL) process.stderr.write(`[${env.PARLEY_ETCD_PREFIX ?? ""}/${name}] ${line}\n`);
        onLine?.(name, line);
      });
    }
  }

  /** SIGTERM (graceful) and wait for the exit. */
  async stop(): Promise<number | null> {
    if (this.exitCode === undefined) this.child.kill("SIGTERM");
    return this.exited;
  }

  /** SIGKILL: a crash. */
  async kill(): Promise<void> {
    if (this.exitCode === undefined) this.child.kill("SIGKILL");
    await this.exited;
  }
}

export interface Cluster {
  readonly processes: ClusterProcess[];
  readonly discovery: EtcdDiscovery;
  readonly namespace: string;
  /** Environment shared by every process (backends, prefixes). */
  readonly env: Record<string, string>;
  /** Public base URLs of the live gateways, from discovery. */
  gatewayUrls(): string[];
  /** Starts one more process of `kind` (e.g. to replace a killed one). */
  spawn(kind: ServiceKind, index: number): Promise<ClusterProcess>;
  stop(): Promise<void>;
}

/**
 * Starts the distributed topology on this machine: every process separate, on the real
 * backends, finding each other through etcd. Resolves when every process is registered.
 */
export async function startCluster(o: ClusterOptions): Promise<Cluster> {
  const namespace = o.namespace ?? `parley-${randomUUID().slice(0, 8)}`;
  const counts: Record<ServiceKind, number> = {
    session: 1,
    groups: 1,
    messagestore: 2,
    presence: 1,
    notify: 1,
    router: 2,
    gateway: 2,
    ...o.counts,
  };
  // Every cluster has its own Postgres schema: workers that poll tables (notify's push
  // jobs) must not take another cluster's rows.
  const schema = namespace.replace(/[^a-z0-9_]/gi, "_").toLowerCase();
  const keyspace = namespace.replace(/[^a-z0-9_]/gi, "_");
  await withPostgres(o.backends.postgresUrl, (c) => c.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`));
  const env: Record<string, string> = {
    PARLEY_ETCD_ENDPOINTS: o.backends.etcdUrl,
    PARLEY_ETCD_PREFIX: `/${namespace}`,
    PARLEY_DISCOVERY_TTL_SECONDS: "2",
    PARLEY_REDIS_URL: o.backends.redisUrl,
    PARLEY_REDIS_PREFIX: `${namespace}:`,
    PARLEY_POSTGRES_URL: withSearchPath(o.backends.postgresUrl, schema),
    PARLEY_CASSANDRA_CONTACT_POINTS: o.backends.cassandra,
    PARLEY_CASSANDRA_KEYSPACE: keyspace,
    PARLEY_LOG_LEVEL: o.logLevel ?? "warn",
    ...o.extraEnv,
  };
  const discovery = await EtcdDiscovery.open({ endpoints: [o.backends.etcdUrl], prefix: `/${namespace}` });
  const processes: ClusterProcess[] = [];

  const spawnOne = async (kind: ServiceKind, index: number): Promise<ClusterProcess> => {
    const id = `${kind}-${index + 1}`;
    const penv: Record<string, string> = { ...env, PARLEY_INSTANCE_ID: id, [PORT_VAR[kind]]: "0" };
    if (kind === "gateway") {
      penv.PARLEY_GATEWAY_ID = id;
      penv.PARLEY_GATEWAY_PORT = String(o.gatewayBasePort ? o.gatewayBasePort + index : 0);
    }
    const nodeArgs = typeof o.nodeArgs === "function" ? o.nodeArgs(kind) : o.nodeArgs;
    const p = new ClusterProcess(id, kind, penv, o.onLine, nodeArgs);
    processes.push(p);
    await waitRegistered(discovery, kind, id, p);
    return p;
  };

  try {
    // Storage-owning services first (they create schemas), then the rest in parallel.
    await Promise.all([
      ...range(counts.session).map((i) => spawnOne("session", i)),
      ...range(counts.groups).map((i) => spawnOne("groups", i)),
      ...range(Math.min(1, counts.messagestore)).map((i) => spawnOne("messagestore", i)),
    ]);
    await Promise.all([
      ...range(counts.messagestore).slice(1).map((i) => spawnOne("messagestore", i)),
      ...range(counts.presence).map((i) => spawnOne("presence", i)),
      ...range(counts.notify).map((i) => spawnOne("notify", i)),
      ...range(counts.router).map((i) => spawnOne("router", i)),
    ]);
    await Promise.all(range(counts.gateway).map((i) => spawnOne("gateway", i)));
  } catch (err) {
    await Promise.all(processes.map((p) => p.kill()));
    await discovery.close();
    throw err;
  }

  return {
    processes,
    discovery,
    namespace,
    env,
    gatewayUrls: () => discovery.list("gateway").flatMap((g) => (g.publicUrl ? [g.publicUrl] : [])),
    spawn: spawnOne,
    async stop() {
      // Edge first, then the services, so nothing calls a process that is gone.
      const order: ServiceKind[] = ["gateway", "router", "presence", "notify", "messagestore", "groups", "session"];
      for (const kind of order) await Promise.all(processes.filter((p) => p.kind === kind).map((p) => p.stop()));
      await discovery.close();
      if (o.namespace === undefined) {
        // A generated namespace is this cluster's alone: its Postgres schema and Cassandra
        // keyspace go with it (hundreds of leftover keyspaces slow a long-lived test server down).
        await withPostgres(o.backends.postgresUrl, (c) => c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));
        await dropKeyspace(o.backends.cassandra, keyspace);
      }
    },
  };
}

/** `url` with every connection's search path set to `schema` (libpq `options`). */
export function withSearchPath(url: string, schema: string): string {
  const u = new URL(url);
  u.searchParams.set("options", `-c search_path=${schema}`);
  return u.toString();
}

async function withPostgres(url: string, fn: (c: pg.Client) => Promise<unknown>): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await fn(c);
  } finally {
    await c.end();
  }
}

async function dropKeyspace(contactPoint: string, keyspace: string): Promise<void> {
  const c = new cassandra.Client({ contactPoints: [contactPoint], localDataCenter: "datacenter1" });
  try {
    await c.connect();
    await c.execute(`DROP KEYSPACE IF EXISTS "${keyspace}"`);
  } finally {
    await c.shutdown();
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Resolves once `id` is registered in discovery; fails if the process exits first or after 90 s. */
function waitRegistered(discovery: EtcdDiscovery, kind: ServiceKind, id: string, p: ClusterProcess): Promise<void> {
  if (discovery.resolve(kind, id)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      stop();
      clearTimeout(timer);
      if (err) reject(err);
      else resolve();
    };
    const stop = discovery.watch(kind, () => {
      if (discovery.resolve(kind, id)) done();
    });
    const timer = setTimeout(() => done(new Error(`${id} did not register within 90 s\n${p.lines.slice(-20).join("\n")}`)), 90_000);
    void p.exited.then((code) => done(new Error(`${id} exited (${code}) before registering\n${p.lines.slice(-20).join("\n")}`)));
  });
}

/** Starts the real backends if they are not running (tools/infra/infra.sh up) and says where they are. */
export function ensureInfra(): Backends {
  execFileSync("bash", ["tools/infra/infra.sh", "up"], { cwd: ROOT, stdio: ["ignore", process.stderr, process.stderr] });
  const out = execFileSync("bash", ["tools/infra/infra.sh", "env"], { cwd: ROOT, encoding: "utf8" });
  const vars = new Map<string, string>();
  for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) vars.set(m[1]!, m[2]!.replace(/^['"]|['"]$/g, ""));
  const need = (name: string) => {
    const v = vars.get(name);
    if (!v) throw new Error(`tools/infra/infra.sh env did not print ${name}`);
    return v;
  };
  return {
    postgresUrl: need("PARLEY_TEST_POSTGRES_URL"),
    redisUrl: need("PARLEY_TEST_REDIS_URL"),
    etcdUrl: need("PARLEY_TEST_ETCD_URL"),
    cassandra: need("PARLEY_TEST_CASSANDRA"),
  };
}
