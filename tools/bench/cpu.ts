import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** CPU seconds (user + system) a process has used so far, from /proc (Linux). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[11] = utime, fields[12] = stime, in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** CPU seconds of a process and its live children (Postgres runs one process per connection). */
export function treeCpuSeconds(pid: number): number {
  let total = cpuSeconds(pid);
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) total += cpuSeconds(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return total;
}

/** The PIDs of the backend servers tools/infra/infra.sh started (those running now). */
export function backendPids(root: string): Map<string, number> {
  const dir = process.env.PARLEY_INFRA_DIR ?? join(root, ".work/infra");
  const out = new Map<string, number>();
  for (const name of ["cassandra", "postgres", "redis", "etcd"]) {
    try {
      const pid = Number(readFileSync(join(dir, name, "pid"), "utf8").trim());
      if (pid > 0 && existsSync(`/proc/${pid}`)) out.set(name, pid);
    } catch {
      // not started by infra.sh
    }
  }
  return out;
}

/** CPU seconds used so far by each backend server (with its children). */
export function backendCpu(pids: Map<string, number>): Map<string, number> {
  return new Map([...pids].map(([name, pid]) => [name, treeCpuSeconds(pid)]));
}

/**
 * Extra node flags for the cluster processes of `kind`: `BENCH_NODE_ARGS` (e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof"), for the kinds in `BENCH_NODE_KIND` (a comma-separated
 * list; unset: every kind).
 */
export function benchNodeArgs(kind: string): string[] {
  const kinds = process.env.BENCH_NODE_KIND?.split(",").map((k) => k.trim()).filter(Boolean);
  if (kinds && kinds.length > 0 && !kinds.includes(kind)) return [];
  return process.env.BENCH_NODE_ARGS?.split(" ").filter(Boolean) ?? [];
}

/** CPU seconds so far of named node processes and of the backend servers. */
export interface CpuSnapshot {
  processes: Map<string, number>;
  backends: Map<string, number>;
}

export function snapshotCpu(processes: readonly { name: string; pid: number }[], backends: Map<string, number>): CpuSnapshot {
  return { processes: new Map(processes.map((p) => [p.name, cpuSeconds(p.pid)])), backends: backendCpu(backends) };
}

/** CPU used between two snapshots: node processes and backends apart, and a line by process. */
export function cpuBetween(before: CpuSnapshot, after: CpuSnapshot): { nodeSeconds: number; backendSeconds: number; line: string } {
  const diff = (a: Map<string, number>, b: Map<string, number>) => [...b].map(([name, s]) => [name, s - (a.get(name) ?? s)] as const);
  const node = diff(before.processes, after.processes);
  const backends = diff(before.backends, after.backends);
  const sum = (xs: (readonly [string, number])[]) => xs.reduce((s, [, v]) => s + v, 0);
  return {
    nodeSeconds: sum(node),
    backendSeconds: sum(backends),
    line: [...node, ...backends].map(([name, s]) => `${name}=${s.toFixed(2)}`).join(" "),
  };
}
