// tools/infra/infra.sh on its own work directory and port range (never the shared test
// servers): concurrent and repeated `up` of Postgres, Redis and etcd, the servers answer
// at the URLs `env` prints, a stale PID file is cleaned up, `down` stops them. Cassandra
// is left out: it starts once per test run, in tools/test/run.sh.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, readlink, rm } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { Redis } from "ioredis";

const script = join(dirname(fileURLToPath(import.meta.url)), "..", "infra.sh");
const servers = ["postgres", "redis", "etcd"] as const;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function infra(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile("bash", [script, ...args], { env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// The process exists and is not a zombie waiting to be reaped by init.
async function alive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  return stat !== "" && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
}

// A port base whose Postgres, Redis and etcd ports (base + 5432, 6379, 2379, 2380) are free.
async function freePortBase(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const base = 10_000 + Math.floor(Math.random() * 20_000);
    const ports = [5432, 6379, 2379, 2380].map((p) => base + p);
    const free = await Promise.all(ports.map(canListen));
    if (free.every(Boolean)) return base;
  }
  throw new Error("no free port range for the infra test");
}

function exportsOf(envOutput: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const m of envOutput.matchAll(/^export (\w+)=(.*)$/gm)) vars.set(m[1]!, m[2]!);
  return vars;
}

describe("tools/infra/infra.sh (postgres, redis, etcd on a private port range)", () => {
  let dir = "";
  let base = 0;
  let env: NodeJS.ProcessEnv = {};
  const pids = new Map<string, number>();

  async function pidOf(name: string): Promise<number> {
    return Number((await readFile(join(dir, name, "pid"), "utf8")).trim());
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "parley-infra-test-"));
    base = await freePortBase();
    env = { ...process.env, PARLEY_INFRA_DIR: dir, PARLEY_INFRA_PORT_BASE: String(base) };
  });

  after(async () => {
    await infra(env, "down");
    // As root, Postgres's data may live outside the work directory (see pg_dir in infra.sh).
    const pgTarget = await readlink(join(dir, "postgres")).catch(() => undefined);
    if (pgTarget !== undefined) await rm(dirname(pgTarget), { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
  });

  test("two concurrent `up`s: one starts each server, the other finds it running", async () => {
    const [a, b] = await Promise.all([infra(env, "up", ...servers), infra(env, "up", ...servers)]);
    assert.equal(a.code, 0, a.stdout + a.stderr);
    assert.equal(b.code, 0, b.stdout + b.stderr);
    const both = a.stdout + b.stdout;
    for (const name of servers) {
      assert.equal(both.match(new RegExp(`==> ${name}: starting on 127\\.0\\.0\\.1:`, "g"))?.length, 1, both);
      assert.match(both, new RegExp(`==> ${name}: ready in \\d+\\.\\ds`));
      assert.match(both, new RegExp(`==> ${name}: already running \\(pid \\d+\\)`));
      pids.set(name, await pidOf(name));
    }
  });

  test("`status` and `env` describe the running servers; they answer at those URLs", async () => {
    const status = await infra(env, "status", ...servers);
    assert.equal(status.code, 0, status.stdout + status.stderr);
    for (const name of servers) {
      assert.match(status.stdout, new RegExp(`^${name} +running +pid ${pids.get(name)} `, "m"));
    }
    const all = await infra(env, "status");
    assert.equal(all.code, 1, "cassandra is not running here");
    assert.match(all.stdout, /^cassandra +stopped$/m);

    const out = await infra(env, "env");
    assert.equal(out.code, 0, out.stderr);
    const vars = exportsOf(out.stdout);
    assert.deepEqual(
      [...vars.keys()].sort(),
      ["PARLEY_TEST_ETCD_URL", "PARLEY_TEST_POSTGRES_URL", "PARLEY_TEST_REDIS_URL"],
    );
    assert.match(out.stdout, /^# cassandra is not running/m);
    assert.equal(vars.get("PARLEY_TEST_POSTGRES_URL"), `postgres://parley@127.0.0.1:${base + 5432}/parley`);

    const client = new pg.Client({ connectionString: vars.get("PARLEY_TEST_POSTGRES_URL") });
    await client.connect();
    try {
      const rs = await client.query<{ user: string; db: string }>(
        "SELECT current_user AS user, current_database() AS db",
      );
      assert.deepEqual(rs.rows[0], { user: "parley", db: "parley" });
    } finally {
      await client.end();
    }

    const redis = new Redis(vars.get("PARLEY_TEST_REDIS_URL")!, { lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await redis.connect();
      assert.equal(await redis.ping(), "PONG");
    } finally {
      redis.disconnect();
    }

    const health = await fetch(`${vars.get("PARLEY_TEST_ETCD_URL")}/health`);
    assert.deepEqual(await health.json(), { health: "true" });
  });

  test("`up` again leaves the running servers alone", async () => {
    const again = await infra(env, "up", ...servers);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.doesNotMatch(again.stdout, /starting on/);
    for (const name of servers) {
      assert.match(again.stdout, new RegExp(`==> ${name}: already running \\(pid ${pids.get(name)}\\)`));
    }
  });

  test("a dead server's stale PID file is cleaned up and the server started again", async () => {
    const old = pids.get("redis")!;
    process.kill(old, "SIGKILL");
    const deadline = Date.now() + 10_000;
    while (await alive(old)) {
      assert.ok(Date.now() < deadline, "redis did not die");
      await new Promise((r) => setTimeout(r, 20));
    }
    const up = await infra(env, "up", "redis");
    assert.equal(up.code, 0, up.stdout + up.stderr);
    assert.match(up.stdout, new RegExp(`==> redis: removing stale PID file \\(pid ${old}\\)`));
    assert.match(up.stdout, /==> redis: ready in/);
    const fresh = await pidOf("redis");
    assert.notEqual(fresh, old);
    pids.set("redis", fresh);
  });

  test("`down` stops every server and frees its port", async () => {
    const down = await infra(env, "down");
    assert.equal(down.code, 0, down.stdout + down.stderr);
    for (const name of servers) {
      assert.match(down.stdout, new RegExp(`==> ${name}: stopped in`));
      assert.equal(await alive(pids.get(name)!), false, `${name} still runs`);
    }
    assert.match(down.stdout, /==> cassandra: not running/);
    for (const port of [5432, 6379, 2379]) assert.equal(await accepts(base + port), false, `port ${base + port}`);
    const status = await infra(env, "status", ...servers);
    assert.equal(status.code, 1);
    for (const name of servers) assert.match(status.stdout, new RegExp(`^${name} +stopped$`, "m"));
  });

  test("an unknown server name is refused", async () => {
    const bad = await infra(env, "up", "mongodb");
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /unknown server 'mongodb'/);
  });
});
