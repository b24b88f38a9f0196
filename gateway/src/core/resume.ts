/**
 * Resume: a device that reconnects (to any gateway) asks for what it missed. The gateway
 * lists the user's conversations (groups), reads their heads (message store), and sends
 * every message after the device's cursor as ordinary `message` frames, oldest first per
 * conversation, most recently active conversation first, read with GetRange in pages
 * (several in flight), then `resume_done`.
 *
 * This file holds the per-connection state and the sending loop; gateway-core.ts holds
 * live frames back while a connection resumes (`ResumeState.held`), and on finish writes
 * `resume_done`, the held frames (minus those the resume already sent) and subscribes
 * the connection's topics at the socket, in one synchronous step.
 *
 * Flow control: the loop writes while the socket's send buffer is below `bufferBytes`
 * and otherwise waits for the transport's drain notification (no timer, no polling), so
 * a resume never pushes a socket towards the slow-consumer limit.
 */
import type { Client } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Resume } from "../../../gen/parley/client/v1/frames_pb.js";
import type { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { MemberState } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Message, MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { clientMessage } from "../../../lib/client-message.js";
import type { Logger } from "../../../lib/logger.js";
import { invalid, requireUuid } from "../../../lib/validate.js";
import type { Connection } from "./connection.js";
import { encodeServerFrame, serverFrame } from "./frames.js";

/** Resume.max_messages: the default and the cap. */
export const MAX_RESUME_MESSAGES = 10_000;
/** GetHeads takes at most this many conversations per call. */
const HEADS_PER_CALL = 500;

export interface ResumeDeps {
  groups: Pick<Client<typeof GroupsService>, "listUserConversations">;
  messagestore: Pick<Client<typeof MessageStoreService>, "getHeads" | "getRange">;
  logger: Logger;
}

export interface ResumeLimits {
  /** Messages per GetRange call (1..1,000). */
  pageSize: number;
  /** GetRange calls in flight per resuming connection. */
  fetchAhead: number;
  /** The resume writes while the socket buffers less than this (bytes). */
  bufferBytes: number;
}

/** A live frame held back while its connection resumes. */
export interface HeldFrame {
  data: Uint8Array | string;
  /** The stored message it carries ("" and 0 for other frames). */
  conversationId: string;
  seq: number;
}

/** What a connection carries while it resumes (Connection.resume). */
export class ResumeState {
  readonly held: HeldFrame[] = [];
  heldBytes = 0;
  /** conversation → the highest seq this resume wrote (the lowest is the cursor + 1). */
  readonly sent = new Map<string, number>();
  messages = 0;
  /** Set once resume_done is written (or the connection closed): the loop stops. */
  done = false;

  constructor(readonly ref: number) {}

  /** A held frame the resume already delivered (same conversation, seq at or below what it sent). */
  alreadySent(f: HeldFrame): boolean {
    if (f.seq <= 0) return false;
    const top = this.sent.get(f.conversationId);
    return top !== undefined && f.seq <= top;
  }
}

/** A checked Resume frame. */
export interface ResumeRequest {
  /** conversation → the highest seq the device holds without a gap. */
  cursors: Map<string, number>;
  maxMessages: number;
}

/**
 * Checks a Resume frame (throws an InvalidArgument ConnectError). A conversation named
 * twice keeps its highest cursor; max_messages 0 means the default, above the cap means the cap.
 */
export function parseResume(r: Resume): ResumeRequest {
  const cursors = new Map<string, number>();
  for (const [i, c] of r.cursors.entries()) {
    const id = requireUuid(`cursors[${i}].conversation_id`, c.conversationId);
    if (c.seq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`cursors[${i}].seq`, "out of range");
    cursors.set(id, Math.max(cursors.get(id) ?? 0, Number(c.seq)));
  }
  const maxMessages = r.maxMessages === 0 ? MAX_RESUME_MESSAGES : Math.min(r.maxMessages, MAX_RESUME_MESSAGES);
  return { cursors, maxMessages };
}

/** One conversation to resume: seqs afterSeq+1 .. lastSeq. */
export interface ResumeItem {
  conversationId: string;
  afterSeq: number;
  lastSeq: number;
  lastSentAtMs: number;
}

/** One GetRange call of a resume. */
export interface ResumeChunk {
  conversationId: string;
  afterSeq: number;
  limit: number;
}

/**
 * The user's conversations with messages after the device's cursor, most recently
 * active first. Active members get everything; past members up to their `left_seq`
 * (nothing while that is 0). Cursors of conversations the user is not in are ignored.
 */
export async function planResume(deps: ResumeDeps, userId: string, cursors: ReadonlyMap<string, number>): Promise<ResumeItem[]> {
  const { conversations } = await deps.groups.listUserConversations({ userId });
  const bound = new Map<string, number>();
  for (const uc of conversations) {
    const id = uc.conversation?.conversationId;
    const m = uc.member;
    if (!id || !m) continue;
    if (m.state === MemberState.ACTIVE) bound.set(id, Number.MAX_SAFE_INTEGER);
    else if (m.leftSeq > 0n) bound.set(id, Number(m.leftSeq));
  }
  const ids = [...bound.keys()];
  const pages: string[][] = [];
  for (let i = 0; i < ids.length; i += HEADS_PER_CALL) pages.push(ids.slice(i, i + HEADS_PER_CALL));
  const answers = await Promise.all(pages.map((conversationIds) => deps.messagestore.getHeads({ conversationIds })));
  const items: ResumeItem[] = [];
  for (const { heads } of answers) {
    for (const h of heads) {
      const lastSeq = Math.min(Number(h.lastSeq), bound.get(h.conversationId) ?? 0);
      const afterSeq = cursors.get(h.conversationId) ?? 0;
      if (lastSeq <= afterSeq) continue;
      items.push({ conversationId: h.conversationId, afterSeq, lastSeq, lastSentAtMs: h.lastSentAt ? timestampMs(h.lastSentAt) : 0 });
    }
  }
  items.sort((a, b) => b.lastSentAtMs - a.lastSentAtMs || (a.conversationId < b.conversationId ? -1 : 1));
  return items;
}

/** The GetRange calls of a plan, at most `maxMessages` in all; `truncated` when more were missed. */
export function chunkPlan(items: readonly ResumeItem[], pageSize: number, maxMessages: number): { chunks: ResumeChunk[]; truncated: boolean } {
  const chunks: ResumeChunk[] = [];
  let budget = maxMessages;
  for (const it of items) {
    for (let after = it.afterSeq; after < it.lastSeq; ) {
      if (budget === 0) return { chunks, truncated: true };
      const limit = Math.min(pageSize, it.lastSeq - after, budget);
      chunks.push({ conversationId: it.conversationId, afterSeq: after, limit });
      budget -= limit;
      after += limit;
    }
  }
  return { chunks, truncated: false };
}

/** The size a frame takes in a send buffer (strings: UTF-16 length, close enough). */
export function frameBytes(data: Uint8Array | string): number {
  return typeof data === "string" ? data.length : data.byteLength;
}

/**
 * Runs resumes. `write` writes one resumed frame (false: the socket is over its limit,
 * the caller closes it).
 */
export class Resumer {
  constructor(
    private readonly deps: ResumeDeps,
    private readonly limits: ResumeLimits,
  ) {}

  /**
   * Sends the missed messages of `req` to `conn`; resolves to whether every one was sent
   * (false: max_messages reached, a backend failed, or the connection went away). Never
   * rejects. The caller finishes the resume (resume_done, held frames).
   */
  async run(conn: Connection, state: ResumeState, req: ResumeRequest, slow: (conn: Connection) => void): Promise<boolean> {
    const gone = () => conn.closed || state.done;
    const inflight: Promise<Message[]>[] = [];
    try {
      const items = await planResume(this.deps, conn.principal.userId, req.cursors);
      if (gone()) return false;
      const { chunks, truncated } = chunkPlan(items, this.limits.pageSize, req.maxMessages);
      let next = 0;
      const fill = () => {
        while (inflight.length < this.limits.fetchAhead && next < chunks.length) {
          const c = chunks[next++]!;
          const p = this.deps.messagestore
            .getRange({ conversationId: c.conversationId, afterSeq: BigInt(c.afterSeq), limit: c.limit })
            .then((r) => r.messages);
          p.catch(() => {}); // awaited in order below; this only keeps an early failure from being "unhandled"
          inflight.push(p);
        }
      };
      fill();
      for (let i = 0; i < chunks.length; i++) {
        const page = await inflight.shift()!;
        fill();
        if (gone()) return false;
        const c = chunks[i]!;
        const top = c.afterSeq + c.limit;
        const frames: { data: Uint8Array | string; seq: number }[] = [];
        for (const m of page) {
          const seq = Number(m.seq);
          if (seq <= c.afterSeq || seq > top) continue;
          frames.push({ data: encodeServerFrame(serverFrame({ kind: { case: "message", value: clientMessage(m) } }), conn.encoding), seq });
        }
        if (!(await this.write(conn, state, c.conversationId, frames, slow))) return false;
      }
      await this.room(conn, state);
      return !truncated && !gone();
    } catch (err) {
      this.deps.logger.warn({ err, userId: conn.principal.userId }, "resume failed");
      return false;
    }
  }

  /** Writes the frames of one page, corked, never letting the send buffer pass `bufferBytes` by more than one batch. */
  private async write(
    conn: Connection,
    state: ResumeState,
    conversationId: string,
    frames: readonly { data: Uint8Array | string; seq: number }[],
    slow: (conn: Connection) => void,
  ): Promise<boolean> {
    const bound = this.limits.bufferBytes;
    let i = 0;
    while (i < frames.length) {
      await this.room(conn, state);
      if (conn.closed || state.done) return false;
      const socket = conn.socket!;
      let ok = true;
      let bytes = 0;
      const first = i;
      socket.cork(() => {
        while (i < frames.length && bytes < bound && buffered(conn) < bound) {
          const f = frames[i++]!;
          bytes += frameBytes(f.data);
          ok = conn.writeEncoded(f.data) && ok;
        }
      });
      const written = i - first;
      if (written > 0) {
        state.sent.set(conversationId, frames[i - 1]!.seq);
        state.messages += written;
      }
      if (!ok) {
        slow(conn);
        return false;
      }
    }
    return true;
  }

  /** Waits until the socket buffers less than `bufferBytes` (drain notifications; a close ends the wait). */
  private async room(conn: Connection, state: ResumeState): Promise<void> {
    while (!conn.closed && !state.done && buffered(conn) >= this.limits.bufferBytes) {
      await new Promise<void>((resolve) => (conn.drainWaiter = resolve));
    }
  }
}

function buffered(conn: Connection): number {
  return conn.socket?.bufferedAmount?.() ?? 0;
}
