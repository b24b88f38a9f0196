import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import {
  backoffDelay,
  ConnectionLostError,
  DEFAULT_BACKOFF,
  FrameError,
  NotLoggedInError,
  isRefusedToken,
  UpgradeRefusedError,
  type Ack,
  type BackoffOptions,
  type ChatMessage,
  type HelloInfo,
  type ParleyClient,
  type ParleySocket,
} from "./client.js";

/**
 * Puts the messages of one conversation in seq order exactly once. Seqs are dense, so
 * a message more than one past the last one shown reveals a gap: it waits until the gap
 * is filled (from history) and `gap` tells the caller to fetch it.
 */
export class SeqOrderer {
  private readonly waiting = new Map<number, ChatMessage>();

  constructor(private last: number) {}

  /** The highest seq released so far. */
  get lastSeq(): number {
    return this.last;
  }

  push(m: ChatMessage): { ready: ChatMessage[]; gap: boolean } {
    if (m.seq <= this.last || this.waiting.has(m.seq)) return { ready: [], gap: false };
    if (m.seq !== this.last + 1) {
      this.waiting.set(m.seq, m);
      return { ready: [], gap: true };
    }
    const ready = [m];
    this.last = m.seq;
    for (let next = this.waiting.get(this.last + 1); next; next = this.waiting.get(this.last + 1)) {
      this.waiting.delete(next.seq);
      ready.push(next);
      this.last = next.seq;
    }
    return { ready, gap: false };
  }
}

export type LiveChatStatus =
  | { state: "connected"; hello: HelloInfo; reconnected: boolean }
  | { state: "disconnected"; code: number; reason: string }
  | { state: "retrying"; inMs: number; error: string };

export interface LiveChatEvents {
  /** A message of this conversation, in seq order, never twice; `own` for the caller's. */
  message: [ChatMessage, { own: boolean }];
  /** A message pushed for another conversation of the user. */
  elsewhere: [ChatMessage];
  status: [LiveChatStatus];
  /** Something went wrong that the chat survives (a failed catch-up, a stray error frame). */
  warning: [string];
  /** The chat cannot go on (session revoked, too many failed connects): it closed itself. */
  fatal: [Error];
}

export interface LiveChatOptions {
  client: ParleyClient;
  conversationId: string;
  /** Messages up to this seq have been shown; later ones are fetched after each (re)connect. */
  afterSeq: number;
  /** Fetch missed messages and emit `message` events (false for a one-shot send). */
  track?: boolean;
  backoff?: BackoffOptions;
  random?: () => number;
  /** Sends of one message answered with a retryable error before giving up. */
  maxSendAttempts?: number;
  /** Consecutive failed connects before giving up (default: never). */
  maxConnectAttempts?: number;
}

interface Outgoing {
  clientMsgId: string;
  body: string;
  attempts: number;
  inFlight: boolean;
  timer: NodeJS.Timeout | undefined;
  resolve: (ack: Ack) => void;
  reject: (err: Error) => void;
  promise: Promise<Ack>;
}

/** Refusals that reconnecting cannot fix. */
function isTerminal(err: unknown): boolean {
  return err instanceof NotLoggedInError || isRefusedToken(err) || (err instanceof UpgradeRefusedError && [400, 403].includes(err.status));
}

/**
 * A conversation kept live over reconnects: connects (with backoff), fetches what was
 * missed after every (re)connect, delivers messages in order without duplicates, and
 * sends with a stable client_msg_id that is resent after a retryable error or a
 * dropped connection until it is acknowledged.
 */
export class LiveChat extends EventEmitter<LiveChatEvents> {
  private socket: ParleySocket | undefined;
  private readonly orderer: SeqOrderer;
  private readonly outbox = new Map<string, Outgoing>();
  private readonly abort = new AbortController();
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly track: boolean;
  private myUserId = "";
  private connectedOnce = false;
  private catching = false;
  private catchAgain = false;
  private closed = false;

  constructor(private readonly opts: LiveChatOptions) {
    super();
    this.orderer = new SeqOrderer(opts.afterSeq);
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.random = opts.random ?? Math.random;
    this.track = opts.track ?? true;
  }

  get conversationId(): string {
    return this.opts.conversationId;
  }

  /** The highest seq delivered so far. */
  get lastSeq(): number {
    return this.orderer.lastSeq;
  }

  get connected(): boolean {
    return this.socket?.isOpen ?? false;
  }

  /** Connects (retrying with backoff); rejects on a terminal failure. */
  async start(): Promise<void> {
    this.myUserId = (await this.opts.client.userId()) ?? "";
    await this.connectLoop();
  }

  /** Sends `body`; resolves with the ack, rejects with a FrameError (or when closed first). */
  send(body: string): Promise<Ack> {
    if (this.closed) return Promise.reject(new Error("chat is closed"));
    let resolve!: (ack: Ack) => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<Ack>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const o: Outgoing = { clientMsgId: randomUUID(), body, attempts: 0, inFlight: false, timer: undefined, resolve, reject, promise };
    this.outbox.set(o.clientMsgId, o);
    this.transmit(o);
    return promise;
  }

  /** Sends not yet acknowledged. */
  get unacknowledged(): number {
    return this.outbox.size;
  }

