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
