import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import WebSocket from "ws";
import { AuthService, type Tokens } from "../../gen/parley/client/v1/auth_service_pb.js";
import { ChatService } from "../../gen/parley/client/v1/chat_service_pb.js";
import { ClientFrameSchema, ErrorCode, ServerFrameSchema, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";
import { ConversationKind, Role, type Conversation, type ConversationEvent, type Message, type User } from "../../gen/parley/client/v1/types_pb.js";
import { MemorySessionStore, type SessionStore, type StoredSession } from "./credentials.js";

// ---------------------------------------------------------------------------------------
// Domain types (numbers, not bigints; milliseconds, not Timestamps)
// ---------------------------------------------------------------------------------------

export interface UserInfo {
  userId: string;
  username: string;
  displayName: string;
}

export interface ChatMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  senderDeviceId: string;
  clientMsgId: string;
  body: string;
  sentAtMs: number;
}

export interface ConversationInfo {
  conversationId: string;
  kind: "direct" | "group";
  memberIds: string[];
  /** Seq of the newest message; 0 when empty (seqs are dense, so also the message count). */
  lastSeq: number;
  lastActivityAtMs: number;
}

export interface Ack {
  clientMsgId: string;
  conversationId: string;
  seq: number;
  messageId: string;
  sentAtMs: number;
  /** The server had stored this client_msg_id already (a resend). */
  duplicate: boolean;
}

export interface HelloInfo {
  userId: string;
  deviceId: string;
  sessionId: string;
  gatewayId: string;
  maxFrameBytes: number;
  idleTimeoutSeconds: number;
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/** No usable session: the user must log in (again). */
export class NotLoggedInError extends Error {
  override readonly name = "NotLoggedInError";
}

/** The server answered a send (or another frame) with an error frame. */
export class FrameError extends Error {
  override readonly name = "FrameError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryable: boolean,
    readonly clientMsgId: string,
  ) {
    super(message);
  }
  /** "PERMISSION_DENIED", "RATE_LIMITED", ... */
  get codeName(): string {
    return errorCodeName(this.code);
  }
}

/** The socket closed (or never opened) before the answer came: resending may work. */
export class ConnectionLostError extends Error {
  override readonly name = "ConnectionLostError";
  constructor(
    message: string,
    readonly closeCode = 1006,
  ) {
    super(message);
  }
}

/** 4401: the gateway closed the socket because the session service refused its token. */
export const CLOSE_UNAUTHENTICATED = 4401;

/**
 * The access token was refused: at the upgrade (401: missing, malformed, expired) or
 * right after it (close 4401: bad signature, revoked session). A refresh may fix it.
 */
export function isRefusedToken(err: unknown): boolean {
  return (
    (err instanceof UpgradeRefusedError && err.status === 401) ||
    (err instanceof ConnectionLostError && err.closeCode === CLOSE_UNAUTHENTICATED)
  );
}

/** The gateway refused the WebSocket upgrade with an HTTP status. */
export class UpgradeRefusedError extends Error {
  override readonly name = "UpgradeRefusedError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function errorCodeName(code: ErrorCode): string {
  return ErrorCode[code] ?? `ERROR_CODE_${code}`;
}

/** A one-line description of any error a client call can throw. */
export function describeError(err: unknown): string {
  if (err instanceof ConnectError) return `${Code[err.code] ?? err.code}: ${err.rawMessage}`;
  if (err instanceof FrameError) return `${err.codeName} ${err.message}`;
  if (err instanceof Error) return err.message;
  return String(err);
}

// ---------------------------------------------------------------------------------------
// Conversions at the edge
// ---------------------------------------------------------------------------------------

function ms(t: Timestamp | undefined): number {
  return t ? timestampMs(t) : 0;
}

/** A one-line description of a conversation event (group changes are stored as messages). */
export function describeEvent(e: ConversationEvent | undefined): string {
  switch (e?.kind.case) {
    case "groupCreated":
      return `* created the group "${e.kind.value.name}" with ${e.kind.value.memberIds.length} members`;
    case "membersAdded":
      return `* added ${e.kind.value.userIds.join(", ")}`;
    case "memberRemoved":
      return `* removed ${e.kind.value.userId}`;
    case "memberLeft":
      return "* left the group";
    case "roleChanged":
      return `* made ${e.kind.value.userId} ${Role[e.kind.value.role]?.toLowerCase() ?? "?"}`;
    case "groupUpdated":
      return `* renamed the group "${e.kind.value.name}"${e.kind.value.topic ? ` (topic: ${e.kind.value.topic})` : ""}`;
    case "groupDeleted":
      return "* deleted the group";
    default:
      return "* changed the conversation";
  }
}

