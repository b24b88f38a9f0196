/**
 * Loaded into a server process by tools/bench/idle-connections.ts (with `--expose-gc
 * --import`): on SIGUSR2 the process collects garbage and prints its memory as one line
 * on stdout, `parley-bench-memory {"rss":…,"heapUsed":…,"external":…,…}`. Nothing else.
 */
const collect = (globalThis as { gc?: () => void }).gc;
process.on("SIGUSR2", () => {
  if (!collect) throw new Error("memory-probe needs node --expose-gc");
  collect();
  collect();
  process.stdout.write(`parley-bench-memory ${JSON.stringify(process.memoryUsage())}\n`);
});
