/**
 * Batch sizes of a cluster run, from each process's `/metrics` (`parley_batch_size`,
 * lib/telemetry/metrics.ts): how much each hop's fixed cost was shared at that load; and
 * the backend calls each kind of process made (`parley_backend_duration_ms_count`).
 * The ops URLs come from the processes' "ops server listening" log lines, so the cluster
 * must run with log level info (`benchLogging(true)` sets that up).
 */

/**
 * The cluster's logging for a bench: at info with `--batches` (for the ops URLs), and every
 * line on stderr with BENCH_LOGS=1.
 */
export function benchLogging(batches: boolean): {
  urls: Map<string, string>;
  logLevel: string | undefined;
  onLine: (proc: string, line: string) => void;
} {
  const ops = opsUrlCollector();
  return {
    urls: ops.urls,
    logLevel: batches ? "info" : undefined,
    onLine(proc, line) {
      if (batches) ops.onLine(proc, line);
      if (process.env.BENCH_LOGS) console.error(proc, line.slice(0, 300));
    },
  };
}

/** Remembers each process's ops URL from its log lines. */
function opsUrlCollector(): { onLine: (proc: string, line: string) => void; urls: Map<string, string> } {
  const urls = new Map<string, string>();
  return {
    urls,
    onLine(proc, line) {
      if (!line.includes('"ops server listening"')) return;
      const url = (JSON.parse(line) as { url?: string }).url;
      if (url) urls.set(proc, url);
    },
  };
}

/** Per process and batch name: items and batches so far. */
export type BatchCounts = Map<string, { items: number; batches: number }>;

export async function scrapeBatchCounts(urls: Map<string, string>): Promise<BatchCounts> {
  const out: BatchCounts = new Map();
  for (const [proc, url] of urls) {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const m of text.matchAll(/^parley_batch_size_(sum|count)\{parley_batch="([^"]+)"\} (\d+(?:\.\d+)?)$/gm)) {
      const key = `${proc.replace(/-\d+$/, "")}: ${m[2]}`;
      const e = out.get(key) ?? { items: 0, batches: 0 };
      if (m[1] === "sum") e.items += Number(m[3]);
      else e.batches += Number(m[3]);
      out.set(key, e);
    }
    // Backend calls by operation (`batches` counts them; `items` is unused).
    for (const m of text.matchAll(/^parley_backend_duration_ms_count\{db_system_name="([^"]+)",db_operation_name="([^"]+)"\} (\d+)$/gm)) {
      const key = `${proc.replace(/-\d+$/, "")} → ${m[1]}: ${m[2]}`;
      const e = out.get(key) ?? { items: 0, batches: 0 };
      e.batches += Number(m[3]);
      out.set(key, e);
    }
  }
  return out;
}

/**
 * Between two scrapes, by process kind: the mean items per batch of each batch name, and
 * the calls to each backend operation ("router → redis: EVALSHA", with `calls`).
 */
export function meanBatchSizes(before: BatchCounts, after: BatchCounts): Record<string, { batches: number; meanSize: number } | { calls: number }> {
  const out: Record<string, { batches: number; meanSize: number } | { calls: number }> = {};
  for (const [key, a] of [...after].sort(([x], [y]) => x.localeCompare(y))) {
    const b = before.get(key) ?? { items: 0, batches: 0 };
    const batches = a.batches - b.batches;
    if (batches <= 0) continue;
    out[key] = key.includes(" → ") ? { calls: batches } : { batches, meanSize: +((a.items - b.items) / batches).toFixed(1) };
  }
  return out;
}
