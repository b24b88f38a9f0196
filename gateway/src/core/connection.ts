import type { ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { encodeServerFrame } from "./frames.js";
import type { Encoding } from "./protocol.js";
import type { ResumeRequest, ResumeState } from "./resume.js";

/** What the core needs of a socket. Only gateway/src/uws/ implements it. */
export interface SocketPort {
  /** Writes one frame; false when the socket's send buffer is over the limit. */
  send(data: Uint8Array | string, binary: boolean): boolean;
  /** Runs `fn` with the socket corked: its writes leave in one syscall. */
  cork(fn: () => void): void;
  close(code: number, reason: string): void;
  /** Receives what is published to `topic` from now on (a closed socket leaves its topics by itself). */
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /**
   * Publishes to every subscriber of `topic` on this gateway except this socket (how a
   * group message skips the sender's device). A subscriber whose send buffer is over the
   * limit is closed by the transport, not by the core (there is no per-socket answer).
   */
  publish(topic: string, data: Uint8Array | string, binary: boolean): void;
  /**
   * Bytes waiting in the socket's send buffer. Transports that buffer implement it and
   * call GatewayCore.drained(conn) when the buffer shrinks (uWS: `drain`): a resume
   * writes only while this is below its bound. Absent: treated as 0.
   */
  bufferedAmount?(): number;
}

/** Gateway-wide topics (uWS: `app.publish`, `app.numSubscribers`). */
export interface TopicBus {
  /** Writes to every subscriber of `topic` on this gateway (slow ones are closed, as for SocketPort.publish). */
  publish(topic: string, data: Uint8Array | string, binary: boolean): void;
  subscribers(topic: string): number;
}

/**
 * The topic of a group conversation for connections of one encoding: binary and JSON
 * connections get differently encoded frames, so each conversation has two topics.
 */
export function topicOf(encoding: Encoding, conversationId: string): string {
  return `${encoding === "binary" ? "b" : "j"}/${conversationId}`;
}

export interface Principal {
  userId: string;
  deviceId: string;
  sessionId: string;
}

/**
 * One authenticated WebSocket. Kept small: it is the per-connection memory of the
 * gateway (no timers, no per-connection maps).
 */
export class Connection {
  socket: SocketPort | undefined;
  /** Hello sent: frames may flow. Before that they wait in `early`. */
  ready = false;
  closed = false;
  early: (Uint8Array | string)[] | undefined;
  /** Token bucket of the frame rate limit. */
  tokens: number;
  refilledAtMs: number;
  inFlightSends = 0;
  /**
   * Set when a drain closes this connection (core/drain.ts): sends arriving from now on
   * are refused (UNAVAILABLE), and it is called once no send is in flight any more.
   */
  closing: (() => void) | undefined;
  /**
   * The group conversations this connection is subscribed to; undefined until its user's
   * group list arrived (`groupsKnown`) and while it has none. Socket-level subscriptions
   * exist only once `ready` (after Hello).
   */
  topics: Set<string> | undefined;
  /**
   * While a Resume runs: its state, holding live frames back (core/resume.ts). The
   * connection's topics are then not subscribed at the socket (their frames are held).
   */
  resume: ResumeState | undefined;
  /** A Resume received before Hello: it starts with Hello. */
  queuedResume: { ref: number; req: ResumeRequest } | undefined;
  /** A resume waiting for the send buffer to drain; called by GatewayCore.drained and on close. */
  drainWaiter: (() => void) | undefined;
  /** The user's group list arrived: `topics` holds its groups (undefined while there are none). */
  groupsKnown = false;
  // Presence (core/presence.ts), kept here rather than in a per-connection object.
  /** The client set AWAY (SetPresence); ONLINE on connect. */
  presenceAway = false;
  /** No activity for PARLEY_PRESENCE_AWAY_AFTER_MS: counts as AWAY until the next. */
  idle = false;
  /** When the user last sent a frame on it (pings do not count). */
  activeAtMs = 0;
  /** The users it follows (SubscribePresence); made on the first subscription. */
  follows: Set<string> | undefined;

  constructor(
    readonly principal: Principal,
    readonly encoding: Encoding,
    burst: number,
    nowMs: number,
  ) {
    this.tokens = burst;
    this.refilledAtMs = nowMs;
  }

  /** The core settled the last send in flight (acked or refused): a drain waiting for it closes now. */
  sendsSettled(): void {
    this.closing?.();
  }

  /** Writes a frame; returns false when the client is too slow and must be closed. */
  write(frame: ServerFrame): boolean {
    return this.writeEncoded(encodeServerFrame(frame, this.encoding));
  }

  writeEncoded(data: Uint8Array | string): boolean {
    if (this.closed) return true;
    if (!this.ready) {
      (this.early ??= []).push(data);
      return true;
    }
    return this.socket!.send(data, typeof data !== "string");
  }

  /** Takes one token; false when the rate limit is exceeded. */
  takeToken(nowMs: number, perSecond: number, burst: number): boolean {
    const elapsed = nowMs - this.refilledAtMs;
    if (elapsed > 0) {
      this.tokens = Math.min(burst, this.tokens + (elapsed * perSecond) / 1000);
      this.refilledAtMs = nowMs;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
