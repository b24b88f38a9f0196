import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import { WebSocketServer, type WebSocket } from "ws";
import { AuthService } from "../../../gen/parley/client/v1/auth_service_pb.js";
import { ChatService } from "../../../gen/parley/client/v1/chat_service_pb.js";
import { ClientFrameSchema, ErrorCode, ServerFrameSchema, type ClientFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { MessageSchema } from "../../../gen/parley/client/v1/types_pb.js";
import { backoffDelay, FrameError, NotLoggedInError, ParleyClient, webSocketUrl, type ChatMessage } from "../client.js";
import { CredentialsFile, MemorySessionStore, type StoredSession } from "../credentials.js";
import { LiveChat, SeqOrderer } from "../live-chat.js";

const NOW = 1_800_000_000_000;
const USER = "01900000-0000-7000-8000-000000000001";
const PEER = "01900000-0000-7000-8000-000000000002";
const CONV = "01900000-0000-7000-8000-0000000000c0";
const DEVICE = "0eb645b2-4454-466c-b456-5a191396d46b";

function session(over: Partial<StoredSession> = {}): StoredSession {
  return {
    userId: USER,
    deviceId: DEVICE,
    accessToken: "access-1",
    accessExpiresAtMs: NOW + 600_000,
    refreshToken: "refresh-1",
    refreshExpiresAtMs: NOW + 86_400_000,
    sessionId: "s1",
    ...over,
  };
}

function msg(seq: number, body = `m${seq}`, senderId = PEER): ChatMessage {
  return { conversationId: CONV, seq, messageId: `id${seq}`, senderId, senderDeviceId: "d", clientMsgId: `c${seq}`, body, sentAtMs: NOW };
}

/** Fails the test when `p` does not settle in time (no sleeps: a deadline on an event). */
async function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

describe("backoffDelay", () => {
  it("grows exponentially with equal jitter and is capped", () => {
    const opts = { baseMs: 100, maxMs: 1000 };
    assert.equal(backoffDelay(0, opts, () => 0), 50);
    assert.equal(backoffDelay(0, opts, () => 1), 100);
    assert.equal(backoffDelay(3, opts, () => 1), 800);
    assert.equal(backoffDelay(4, opts, () => 1), 1000);
    assert.equal(backoffDelay(60, opts, () => 0), 500);
  });
});

describe("webSocketUrl", () => {
  it("maps the public URL to the /ws endpoint", () => {
    assert.equal(webSocketUrl("http://127.0.0.1:7000"), "ws://127.0.0.1:7000/ws");
    assert.equal(webSocketUrl("https://chat.example.org/parley/"), "wss://chat.example.org/parley/ws");
  });
});

describe("SeqOrderer", () => {
  it("releases in order, once, and reports gaps", () => {
    const o = new SeqOrderer(2);
    assert.deepEqual(o.push(msg(2)), { ready: [], gap: false }, "already shown");
    assert.deepEqual(
      o.push(msg(3)).ready.map((m) => m.seq),
      [3],
    );
    assert.deepEqual(o.push(msg(5)), { ready: [], gap: true });
    assert.deepEqual(o.push(msg(5)), { ready: [], gap: false }, "a duplicate of a waiting one");
    assert.deepEqual(
      o.push(msg(4)).ready.map((m) => m.seq),
      [4, 5],
    );
    assert.equal(o.lastSeq, 5);
    assert.deepEqual(o.push(msg(4)).ready, []);
  });
});

describe("CredentialsFile", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "parley-cli-creds-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("keeps sessions per server and username in a private file", async () => {
    const f = new CredentialsFile(join(dir, "a"));
    assert.equal(f.currentUser("http://x"), undefined);
    await f.session("http://x", "alice").save(session());
    await f.session("http://y", "alice").save(session({ accessToken: "other" }));
    f.setCurrentUser("http://x", "alice");
    assert.equal(f.currentUser("http://x"), "alice");
    assert.equal(f.currentUser("http://y"), undefined);
    assert.equal((await f.session("http://x", "alice").load())?.accessToken, "access-1");
    assert.equal((await f.session("http://y", "alice").load())?.accessToken, "other");
    assert.equal(await f.session("http://x", "bob").load(), undefined);
    assert.equal(statSync(f.path).mode & 0o777, 0o600);
  });

  it("runs exclusive sections one at a time", async () => {
    const f = new CredentialsFile(join(dir, "b"));
    const events: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const first = f.locked(async () => {
      events.push("first in");
      await gate;
      events.push("first out");
    });
    const second = f.locked(async () => {
      events.push("second in");
    });
    // The first holds the lock until released; the second must not have entered.
    await within(2000, new Promise<void>((r) => setImmediate(r)), "a tick");
    assert.deepEqual(events, ["first in"]);
    release();
    await within(5000, Promise.all([first, second]), "both sections");
    assert.deepEqual(events, ["first in", "first out", "second in"]);
  });
});