export function toChatMessage(m: Message): ChatMessage {
  return {
    conversationId: m.conversationId,
    seq: Number(m.seq),
    messageId: m.messageId,
    senderId: m.senderId,
    senderDeviceId: m.senderDeviceId,
    clientMsgId: m.clientMsgId,
    body: m.event ? describeEvent(m.event) : m.body,
    sentAtMs: ms(m.sentAt),
  };
}

function toUserInfo(u: User): UserInfo {
  return { userId: u.userId, username: u.username, displayName: u.displayName };
}

function toConversationInfo(c: Conversation): ConversationInfo {
  return {
    conversationId: c.conversationId,
    kind: c.kind === ConversationKind.GROUP ? "group" : "direct",
    memberIds: [...c.memberIds],
    lastSeq: Number(c.lastSeq),
    lastActivityAtMs: ms(c.lastActivityAt),
  };
}

function sessionFromTokens(userId: string, t: Tokens | undefined): StoredSession {
  if (!t) throw new ConnectError("server answered without tokens", Code.Internal);
  return {
    userId,
    deviceId: t.deviceId,
    accessToken: t.accessToken,
    accessExpiresAtMs: ms(t.accessExpiresAt),
    refreshToken: t.refreshToken,
    refreshExpiresAtMs: ms(t.refreshExpiresAt),
    sessionId: t.sessionId,
  };
}

/** The WebSocket URL of a public base URL: http://h:p → ws://h:p/ws. */
export function webSocketUrl(baseUrl: string): string {
  const u = new URL(baseUrl);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = u.pathname.replace(/\/+$/, "") + "/ws";
  return u.toString();
}

// ---------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------

export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 250, maxMs: 10_000 };

/**
 * Delay before retry number `attempt` (0-based): exponential, capped, with "equal
 * jitter" (between half and all of the step) so many clients do not retry in lockstep.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const step = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(step / 2 + (random() * step) / 2);
}

// ---------------------------------------------------------------------------------------
// ParleyClient: the Connect API with token handling
// ---------------------------------------------------------------------------------------

export interface ParleyClientOptions {
  /** The gateway's public URL, e.g. http://127.0.0.1:7000. */
  baseUrl: string;
  /** Where the session lives (default: memory only). */
  store?: SessionStore;
  /** Overrides the Connect transport (tests use createRouterTransport). */
  transport?: Transport;
  /** Overrides the WebSocket URL (default: derived from baseUrl). */
  wsUrl?: string;
  clock?: () => number;
  /** Refresh the access token when it expires within this many milliseconds. */
  refreshSkewMs?: number;
  /** Deadline of each RPC. */
  timeoutMs?: number;
}

/**
 * A Parley account on one server: sign-up/log-in, the chat API, and WebSockets. The
 * access token is refreshed before it expires (and once more when the server says it
 * is no longer valid); refreshed tokens go back to the store.
 */
export class ParleyClient {
  readonly baseUrl: string;
  readonly wsUrl: string;
  private readonly auth: Client<typeof AuthService>;
  private readonly chat: Client<typeof ChatService>;
  private readonly store: SessionStore;
  private readonly clock: () => number;
  private readonly skewMs: number;
  private readonly timeoutMs: number;
  private session: Partial<StoredSession> | undefined;
  private loaded = false;
  private readonly userCache = new Map<string, UserInfo>();

  constructor(opts: ParleyClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.wsUrl = opts.wsUrl ?? webSocketUrl(this.baseUrl);
    const transport = opts.transport ?? createConnectTransport({ baseUrl: this.baseUrl, httpVersion: "1.1" });
    this.auth = createClient(AuthService, transport);
    this.chat = createClient(ChatService, transport);
    this.store = opts.store ?? new MemorySessionStore();
    this.clock = opts.clock ?? Date.now;
    this.skewMs = opts.refreshSkewMs ?? 30_000;
    this.timeoutMs = opts.timeoutMs ?? 15_000;
  }

