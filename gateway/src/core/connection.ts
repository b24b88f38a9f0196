import type { ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { encodeServerFrame } from "./frames.js";
import type { Encoding } from "./protocol.js";

/** What the core needs of a socket. Only gateway/src/uws/ implements it. */
export interface SocketPort {
  /** Writes one frame; false when the socket's send buffer is over the limit. */
  send(data: Uint8Array | string, binary: boolean): boolean;
  /** Runs `fn` with the socket corked: its writes leave in one syscall. */
  cork(fn: () => void): void;
  close(code: number, reason: string): void;
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

  constructor(
    readonly principal: Principal,
    readonly encoding: Encoding,
    burst: number,
    nowMs: number,
  ) {
    this.tokens = burst;
    this.refilledAtMs = nowMs;
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
