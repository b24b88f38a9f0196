import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const DEADLINE_MS = 20_000;
const PASSWORD = "correct horse battery";

/** A child process whose output is collected and can be waited on (with a deadline, no sleeps). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

class Proc {
  stdout = "";
  stderr = "";
  readonly exited: Promise<number | null>;
  private listeners = new Set<() => void>();

  constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      this.stdout += d;
      this.notify();
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      this.stderr += d;
      this.notify();
    });
    this.exited = new Promise((resolve) =>
      child.once("close", (code) => {
        this.notify();
        resolve(code);
      }),
    );
  }

  private notify(): void {
    for (const l of this.listeners) l();
  }

  /** Resolves once `pattern` matches stdout (from `from` on); fails at the deadline or exit. */
  waitFor(pattern: RegExp, from = 0, what = String(pattern)): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.listeners.delete(check);
        clearTimeout(timer);
      };
      const check = () => {
        const m = this.stdout.slice(from).match(pattern);
        if (m) {
          done();
          resolve(m);
        } else if (this.child.exitCode !== null || this.child.signalCode !== null) {
          done();
          reject(new Error(`process exited before ${what}\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${DEADLINE_MS} ms\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`));
      }, DEADLINE_MS);
      this.listeners.add(check);
      check();
    });
  }

  /** The exit code, failing at the deadline. */
  exit(): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`process did not exit within ${DEADLINE_MS} ms\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`)),
        DEADLINE_MS,
      );
    });
    return Promise.race([this.exited, deadline]).finally(() => clearTimeout(timer));
  }

  type(line: string): void {
    this.child.stdin.write(line + "\n");
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGTERM");
    await this.exited;
  }
}

