/**
 * Display names of users (push titles: "Ann", "Team · Ann"). Unknown users are left out
 * of the answer.
 */
export interface UserDirectory {
  displayNames(userIds: readonly string[], signal?: AbortSignal): Promise<Map<string, string>>;
}

export interface CachedUserDirectoryOptions {
  /** Most names kept (least recently used go first). */
  maxEntries?: number;
  /** How long a name is reused (display names can change). */
  ttlMs?: number;
  clock?: () => number;
}

/**
 * A small LRU cache in front of a directory: one batch call per round for the names it
 * does not hold. Names of unknown users are not cached.
 */
export class CachedUserDirectory implements UserDirectory {
  private readonly entries = new Map<string, { name: string; atMs: number }>();
  private readonly maxEntries: number;
  private readonly ttlMs: number;
  private readonly clock: () => number;

  constructor(
    private readonly inner: UserDirectory,
    o: CachedUserDirectoryOptions = {},
  ) {
    this.maxEntries = o.maxEntries ?? 10_000;
    this.ttlMs = o.ttlMs ?? 10 * 60_000;
    this.clock = o.clock ?? Date.now;
  }

  async displayNames(userIds: readonly string[], signal?: AbortSignal): Promise<Map<string, string>> {
    const now = this.clock();
    const out = new Map<string, string>();
    const missing: string[] = [];
    for (const id of new Set(userIds)) {
      const e = this.entries.get(id);
      if (e && now - e.atMs < this.ttlMs) {
        // Refresh its place in the LRU order.
        this.entries.delete(id);
        this.entries.set(id, e);
        out.set(id, e.name);
      } else {
        missing.push(id);
      }
    }
    if (missing.length === 0) return out;
    const found = await this.inner.displayNames(missing, signal);
    for (const [id, name] of found) {
      out.set(id, name);
      this.entries.delete(id);
      this.entries.set(id, { name, atMs: now });
    }
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    return out;
  }
}