  /** Waits until every send is settled, or `timeoutMs` passed. */
  async drain(timeoutMs: number): Promise<void> {
    if (this.outbox.size === 0) return;
    const all = Promise.allSettled([...this.outbox.values()].map((o) => o.promise));
    const timeout = new AbortController();
    await Promise.race([all, delay(timeoutMs, undefined, { signal: timeout.signal }).catch(() => {})]);
    timeout.abort();
  }

  /** Closes the connection normally (1000); unacknowledged sends are rejected. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.failOutbox(new Error("chat closed before the server acknowledged"));
    const s = this.socket;
    this.socket = undefined;
    await s?.close(1000, "bye");
  }

  /** Cuts the connection without a close handshake, as a dead network would (tests). */
  dropConnection(): void {
    this.socket?.terminate();
  }

  private failOutbox(err: Error): void {
    for (const o of this.outbox.values()) {
      clearTimeout(o.timer);
      o.reject(err);
    }
    this.outbox.clear();
  }

  private async connectLoop(): Promise<void> {
    for (let failures = 0; ; ) {
      if (this.closed) throw new Error("chat is closed");
      try {
        const socket = await this.opts.client.connect();
        if (this.closed) {
          await socket.close(1000, "bye");
          throw new Error("chat is closed");
        }
        this.attach(socket);
        return;
      } catch (err) {
        if (this.closed) throw err;
        failures++;
        if (isTerminal(err) || failures >= (this.opts.maxConnectAttempts ?? Infinity)) throw err;
        const inMs = backoffDelay(failures - 1, this.backoff, this.random);
        this.emit("status", { state: "retrying", inMs, error: (err as Error).message });
        try {
          await delay(inMs, undefined, { signal: this.abort.signal });
        } catch {
          throw new Error("chat is closed");
        }
      }
    }
  }

  private attach(socket: ParleySocket): void {
    this.socket = socket;
    socket.on("message", (m) => {
      if (m.conversationId === this.opts.conversationId) this.accept(m);
      else this.emit("elsewhere", m);
    });
    socket.on("serverError", (e) => this.emit("warning", `server error: ${e.codeName} ${e.message}`));
    socket.on("close", (code, reason) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (this.closed) return;
      this.emit("status", { state: "disconnected", code, reason });
      this.connectLoop().then(
        () => {},
        (err: Error) => {
          if (this.closed) return;
          void this.close();
          this.emit("fatal", err);
        },
      );
    });
    const reconnected = this.connectedOnce;
    this.connectedOnce = true;
    this.emit("status", { state: "connected", hello: socket.hello, reconnected });
    void this.catchUp();
    for (const o of this.outbox.values()) this.transmit(o);
  }

  private transmit(o: Outgoing): void {
    const socket = this.socket;
    if (!socket?.isOpen || o.inFlight || o.timer) return;
    o.inFlight = true;
    o.attempts++;
    socket.send(this.opts.conversationId, o.body, o.clientMsgId).then(
      (ack) => {
        o.inFlight = false;
        if (!this.outbox.delete(o.clientMsgId)) return;
        o.resolve(ack);
        this.accept({
          conversationId: ack.conversationId,
          seq: ack.seq,
          messageId: ack.messageId,
          senderId: this.myUserId,
          senderDeviceId: socket.hello.deviceId,
          clientMsgId: ack.clientMsgId,
          body: o.body,
          sentAtMs: ack.sentAtMs,
        });
      },
      (err: Error) => {
        o.inFlight = false;
        if (!this.outbox.has(o.clientMsgId)) return;
        if (err instanceof FrameError) {
          if (!err.retryable || o.attempts >= (this.opts.maxSendAttempts ?? 8)) {
            this.outbox.delete(o.clientMsgId);
            o.reject(err);
            return;
          }
          o.timer = setTimeout(() => {
            o.timer = undefined;
            this.transmit(o);
          }, backoffDelay(o.attempts - 1, this.backoff, this.random));
          return;
        }
        if (!(err instanceof ConnectionLostError)) {
          this.outbox.delete(o.clientMsgId);
          o.reject(err);
        }
        // Connection lost: the next connection resends it with the same client_msg_id.
      },
    );
  }

  private accept(m: ChatMessage): void {
    if (!this.track) return;
    const { ready, gap } = this.orderer.push(m);
    for (const r of ready) this.emit("message", r, { own: r.senderId === this.myUserId });
    if (gap) void this.catchUp();
  }

  /** Fetches everything after the last delivered seq (one fetch at a time). */
  private async catchUp(): Promise<void> {
    if (!this.track || this.closed) return;
    if (this.catching) {
      this.catchAgain = true;
      return;
    }
    this.catching = true;
    try {
      do {
        this.catchAgain = false;
        const missed = await this.opts.client.messagesAfter(this.opts.conversationId, this.orderer.lastSeq);
        for (const m of missed) if (!this.closed) this.accept(m);
      } while (this.catchAgain && !this.closed);
    } catch (err) {
      if (!this.closed) this.emit("warning", `could not fetch missed messages: ${(err as Error).message}`);
    } finally {
      this.catching = false;
    }
  }
}