  private async current(): Promise<Partial<StoredSession> | undefined> {
    if (!this.loaded) {
      this.session = await this.store.load();
      this.loaded = true;
    }
    return this.session;
  }

  /** The logged-in user's id (undefined when logged out). */
  async userId(): Promise<string | undefined> {
    const s = await this.current();
    return s?.accessToken ? s.userId : undefined;
  }

  /** This device's id on the server (kept across log-outs). */
  async deviceId(): Promise<string | undefined> {
    return (await this.current())?.deviceId;
  }

  private async adopt(s: Partial<StoredSession>): Promise<void> {
    this.session = s;
    this.loaded = true;
    await this.store.save(s);
  }

  async signUp(username: string, password: string, displayName = ""): Promise<UserInfo> {
    const deviceId = (await this.current())?.deviceId ?? "";
    const res = await this.auth.signUp({ username, password, displayName, deviceId }, { timeoutMs: this.timeoutMs });
    if (!res.user) throw new ConnectError("server answered without a user", Code.Internal);
    await this.adopt(sessionFromTokens(res.user.userId, res.tokens));
    this.userCache.set(res.user.userId, toUserInfo(res.user));
    return toUserInfo(res.user);
  }

  async logIn(username: string, password: string): Promise<UserInfo> {
    const deviceId = (await this.current())?.deviceId ?? "";
    const res = await this.auth.logIn({ username, password, deviceId }, { timeoutMs: this.timeoutMs });
    if (!res.user) throw new ConnectError("server answered without a user", Code.Internal);
    await this.adopt(sessionFromTokens(res.user.userId, res.tokens));
    this.userCache.set(res.user.userId, toUserInfo(res.user));
    return toUserInfo(res.user);
  }

  /** Revokes the session on the server (best effort) and forgets its tokens; the device id stays. */
  async logOut(): Promise<void> {
    const s = await this.current();
    if (!s?.accessToken) throw new NotLoggedInError("not logged in");
    try {
      await this.authed((o) => this.auth.logOut({}, o));
    } catch (err) {
      // An expired or revoked session is as logged out as it gets.
      if (!(err instanceof NotLoggedInError) && ConnectError.from(err).code !== Code.Unauthenticated) throw err;
    } finally {
      await this.adopt({ deviceId: s.deviceId });
    }
  }

  async me(): Promise<{ user: UserInfo; deviceId: string; sessionId: string }> {
    const res = await this.authed((o) => this.auth.me({}, o));
    if (!res.user) throw new ConnectError("server answered without a user", Code.Internal);
    return { user: toUserInfo(res.user), deviceId: res.deviceId, sessionId: res.sessionId };
  }

  /** A valid access token, refreshed first when it is about to expire. */
  async accessToken(): Promise<string> {
    const s = await this.current();
    if (!s?.accessToken) throw new NotLoggedInError("not logged in");
    if ((s.accessExpiresAtMs ?? 0) - this.skewMs > this.clock()) return s.accessToken;
    return this.refresh(s.accessToken);
  }