describe("ParleyClient tokens", () => {
  /** A fake public API: Refresh rotates tokens; ListConversations wants `valid` tokens. */
  function fake(opts: { valid: Set<string>; refreshFails?: boolean }) {
    const calls = { refresh: 0, list: [] as string[] };
    let n = 1;
    const routes = (router: ConnectRouter) => {
      router.service(AuthService, {
        refresh(req) {
          calls.refresh++;
          if (opts.refreshFails || req.refreshToken !== `refresh-${n}`) throw new ConnectError("refresh token reused", Code.Unauthenticated);
          n++;
          opts.valid.add(`access-${n}`);
          return {
            tokens: {
              accessToken: `access-${n}`,
              accessExpiresAt: timestampFromMs(NOW + 900_000),
              refreshToken: `refresh-${n}`,
              refreshExpiresAt: timestampFromMs(NOW + 86_400_000),
              sessionId: "s1",
              deviceId: DEVICE,
            },
          };
        },
      });
      router.service(ChatService, {
        listConversations(_req, ctx) {
          const token = (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer /, "");
          calls.list.push(token);
          if (!opts.valid.has(token)) throw new ConnectError("bad token", Code.Unauthenticated);
          return { conversations: [] };
        },
      });
    };
    return { transport: createRouterTransport(routes), calls };
  }

  it("uses a fresh token as is", async () => {
    const { transport, calls } = fake({ valid: new Set(["access-1"]) });
    const client = new ParleyClient({ baseUrl: "http://fake", transport, store: new MemorySessionStore(session()), clock: () => NOW });
    await client.listConversations();
    assert.deepEqual(calls, { refresh: 0, list: ["access-1"] });
  });

  it("refreshes a token about to expire and stores the new pair", async () => {
    const { transport, calls } = fake({ valid: new Set(["access-1"]) });
    const store = new MemorySessionStore(session({ accessExpiresAtMs: NOW + 5_000 }));
    const client = new ParleyClient({ baseUrl: "http://fake", transport, store, clock: () => NOW });
    await client.listConversations();
    assert.deepEqual(calls, { refresh: 1, list: ["access-2"] });
    const saved = await store.load();
    assert.equal(saved?.refreshToken, "refresh-2");
    assert.equal(saved?.deviceId, DEVICE);
  });

  it("refreshes once and retries when the server refuses a token", async () => {
    const { transport, calls } = fake({ valid: new Set() });
    const client = new ParleyClient({ baseUrl: "http://fake", transport, store: new MemorySessionStore(session()), clock: () => NOW });
    await client.listConversations();
    assert.deepEqual(calls, { refresh: 1, list: ["access-1", "access-2"] });
  });

  it("adopts tokens another process refreshed instead of reusing the refresh token", async () => {
    const { transport, calls } = fake({ valid: new Set(["access-1"]) });
    const store = new MemorySessionStore(session({ accessExpiresAtMs: NOW + 5_000 }));
    const a = new ParleyClient({ baseUrl: "http://fake", transport, store, clock: () => NOW });
    const b = new ParleyClient({ baseUrl: "http://fake", transport, store, clock: () => NOW });
    // Both loaded the same (expiring) session before either refreshed.
    await Promise.all([a.deviceId(), b.deviceId()]);
    await a.listConversations();
    await b.listConversations();
    assert.deepEqual(calls, { refresh: 1, list: ["access-2", "access-2"] });
  });

  it("forgets the tokens (not the device) when the session is gone", async () => {
    const { transport } = fake({ valid: new Set(), refreshFails: true });
    const store = new MemorySessionStore(session());
    const client = new ParleyClient({ baseUrl: "http://fake", transport, store, clock: () => NOW });
    await assert.rejects(client.listConversations(), NotLoggedInError);
    assert.deepEqual(await store.load(), { deviceId: DEVICE });
    await assert.rejects(client.listConversations(), NotLoggedInError);
  });
});

