import { createInterface, type Interface } from "node:readline";
import { ConnectError } from "@connectrpc/connect";
import { describeError, NotLoggedInError, ParleyClient, type ChatMessage } from "./client.js";
import { CredentialsFile } from "./credentials.js";
import { LiveChat } from "./live-chat.js";
import { readLine, readSecret, type Io } from "./prompt.js";

export interface CliOptions {
  /** Public URL of the gateway. */
  server: string;
  /** Act as this user (default: the last one to log in on `server`). */
  user: string | undefined;
  /** Directory of the credentials file. */
  home: string;
  /** From PARLEY_PASSWORD; otherwise asked for. */
  password: string | undefined;
  /** `--limit` of history / chats. */
  limit: number | undefined;
  io: Io;
}

export class UsageError extends Error {
  override readonly name = "UsageError";
}

export const USAGE = `usage: parley [--server URL] [--user NAME] <command> [arguments]

commands:
  signup <username>               create an account and log in
  login <username>                log in (this user becomes the default for --server)
  logout                          end the session on the server and forget its tokens
  whoami                          show the logged-in user
  chats [--limit N]               list your conversations, most recent first
  history <username> [--limit N]  show the last N (20) messages with a user
  send <username> <text...>       send one message and print its sequence number
  chat <username>                 chat live (type lines to send; /quit or Ctrl-D to leave)

options:
  --server URL   gateway public URL (default $PARLEY_SERVER or http://127.0.0.1:7000)
  --user NAME    act as NAME (default: the last user who logged in on that server)

environment:
  PARLEY_PASSWORD   password for signup/login (else asked on the terminal, or read from a stdin line)
  PARLEY_CLI_HOME   where credentials are kept (default ~/.config/parley)`;