  /**
   * Replaces the access token `stale` (expired or refused by the server). Another
   * process sharing the store may have refreshed already: then its tokens are used,
   * because a refresh token works once and reusing it revokes the session.
   */
  async refresh(stale: string): Promise<string> {
    return this.store.exclusive(async () => {
      const stored = await this.store.load();
      this.session = stored;
      this.loaded = true;
      if (!stored?.accessToken || !stored.refreshToken) throw new NotLoggedInError("not logged in");
      if (stored.accessToken !== stale && (stored.accessExpiresAtMs ?? 0) - this.skewMs > this.clock()) {
        return stored.accessToken;
      }
      if ((stored.refreshExpiresAtMs ?? Infinity) <= this.clock()) {
        await this.adopt({ deviceId: stored.deviceId });
        throw new NotLoggedInError("session expired: log in again");
      }
      let res;
      try {
        res = await this.auth.refresh({ refreshToken: stored.refreshToken }, { timeoutMs: this.timeoutMs });
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
          await this.adopt({ deviceId: stored.deviceId });
          throw new NotLoggedInError(`session ended (${ConnectError.from(err).rawMessage}): log in again`);
        }
        throw err;
      }
      const next = sessionFromTokens(stored.userId ?? "", res.tokens);
      await this.adopt(next);
      return next.accessToken;
    });
  }

  /** Runs an authenticated call; when the token is refused, refreshes once and retries. */
  private async authed<T>(call: (opts: CallOptions) => Promise<T>): Promise<T> {
    const token = await this.accessToken();
    const opts = (t: string): CallOptions => ({ headers: { authorization: `Bearer ${t}` }, timeoutMs: this.timeoutMs });
    try {
      return await call(opts(token));
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Unauthenticated) throw err;
    }
    return call(opts(await this.refresh(token)));
  }

  async openDirect(peer: { username: string } | { userId: string }): Promise<ConversationInfo> {
    const res = await this.authed((o) =>
      this.chat.openDirectConversation(
        { peer: "username" in peer ? { case: "peerUsername", value: peer.username } : { case: "peerUserId", value: peer.userId } },
        o,
      ),
    );
    if (!res.conversation) throw new ConnectError("server answered without a conversation", Code.Internal);
    return toConversationInfo(res.conversation);
  }

  /** The caller's conversations, most recently active first. */
  async listConversations(limit = 50): Promise<ConversationInfo[]> {
    const res = await this.authed((o) => this.chat.listConversations({ limit }, o));
    return res.conversations.map(toConversationInfo);
  }

  /** One page of history, newest first; `nextBeforeSeq` 0 when there is no older page. */
  async history(
    conversationId: string,
    page: { beforeSeq?: number; limit?: number } = {},
  ): Promise<{ messages: ChatMessage[]; nextBeforeSeq: number }> {
    const res = await this.authed((o) =>
      this.chat.getHistory({ conversationId, beforeSeq: BigInt(page.beforeSeq ?? 0), limit: page.limit ?? 50 }, o),
    );
    return { messages: res.messages.map(toChatMessage), nextBeforeSeq: Number(res.nextBeforeSeq) };
  }

  /** The newest `count` messages, oldest first (pages as needed). */
  async lastMessages(conversationId: string, count: number): Promise<ChatMessage[]> {
    const out: ChatMessage[] = [];
    let beforeSeq = 0;
    while (out.length < count) {
      const page = await this.history(conversationId, { beforeSeq, limit: Math.min(200, count - out.length) });
      out.push(...page.messages);
      if (page.nextBeforeSeq === 0 || page.messages.length === 0) break;
      beforeSeq = page.nextBeforeSeq;
    }
    return out.reverse();
  }

  /** Every message with a seq above `afterSeq`, oldest first. */
  async messagesAfter(conversationId: string, afterSeq: number): Promise<ChatMessage[]> {
    const out: ChatMessage[] = [];
    let beforeSeq = 0;
    for (;;) {
      const page = await this.history(conversationId, { beforeSeq, limit: 200 });
      let reached = false;
      for (const m of page.messages) {
        if (m.seq <= afterSeq) {
          reached = true;
          break;
        }
        out.push(m);
      }
      if (reached || page.nextBeforeSeq === 0 || page.messages.length === 0) break;
      beforeSeq = page.nextBeforeSeq;
    }
    return out.reverse();
  }

  /** Public profiles by id, cached for the life of the client. */
  async users(userIds: Iterable<string>): Promise<Map<string, UserInfo>> {
    const wanted = [...new Set(userIds)];
    const missing = wanted.filter((id) => !this.userCache.has(id));
    for (let i = 0; i < missing.length; i += 200) {
      const res = await this.authed((o) => this.chat.getUsers({ userIds: missing.slice(i, i + 200) }, o));
      for (const u of res.users) this.userCache.set(u.userId, toUserInfo(u));
    }
    const out = new Map<string, UserInfo>();
    for (const id of wanted) {
      const u = this.userCache.get(id);
      if (u) out.set(id, u);
    }
    return out;
  }

  /** A display name for a user id: the username, or a short id when unknown. */
  async nameOf(userId: string): Promise<string> {
    return (await this.users([userId])).get(userId)?.username ?? userId.slice(0, 8);
  }

  /** Opens an authenticated WebSocket; resolves once the server's Hello arrived. */
  async connect(opts: { helloTimeoutMs?: number } = {}): Promise<ParleySocket> {
    const token = await this.accessToken();
    try {
      return await ParleySocket.open(this.wsUrl, token, opts);
    } catch (err) {
      if (!isRefusedToken(err)) throw err;
    }
    return ParleySocket.open(this.wsUrl, await this.refresh(token), opts);
  }
}