/** A scriptable stand-in for the gateway's WebSocket plus a history API. */
class FakeGateway {
  readonly wss: WebSocketServer;
  readonly sends: { conn: number; clientMsgId: string; body: string }[] = [];
  readonly stored = new Map<string, number>();
  history: ChatMessage[] = [];
  connections = 0;
  /** What to do with a send: "ack", "drop" (close the socket before acking), or an error code. */
  script: (n: number) => "ack" | "drop" | ErrorCode = () => "ack";
  private nextSeq = 1;
  private waiters: (() => void)[] = [];

  constructor() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (p) => (p.has("parley.v1") ? "parley.v1" : false) });
    this.wss.on("connection", (ws) => this.onConnection(ws));
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/ws`;
  }

  routes = (router: ConnectRouter) => {
    router.service(ChatService, {
      getHistory: (req) => {
        const before = Number(req.beforeSeq) || Infinity;
        const page = this.history.filter((m) => m.seq < before).sort((a, b) => b.seq - a.seq).slice(0, req.limit || 50);
        return {
          messages: page.map((m) => ({ ...m, seq: BigInt(m.seq), sentAt: timestampFromMs(m.sentAtMs) })),
          nextBeforeSeq: 0n,
        };
      },
    });
  };

  /** Messages pushed right behind Hello on every new connection. */
  greeting: ChatMessage[] = [];

  private messageFrame(m: ChatMessage): Uint8Array {
    const value = create(MessageSchema, { ...m, seq: BigInt(m.seq), sentAt: timestampFromMs(m.sentAtMs) });
    return toBinary(ServerFrameSchema, create(ServerFrameSchema, { kind: { case: "message", value } }));
  }

  /** A message someone else sent: stored, and pushed to open sockets when `push`. */
  store(body: string, push: boolean): ChatMessage {
    const m = msg(this.nextSeq++, body);
    this.history.push(m);
    if (push) for (const ws of this.wss.clients) ws.send(this.messageFrame(m));
    return m;
  }

  /** Resolves on the next connection. */
  nextConnection(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  private write(ws: WebSocket, init: MessageInitShape<typeof ServerFrameSchema>) {
    ws.send(toBinary(ServerFrameSchema, create(ServerFrameSchema, init)));
  }

  private onConnection(ws: WebSocket) {
    const conn = ++this.connections;
    this.write(ws, { kind: { case: "hello", value: { userId: USER, deviceId: DEVICE, sessionId: "s1", gatewayId: "fake", idleTimeoutSeconds: 60 } } });
    for (const m of this.greeting) ws.send(this.messageFrame(m));
    for (const w of this.waiters.splice(0)) w();
    ws.on("message", (data: Buffer) => {
      const frame: ClientFrame = fromBinary(ClientFrameSchema, new Uint8Array(data));
      if (frame.kind.case !== "send") return;
      const s = frame.kind.value;
      this.sends.push({ conn, clientMsgId: s.clientMsgId, body: s.body });
      const what = this.script(this.sends.length);
      let seq = this.stored.get(s.clientMsgId);
      const duplicate = seq !== undefined;
      if (what !== "ack" && what !== "drop") {
        this.write(ws, { ref: frame.ref, kind: { case: "error", value: { code: what, message: "scripted", retryable: what === ErrorCode.UNAVAILABLE, clientMsgId: s.clientMsgId } } });
        return;
      }
      if (seq === undefined) {
        seq = this.nextSeq++;
        this.stored.set(s.clientMsgId, seq);
        this.history.push({ ...msg(seq, s.body, USER), clientMsgId: s.clientMsgId });
      }
      if (what === "drop") {
        ws.terminate(); // stored, but the ack is lost
        return;
      }
      this.write(ws, { ref: frame.ref, kind: { case: "ack", value: { clientMsgId: s.clientMsgId, conversationId: CONV, seq: BigInt(seq), messageId: `id${seq}`, duplicate, sentAt: timestampFromMs(NOW) } } });
    });
  }

  close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

describe("LiveChat against a fake gateway", () => {
  let gw: FakeGateway;
  let chat: LiveChat | undefined;

  function start(afterSeq = 0): { chat: LiveChat; seen: ChatMessage[]; next: (n: number) => Promise<void> } {
    const client = new ParleyClient({
      baseUrl: "http://fake",
      wsUrl: gw.url,
      transport: createRouterTransport(gw.routes),
      store: new MemorySessionStore(session({ accessExpiresAtMs: Date.now() + 3_600_000 })),
    });
    const c = new LiveChat({ client, conversationId: CONV, afterSeq, backoff: { baseMs: 1, maxMs: 5 } });
    chat = c;
    const seen: ChatMessage[] = [];
    let wake: (() => void) | undefined;
    c.on("message", (m) => {
      seen.push(m);
      wake?.();
    });
    const next = (n: number) =>
      within(
        5000,
        new Promise<void>((resolve) => {
          const check = () => (seen.length >= n ? resolve() : undefined);
          wake = check;
          check();
        }),
        `${n} messages`,
      );
    return { chat: c, seen, next };
  }

  before(async () => {
    gw = new FakeGateway();
    await new Promise<void>((r) => gw.wss.once("listening", () => r()));
  });
  after(async () => {
    await chat?.close();
    await gw.close();
  });

  it("resends with the same client_msg_id when the connection drops before the ack, and catches up", async () => {
    gw.script = (n) => {
      if (n !== 1) return "ack";
      // Someone else writes (never pushed to us), then our socket dies before our ack.
      gw.store("while you were away", false);
      return "drop";
    };
    const { chat: c, seen, next } = start();
    await c.start();
    const reconnected = gw.nextConnection();
    const ack = c.send("hello");
    await within(5000, reconnected, "a reconnect");
    const a = await within(5000, ack, "the ack");
    assert.equal(a.seq, 2);
    assert.equal(a.duplicate, true);
    assert.equal(gw.sends.length, 2);
    assert.equal(gw.sends[0]!.clientMsgId, gw.sends[1]!.clientMsgId);
    assert.notEqual(gw.sends[0]!.conn, gw.sends[1]!.conn);
    await next(2);
    gw.store("live", true);
    await next(3);
    assert.deepEqual(
      seen.map((m) => [m.seq, m.body]),
      [
        [1, "while you were away"],
        [2, "hello"],
        [3, "live"],
      ],
    );
    await c.close();
  });

  it("holds messages that arrive with Hello for the first listener", async () => {
    gw.greeting = [msg(41, "queued while offline")];
    gw.script = () => "ack";
    const client = new ParleyClient({
      baseUrl: "http://fake",
      wsUrl: gw.url,
      store: new MemorySessionStore(session({ accessExpiresAtMs: Date.now() + 3_600_000 })),
    });
    const socket = await client.connect();
    try {
      // The ack comes after the greeting on the wire: the greeting has surely arrived.
      await within(5000, socket.send(CONV, "ping-pong"), "an ack");
      const got = await within(
        5000,
        new Promise<ChatMessage>((resolve) => socket.once("message", resolve)),
        "the held message",
      );
      assert.equal(got.body, "queued while offline");
      assert.equal(socket.hello.deviceId, DEVICE);
    } finally {
      gw.greeting = [];
      await socket.close();
    }
  });

  it("retries retryable errors, gives up on the others with the code", async () => {
    gw.sends.length = 0;
    gw.script = (n) => (n === 1 ? ErrorCode.UNAVAILABLE : n === 3 ? ErrorCode.PERMISSION_DENIED : "ack");
    const { chat: c } = start(gw.history.length);
    await c.start();
    const ok = await within(5000, c.send("after a retry"), "the ack");
    assert.equal(gw.sends.length, 2);
    assert.equal(gw.sends[0]!.clientMsgId, gw.sends[1]!.clientMsgId);
    assert.equal(ok.duplicate, false);
    const denied = await within(
      5000,
      c.send("denied").catch((e: unknown) => e),
      "the rejection",
    );
    assert.ok(denied instanceof FrameError);
    assert.equal(denied.codeName, "PERMISSION_DENIED");
    assert.equal(gw.sends.length, 3);
    await c.close();
  });
});