/** Local wall-clock time of a message, HH:MM:SS. */
export function formatTime(ms: number): string {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

export function formatMessage(m: ChatMessage, name: string): string {
  return `[${formatTime(m.sentAtMs)}] ${name}: ${m.body}`;
}

function formatDateTime(ms: number): string {
  const d = new Date(ms);
  const date = [d.getFullYear(), d.getMonth() + 1, d.getDate()].map((n) => String(n).padStart(2, "0")).join("-");
  return `${date} ${formatTime(ms)}`;
}

/** Runs one command; returns the exit code. Errors are printed, not thrown (except usage). */
export async function runCommand(command: string, args: string[], o: CliOptions): Promise<number> {
  const out = (line: string) => void o.io.stdout.write(line + "\n");
  const err = (line: string) => void o.io.stderr.write(line + "\n");
  const arity = (min: number, max: number, shape: string) => {
    if (args.length < min || args.length > max) throw new UsageError(`usage: parley ${command} ${shape}`.trimEnd());
  };
  try {
    switch (command) {
      case "signup":
      case "login": {
        arity(1, 1, "<username>");
        return await logIn(o, command, args[0]!, out);
      }
      case "logout":
        arity(0, 0, "");
        return await logOut(o, out);
      case "whoami": {
        arity(0, 0, "");
        const { client } = account(o);
        const me = await client.me();
        out(`${me.user.username} on ${o.server} (user ${me.user.userId}, device ${me.deviceId})`);
        return 0;
      }
      case "chats":
        arity(0, 0, "[--limit N]");
        return await chats(o, out);
      case "history":
        arity(1, 1, "<username> [--limit N]");
        return await history(o, args[0]!, out);
      case "send": {
        arity(2, Infinity, "<username> <text...>");
        return await sendOnce(o, args[0]!, args.slice(1).join(" "), out, err);
      }
      case "chat":
        arity(1, 1, "<username>");
        return await chat(o, args[0]!);
      default:
        throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    err(`parley ${command}: ${explain(e, o)}`);
    return 1;
  }
}

function explain(e: unknown, o: CliOptions): string {
  if (e instanceof NotLoggedInError) return `${e.message} (run: parley --server ${o.server} login <username>)`;
  if (e instanceof ConnectError && e.code === 14) return `cannot reach ${o.server}: ${e.rawMessage}`;
  return describeError(e);
}

function serverKey(server: string): string {
  return server.replace(/\/+$/, "");
}

/** The client of the user commands act as. */
function account(o: CliOptions): { client: ParleyClient; username: string; creds: CredentialsFile } {
  const creds = new CredentialsFile(o.home);
  const username = o.user ?? creds.currentUser(serverKey(o.server));
  if (!username) throw new NotLoggedInError(`not logged in to ${o.server}`);
  const client = new ParleyClient({ baseUrl: o.server, store: creds.session(serverKey(o.server), username) });
  return { client, username, creds };
}

async function password(o: CliOptions, confirm: boolean): Promise<string> {
  if (o.password !== undefined) return o.password;
  if (!o.io.stdin.isTTY) {
    const line = await readLine(o.io);
    if (line === undefined) throw new UsageError("no password: set PARLEY_PASSWORD or write it as a line on stdin");
    return line;
  }
  const first = await readSecret(o.io, "Password: ");
  if (first === undefined) throw new UsageError("cancelled");
  if (confirm) {
    const again = await readSecret(o.io, "Repeat password: ");
    if (again !== first) throw new UsageError("the passwords differ");
  }
  return first;
}

async function logIn(o: CliOptions, command: "signup" | "login", username: string, out: (s: string) => void): Promise<number> {
  const pw = await password(o, command === "signup");
  const creds = new CredentialsFile(o.home);
  const server = serverKey(o.server);
  const client = new ParleyClient({ baseUrl: o.server, store: creds.session(server, username) });
  try {
    const user = command === "signup" ? await client.signUp(username, pw) : await client.logIn(username, pw);
    creds.setCurrentUser(server, user.username);
    out(`${command === "signup" ? "signed up" : "logged in"} as ${user.username} on ${o.server}`);
    return 0;
  } catch (e) {
    if (e instanceof ConnectError && e.code !== 14) {
      o.io.stderr.write(`parley ${command}: ${command === "signup" ? "sign-up" : "login"} failed: ${e.rawMessage}\n`);
      return 1;
    }
    throw e;
  }
}

async function logOut(o: CliOptions, out: (s: string) => void): Promise<number> {
  const { client, username, creds } = account(o);
  await client.logOut();
  if (creds.currentUser(serverKey(o.server)) === username) creds.setCurrentUser(serverKey(o.server), undefined);
  out(`logged out ${username} from ${o.server}`);
  return 0;
}

async function chats(o: CliOptions, out: (s: string) => void): Promise<number> {
  const { client } = account(o);
  const list = await client.listConversations(o.limit ?? 50);
  if (list.length === 0) {
    out("no conversations yet (start one: parley chat <username>)");
    return 0;
  }
  const me = await client.userId();
  const users = await client.users(list.flatMap((c) => c.memberIds));
  for (const c of list) {
    const others = c.memberIds.filter((id) => id !== me).map((id) => users.get(id)?.username ?? id.slice(0, 8));
    const label = c.kind === "direct" ? (others[0] ?? "(yourself)") : `group: ${others.join(", ")}`;
    const count = `${c.lastSeq} message${c.lastSeq === 1 ? "" : "s"}`;
    out(`${label.padEnd(24)} ${count.padEnd(14)} last active ${formatDateTime(c.lastActivityAtMs)}`);
  }
  return 0;
}

async function history(o: CliOptions, peer: string, out: (s: string) => void): Promise<number> {
  const { client } = account(o);
  const conv = await client.openDirect({ username: peer });
  const messages = await client.lastMessages(conv.conversationId, o.limit ?? 20);
  if (messages.length === 0) out(`no messages with ${peer} yet`);
  const names = await client.users(conv.memberIds);
  for (const m of messages) out(formatMessage(m, names.get(m.senderId)?.username ?? m.senderId.slice(0, 8)));
  return 0;
}

async function sendOnce(
  o: CliOptions,
  peer: string,
  text: string,
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const { client } = account(o);
  const conv = await client.openDirect({ username: peer });
  const live = new LiveChat({ client, conversationId: conv.conversationId, afterSeq: conv.lastSeq, track: false, maxConnectAttempts: 5 });
  live.on("fatal", (e) => err(`! ${explain(e, o)}`));
  await live.start();
  try {
    const ack = await live.send(text);
    out(`sent to ${peer} (seq ${ack.seq})`);
    return 0;
  } catch (e) {
    err(`! not delivered: ${explain(e, o)}`);
    return 1;
  } finally {
    await live.close();
  }
}

/** Writes lines without tearing the line being typed on a terminal. */
class Screen {
  private rl: Interface | undefined;
  private tail: Promise<void> = Promise.resolve();

  constructor(private readonly io: Io) {}

  get tty(): boolean {
    return Boolean(this.io.stdin.isTTY && this.io.stdout.isTTY);
  }

  attach(rl: Interface | undefined): void {
    this.rl = rl;
  }

  print(line: string, stream: NodeJS.WritableStream = this.io.stdout): void {
    if (this.rl && this.tty) {
      this.io.stdout.write("\r\x1b[2K");
      stream.write(line + "\n");
      this.rl.prompt(true);
    } else stream.write(line + "\n");
  }

  /** Prints lines whose text needs async work (user names) in the order they were queued. */
  queue(make: () => Promise<string>, stream?: NodeJS.WritableStream): void {
    this.tail = this.tail.then(
      async () => this.print(await make(), stream),
      () => {},
    );
  }

  flushed(): Promise<void> {
    return this.tail.catch(() => {});
  }
}

async function chat(o: CliOptions, peer: string): Promise<number> {
  const { client, username } = account(o);
  const screen = new Screen(o.io);
  const conv = await client.openDirect({ username: peer });
  const recent = await client.lastMessages(conv.conversationId, 20);
  await client.users(conv.memberIds);
  const show = (m: ChatMessage) => screen.queue(async () => formatMessage(m, await client.nameOf(m.senderId)));
  if (recent.length === 0) screen.print(`* no messages with ${peer} yet`);
  for (const m of recent) show(m);

  const live = new LiveChat({ client, conversationId: conv.conversationId, afterSeq: recent.at(-1)?.seq ?? 0 });
  let exitCode = 0;
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => (finish = resolve));

  live.on("message", (m) => show(m));
  live.on("elsewhere", (m) =>
    screen.queue(async () => {
      const name = await client.nameOf(m.senderId);
      return `* ${name} wrote in another conversation (parley chat ${name})`;
    }),
  );
  live.on("status", (s) => {
    if (s.state === "connected" && s.reconnected) screen.print("* reconnected");
    if (s.state === "disconnected") screen.print(`* connection lost (${s.code}${s.reason ? " " + s.reason : ""}); reconnecting`);
    if (s.state === "retrying") screen.print(`* cannot connect (${s.error}); retrying in ${(s.inMs / 1000).toFixed(1)} s`);
  });
  live.on("warning", (w) => screen.print(`! ${w}`, o.io.stderr));
  live.on("fatal", (e) => {
    screen.print(`! ${explain(e, o)}`, o.io.stderr);
    exitCode = 1;
    finish();
  });

  await live.start();
  await screen.flushed();
  screen.print(`* chatting with ${peer} as ${username} (/quit or Ctrl-D to leave)`);

  const rl = createInterface({
    input: o.io.stdin,
    output: screen.tty ? o.io.stdout : undefined,
    terminal: screen.tty,
    prompt: "> ",
  });
  screen.attach(rl);
  if (screen.tty) rl.prompt();
  rl.on("line", (raw) => {
    // The typed line is replaced by the message as stored (printed on ack).
    if (screen.tty) o.io.stdout.write("\x1b[1A\x1b[2K");
    const line = raw.trimEnd();
    if (line.trim() === "") return screen.tty ? rl.prompt() : undefined;
    if (line === "/quit") {
      rl.close();
      return;
    }
    if (line.startsWith("/") && !line.startsWith("//")) {
      screen.print(`! unknown command ${line.split(/\s/)[0]} (type /quit to leave; start with // to send a leading /)`, o.io.stderr);
      return;
    }
    const body = line.startsWith("//") ? line.slice(1) : line;
    live.send(body).then(
      () => {},
      (e: unknown) => screen.print(`! not delivered: ${explain(e, o)}: ${JSON.stringify(body.slice(0, 60))}`, o.io.stderr),
    );
  });
  rl.on("close", () => {
    screen.attach(undefined);
    finish();
  });

  await finished;
  rl.close();
  o.io.stdin.pause();
  // Sends typed just before /quit or end of input still deserve their ack.
  await live.drain(10_000);
  if (live.unacknowledged > 0) screen.print(`! ${live.unacknowledged} message(s) not acknowledged before leaving`, o.io.stderr);
  await live.close();
  await screen.flushed();
  return exitCode;
}