// ---------------------------------------------------------------------------------------
// ParleySocket: one WebSocket connection speaking the frame protocol
// ---------------------------------------------------------------------------------------

export const SUBPROTOCOL = "parley.v1";

interface PendingSend {
  resolve: (ack: Ack) => void;
  reject: (err: Error) => void;
  promise: Promise<Ack>;
}

export interface SocketEvents {
  /** A message pushed by the server (any conversation of the user). */
  message: [ChatMessage];
  /** An error frame that answers no send of this socket. */
  serverError: [FrameError];
  /** The connection ended (by either side). Pending sends have been rejected. */
  close: [code: number, reason: string];
}

/**
 * One authenticated WebSocket. `send` returns the ack (or rejects with a FrameError, or
 * a ConnectionLostError when the socket closes first); pushed messages are `message`
 * events (those that arrive before the first listener are held for it). A Ping goes out
 * every half idle timeout; a missing Pong ends the connection.
 */
export class ParleySocket extends EventEmitter<SocketEvents> {
  private readonly pending = new Map<string, PendingSend>();
  /** Frame ref → client_msg_id: some errors (rate limit) carry only the ref. */
  private readonly refs = new Map<number, string>();
  private nextRef = 1;
  private keepalive: NodeJS.Timeout | undefined;
  private awaitingPong = false;
  private closedWith: { code: number; reason: string } | undefined;
  private readonly closedPromise: Promise<void>;
  /** Messages that came with Hello, before anyone could listen: held for the first listener. */
  private backlog: ChatMessage[] | undefined = [];