describe("parley CLI against the embedded platform", () => {
  let dataDir: string;
  let platform: Proc;
  let server = "";
  const children: Proc[] = [];
  const home = { alice: "", bob: "" };

  function cli(who: keyof typeof home, args: string[], env: Record<string, string> = {}): Proc {
    const child = spawn(process.execPath, ["--import", "tsx", "tools/cli/main.ts", "--server", server, ...args], {
      cwd: ROOT,
      env: { ...process.env, PARLEY_PASSWORD: "", PARLEY_CLI_HOME: home[who], ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const p = new Proc(child);
    children.push(p);
    return p;
  }

  /** Runs a one-shot command to its end. */
  async function run(who: keyof typeof home, args: string[], env: Record<string, string> = {}, input?: string) {
    const p = cli(who, args, env);
    p.child.stdin.end(input);
    const code = await p.exit();
    return { code, stdout: p.stdout, stderr: p.stderr };
  }

  let port = 0;

  async function startPlatform(): Promise<void> {
    const child = spawn(process.execPath, ["--import", "tsx", "tools/platform/main.ts"], {
      cwd: ROOT,
      env: {
        ...process.env,
        PARLEY_DATA_DIR: join(dataDir, "platform"),
        PARLEY_GATEWAY_PORT: String(port),
        PARLEY_INTERNAL_PORT: "0",
        PARLEY_GATEWAY_INTERNAL_PORT: "0",
        PARLEY_LOG_LEVEL: "warn",
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    platform = new Proc(child);
    const m = await platform.waitFor(/^\{"parley":"ready".*\}$/m, 0, "the platform's ready line");
    server = (JSON.parse(m[0]) as { publicUrl: string }).publicUrl;
  }

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "parley-cli-e2e-"));
    home.alice = join(dataDir, "alice-home");
    home.bob = join(dataDir, "bob-home");
    // A fixed port, so the platform can restart where the clients expect it.
    port = await freePort();
    await startPlatform();
  });

  after(async () => {
    await Promise.all(children.map((c) => c.stop()));
    await platform?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("signs up two users and refuses a wrong password clearly", async () => {
    const a = await run("alice", ["signup", "alice"], { PARLEY_PASSWORD: PASSWORD });
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /signed up as alice/);
    // The password may also come as a line on stdin.
    const b = await run("bob", ["signup", "bob"], {}, PASSWORD + "\n");
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout, /signed up as bob/);

    const wrong = await run("alice", ["login", "alice"], { PARLEY_PASSWORD: "not the password" });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /login failed: invalid username or password/);

    const taken = await run("bob", ["signup", "alice"], { PARLEY_PASSWORD: PASSWORD });
    assert.notEqual(taken.code, 0);
    assert.match(taken.stderr, /sign-up failed/);

    const who = await run("alice", ["whoami"]);
    assert.equal(who.code, 0, who.stderr);
    assert.match(who.stdout, /^alice on /);
  });

  it("chats live both ways, with one-shot send and history alongside", async () => {
    const alice = cli("alice", ["chat", "bob"]);
    const bob = cli("bob", ["chat", "alice"]);
    await alice.waitFor(/\* chatting with bob as alice/);
    await bob.waitFor(/\* chatting with alice as bob/);
    assert.match(alice.stdout, /no messages with bob yet/);

    alice.type("hello bob");
    await bob.waitFor(/^\[\d\d:\d\d:\d\d\] alice: hello bob$/m, 0, "alice's line at bob");
    await alice.waitFor(/^\[\d\d:\d\d:\d\d\] alice: hello bob$/m, 0, "alice's own line once acked");

    bob.type("hi alice!");
    await alice.waitFor(/^\[\d\d:\d\d:\d\d\] bob: hi alice!$/m, 0, "bob's answer at alice");

    // A burst arrives in order, each line once.
    for (let i = 1; i <= 5; i++) alice.type(`burst ${i}`);
    await bob.waitFor(/alice: burst 5$/m);
    const burst = bob.stdout.match(/alice: burst \d$/gm);
    assert.deepEqual(burst, ["alice: burst 1", "alice: burst 2", "alice: burst 3", "alice: burst 4", "alice: burst 5"]);

    // One-shot send from bob's other process reaches alice's chat live.
    const sent = await run("bob", ["send", "alice", "from", "a", "one-shot"]);
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stdout, /^sent to alice \(seq 8\)$/m);
    await alice.waitFor(/^\[\d\d:\d\d:\d\d\] bob: from a one-shot$/m);

    // Bob's own chat shares the device of the one-shot (no live copy): it fetches the
    // message when the next one reveals the gap, and prints everything once, in order.
    alice.type("did you get it?");
    await bob.waitFor(/alice: did you get it\?$/m);
    const bobLines = bob.stdout.match(/^\[\d\d:\d\d:\d\d\] \w+: .*$/gm)!.map((l) => l.slice(11));
    assert.deepEqual(bobLines, [
      "alice: hello bob",
      "bob: hi alice!",
      "alice: burst 1",
      "alice: burst 2",
      "alice: burst 3",
      "alice: burst 4",
      "alice: burst 5",
      "bob: from a one-shot",
      "alice: did you get it?",
    ]);

    const hist = await run("alice", ["history", "bob", "--limit", "3"]);
    assert.equal(hist.code, 0, hist.stderr);
    assert.deepEqual(
      hist.stdout.trimEnd().split("\n").map((l) => l.replace(/^\[\d\d:\d\d:\d\d\] /, "")),
      ["alice: burst 5", "bob: from a one-shot", "alice: did you get it?"],
    );

    const chats = await run("bob", ["chats"]);
    assert.equal(chats.code, 0, chats.stderr);
    assert.match(chats.stdout, /^alice\s+9 messages\s+last active /m);

    // /quit and end of input both leave cleanly.
    alice.type("/quit");
    bob.child.stdin.end();
    assert.equal(await alice.exit(), 0, alice.stderr);
    assert.equal(await bob.exit(), 0, bob.stderr);
  });

  it("reconnects after the platform restarts and prints what it missed once", async () => {
    const bob = cli("bob", ["chat", "alice"]);
    await bob.waitFor(/\* chatting with alice as bob/);
    const mark = bob.stdout.length;
    await platform.stop();
    await bob.waitFor(/\* connection lost \(4012 /, mark, "the drop at bob");
    await startPlatform();
    // Sent while bob may still be backing off: he gets it live or from history, once.
    const sent = await run("alice", ["send", "bob", "sent", "across", "a", "restart"]);
    assert.equal(sent.code, 0, sent.stderr);
    await bob.waitFor(/\* reconnected/, mark);
    await bob.waitFor(/alice: sent across a restart$/m, mark);
    const later = await run("alice", ["send", "bob", "and", "after", "it"]);
    assert.equal(later.code, 0, later.stderr);
    await bob.waitFor(/alice: and after it$/m, mark);
    assert.equal(bob.stdout.match(/alice: sent across a restart$/gm)?.length, 1);
    bob.child.stdin.end();
    assert.equal(await bob.exit(), 0, bob.stderr);
  });

  it("reports failures clearly", async () => {
    const tooLong = await run("alice", ["send", "bob", "x".repeat(4001)]);
    assert.equal(tooLong.code, 1);
    assert.match(tooLong.stderr, /! not delivered: INVALID_ARGUMENT /);

    const nobody = await run("alice", ["history", "nobody-here"]);
    assert.equal(nobody.code, 1);
    assert.match(nobody.stderr, /no such user/);

    const usage = await run("alice", ["send", "bob"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /usage: parley send <username> <text\.\.\.>/);

    // A chat that starts with the history it missed.
    const bob = cli("bob", ["chat", "alice"]);
    await bob.waitFor(/\* chatting with alice as bob/);
    assert.match(bob.stdout, /alice: did you get it\?\n/);
    bob.child.stdin.end();
    assert.equal(await bob.exit(), 0, bob.stderr);

    const out = await run("alice", ["logout"]);
    assert.equal(out.code, 0, out.stderr);
    const who = await run("alice", ["whoami"]);
    assert.equal(who.code, 1);
    assert.match(who.stderr, /not logged in/);
  });
});
