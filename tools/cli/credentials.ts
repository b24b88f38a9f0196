import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

/** One device's login on one server: what the CLI keeps between runs. */
export interface StoredSession {
  userId: string;
  /** Stable id of this device for this server+username; kept across log-outs. */
  deviceId: string;
  accessToken: string;
  accessExpiresAtMs: number;
  refreshToken: string;
  refreshExpiresAtMs: number;
  sessionId: string;
}

/** What `ParleyClient` needs of a place that keeps its session (a file, or memory in tests). */
export interface SessionStore {
  /** The stored session; `deviceId` alone when logged out. */
  load(): Promise<Partial<StoredSession> | undefined>;
  save(session: Partial<StoredSession>): Promise<void>;
  /**
   * Runs `fn` while no other process refreshes the same session. Refresh tokens work
   * once (reuse revokes the session), so two CLI processes must not both refresh one.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

/** A session kept in memory only. */
export class MemorySessionStore implements SessionStore {
  private tail: Promise<unknown> = Promise.resolve();
  constructor(private session: Partial<StoredSession> | undefined = undefined) {}
  async load(): Promise<Partial<StoredSession> | undefined> {
    return this.session && { ...this.session };
  }
  async save(session: Partial<StoredSession>): Promise<void> {
    this.session = { ...session };
  }
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => {});
    return run;
  }
}

interface ServerEntry {
  /** The user commands act as when no --user is given: the last one to log in. */
  current?: string;
  accounts: Record<string, Partial<StoredSession>>;
}

interface FileShape {
  version: 1;
  servers: Record<string, ServerEntry>;
}

const LOCK_STALE_MS = 15_000;
const LOCK_WAIT_MS = 20_000;

/**
 * The credentials file: `<dir>/credentials.json` (mode 0600), tokens and device id per
 * server + username. Every write replaces the file atomically (write, then rename).
 */
export class CredentialsFile {
  readonly path: string;
  private readonly lockPath: string;

  constructor(readonly dir: string) {
    this.path = join(dir, "credentials.json");
    this.lockPath = join(dir, "credentials.lock");
  }

  private read(): FileShape {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, servers: {} };
      throw err;
    }
    const parsed = JSON.parse(text) as Partial<FileShape>;
    if (parsed.version !== 1 || typeof parsed.servers !== "object" || parsed.servers === null) {
      throw new Error(`${this.path}: not a Parley credentials file (version 1)`);
    }
    return parsed as FileShape;
  }

  private write(data: FileShape): void {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(data, null, 2) + "\n", { mode: 0o600 });
    renameSync(tmp, this.path);
  }

  private update(fn: (data: FileShape) => void): void {
    const data = this.read();
    fn(data);
    this.write(data);
  }

  /** The user commands act as on `server` (undefined when nobody logged in there). */
  currentUser(server: string): string | undefined {
    return this.read().servers[server]?.current;
  }

  setCurrentUser(server: string, username: string | undefined): void {
    this.update((d) => {
      const entry = (d.servers[server] ??= { accounts: {} });
      if (username === undefined) delete entry.current;
      else entry.current = username;
    });
  }

  /** The store of one server+username. */
  session(server: string, username: string): SessionStore {
    return {
      load: async () => {
        const s = this.read().servers[server]?.accounts[username];
        return s && { ...s };
      },
      save: async (session) => {
        this.update((d) => {
          const entry = (d.servers[server] ??= { accounts: {} });
          entry.accounts[username] = { ...session };
        });
      },
      exclusive: (fn) => this.locked(fn),
    };
  }

  /** Runs `fn` holding a lock file (created exclusively; taken over when stale). */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (let wait = 10; ; wait = Math.min(wait * 2, 200)) {
      try {
        closeSync(openSync(this.lockPath, "wx", 0o600));
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        if (this.lockAgeMs() > LOCK_STALE_MS) {
          rmSync(this.lockPath, { force: true });
          continue;
        }
        if (Date.now() > deadline) throw new Error(`${this.lockPath}: held by another parley process; remove it if none runs`);
        await delay(wait);
      }
    }
    try {
      return await fn();
    } finally {
      rmSync(this.lockPath, { force: true });
    }
  }

  private lockAgeMs(): number {
    try {
      return Date.now() - statSync(this.lockPath).mtimeMs;
    } catch {
      return 0;
    }
  }
}