  private constructor(
    private readonly ws: WebSocket,
    readonly hello: HelloInfo,
  ) {
    super();
    this.closedPromise = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.onClose(code, reason.toString("utf8"));
        resolve();
      });
    });
    ws.on("message", (data, isBinary) => this.onData(data, isBinary));
    ws.on("error", () => {}); // always followed by "close"
    (this as EventEmitter).on("newListener", (event: string | symbol) => {
      if (event === "message") queueMicrotask(() => this.flushBacklog());
    });
    const seconds = Math.max(2, Math.floor((hello.idleTimeoutSeconds || 60) / 2));
    this.keepalive = setInterval(() => this.tick(), seconds * 1000);
    this.keepalive.unref();
  }

  /** Connects and waits for Hello. */
  static open(url: string, token: string, opts: { helloTimeoutMs?: number } = {}): Promise<ParleySocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, [SUBPROTOCOL], {
        headers: { authorization: `Bearer ${token}` },
        handshakeTimeout: opts.helloTimeoutMs ?? 10_000,
      });
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.removeAllListeners();
        ws.on("error", () => {});
        ws.terminate();
        reject(err);
      };
      const timer = setTimeout(() => fail(new ConnectionLostError("no Hello from the server in time")), opts.helloTimeoutMs ?? 10_000);
      ws.on("unexpected-response", (_req, res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8").trim();
          fail(new UpgradeRefusedError(res.statusCode ?? 0, `server refused the WebSocket (${res.statusCode}): ${body}`));
        });
        res.on("error", () => fail(new UpgradeRefusedError(res.statusCode ?? 0, `server refused the WebSocket (${res.statusCode})`)));
      });
      ws.on("error", (err) => fail(new ConnectionLostError(`cannot connect to ${url}: ${err.message}`)));
      ws.on("close", (code, reason) => fail(new ConnectionLostError(`closed before Hello (${code} ${reason.toString("utf8")})`, code)));
      ws.once("message", (data, isBinary) => {
        if (settled) return;
        let frame: ServerFrame;
        try {
          frame = decodeServerFrame(data, isBinary);
        } catch (err) {
          return fail(new ConnectionLostError(`undecodable first frame: ${(err as Error).message}`));
        }
        if (frame.kind.case !== "hello") return fail(new ConnectionLostError(`expected Hello, got ${frame.kind.case ?? "nothing"}`));
        settled = true;
        clearTimeout(timer);
        ws.removeAllListeners();
        const h = frame.kind.value;
        resolve(
          new ParleySocket(ws, {
            userId: h.userId,
            deviceId: h.deviceId,
            sessionId: h.sessionId,
            gatewayId: h.gatewayId,
            maxFrameBytes: h.maxFrameBytes,
            idleTimeoutSeconds: h.idleTimeoutSeconds,
          }),
        );
      });
    });
  }

  get isOpen(): boolean {
    return this.closedWith === undefined && this.ws.readyState === WebSocket.OPEN;
  }

  /**
   * Sends a message. A resend with the same `clientMsgId` (after an error or on another
   * socket) is stored once and acknowledged with the same seq.
   */
  send(conversationId: string, body: string, clientMsgId: string = randomUUID()): Promise<Ack> {
    const existing = this.pending.get(clientMsgId);
    if (existing) return existing.promise;
    if (!this.isOpen) return Promise.reject(new ConnectionLostError("not connected", this.closedWith?.code));
    let resolve!: (ack: Ack) => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<Ack>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.pending.set(clientMsgId, { resolve, reject, promise });
    const ref = this.takeRef();
    this.refs.set(ref, clientMsgId);
    this.write({ ref, kind: { case: "send", value: { clientMsgId, conversationId, body } } });
    return promise;
  }

  /** Closes with `code` (1000: normal) and resolves when the socket is closed. */
  close(code = 1000, reason = "bye"): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
    return this.closedPromise;
  }

  /** Drops the connection without a closing handshake (a dead network, for tests). */
  terminate(): void {
    this.ws.terminate();
  }

  private takeRef(): number {
    const ref = this.nextRef;
    this.nextRef = this.nextRef >= 0xffffffff ? 1 : this.nextRef + 1;
    return ref;
  }

  private write(init: MessageInitShape<typeof ClientFrameSchema>): void {
    this.ws.send(toBinary(ClientFrameSchema, create(ClientFrameSchema, init)));
  }

  private tick(): void {
    if (!this.isOpen) return;
    if (this.awaitingPong) {
      // A whole interval without an answer: the connection is dead.
      this.ws.terminate();
      return;
    }
    this.awaitingPong = true;
    this.write({ ref: this.takeRef(), kind: { case: "ping", value: { nonce: BigInt(Date.now()) } } });
  }

  private onData(data: WebSocket.RawData, isBinary: boolean): void {
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(data, isBinary);
    } catch {
      return; // nothing sensible to do with an undecodable frame; the protocol is versioned
    }
    switch (frame.kind.case) {
      case "ack": {
        const a = frame.kind.value;
        this.refs.delete(frame.ref);
        const p = this.pending.get(a.clientMsgId);
        if (!p) return;
        this.pending.delete(a.clientMsgId);
        p.resolve({
          clientMsgId: a.clientMsgId,
          conversationId: a.conversationId,
          seq: Number(a.seq),
          messageId: a.messageId,
          sentAtMs: ms(a.sentAt),
          duplicate: a.duplicate,
        });
        return;
      }
      case "error": {
        const e = frame.kind.value;
        const id = e.clientMsgId || this.refs.get(frame.ref) || "";
        this.refs.delete(frame.ref);
        const err = new FrameError(e.code, e.message, e.retryable, id);
        const p = id ? this.pending.get(id) : undefined;
        if (!p) {
          this.emit("serverError", err);
          return;
        }
        this.pending.delete(id);
        p.reject(err);
        return;
      }
      case "message": {
        const m = toChatMessage(frame.kind.value);
        if (this.backlog && this.listenerCount("message") === 0) this.backlog.push(m);
        else {
          this.flushBacklog();
          this.emit("message", m);
        }
        return;
      }
      case "pong":
        this.awaitingPong = false;
        return;
      default:
        return; // hello again, or a kind newer than this client: ignore
    }
  }

  private flushBacklog(): void {
    const held = this.backlog;
    if (!held || this.listenerCount("message") === 0) return;
    this.backlog = undefined;
    for (const m of held) this.emit("message", m);
  }

  private onClose(code: number, reason: string): void {
    this.closedWith = { code, reason };
    if (this.keepalive) clearInterval(this.keepalive);
    this.keepalive = undefined;
    const err = new ConnectionLostError(`connection closed (${code}${reason ? " " + reason : ""})`, code);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.refs.clear();
    this.emit("close", code, reason);
  }
}

function decodeServerFrame(data: WebSocket.RawData, isBinary: boolean): ServerFrame {
  if (!isBinary) throw new Error("text frame on the binary subprotocol");
  const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
  return fromBinary(ServerFrameSchema, bytes);
}
