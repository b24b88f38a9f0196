import type { ConversationKind, Platform } from "../src/model.js";
import type { DeviceTarget, Push, PushSender, SendOutcome } from "../src/providers/push-sender.js";
import type { CandidatePage, CandidateQuery, PushCandidates } from "../src/push-candidates.js";
import type { UserDirectory } from "../src/user-directory.js";

/** A clock tests move by hand. */
export class FakeClock {
  constructor(public nowMs: number) {}
  readonly now = (): number => this.nowMs;
  advance(ms: number): number {
    this.nowMs += ms;
    return this.nowMs;
  }
}

interface Member {
  deliveredSeq: number;
  readSeq: number;
  muted: boolean;
}

interface Conversation {
  kind: ConversationKind;
  name: string;
  members: Map<string, Member>;
}

/**
 * The groups service as ListPushCandidates shows it: members with cursors and mutes,
 * filtered and paged exactly as the real query does (user id order, `after`, limit).
 */
export class FakeGroups implements PushCandidates {
  readonly conversations = new Map<string, Conversation>();
  readonly calls: CandidateQuery[] = [];
  /** Runs before each answer (tests change state mid-flight here). */
  onCall: ((q: CandidateQuery) => void | Promise<void>) | undefined;
  /** Throws instead of answering while set. */
  failWith: Error | undefined;
  /** Never answers while set (a hung peer). */
  hang = false;

  add(conversationId: string, kind: ConversationKind, memberIds: readonly string[], name = ""): void {
    this.conversations.set(conversationId, {
      kind,
      name,
      members: new Map(memberIds.map((u) => [u, { deliveredSeq: 0, readSeq: 0, muted: false }])),
    });
  }

  member(conversationId: string, userId: string): Member {
    const m = this.conversations.get(conversationId)?.members.get(userId);
    if (!m) throw new Error(`no member ${userId} in ${conversationId}`);
    return m;
  }

  /** The user received (delivered cursor) up to `seq`. */
  deliver(conversationId: string, userId: string, seq: number): void {
    this.member(conversationId, userId).deliveredSeq = seq;
  }

  /** The user read up to `seq` (reading implies receiving). */
  read(conversationId: string, userId: string, seq: number): void {
    const m = this.member(conversationId, userId);
    m.readSeq = seq;
    m.deliveredSeq = Math.max(m.deliveredSeq, seq);
  }

  callsFor(conversationId: string): CandidateQuery[] {
    return this.calls.filter((c) => c.conversationId === conversationId);
  }

  async candidates(q: CandidateQuery): Promise<CandidatePage> {
    this.calls.push(q);
    await this.onCall?.(q);
    if (this.hang) await new Promise<never>(() => {});
    if (this.failWith) throw this.failWith;
    const c = this.conversations.get(q.conversationId);
    if (!c) return { kind: undefined, name: "", candidates: [], nextAfterUserId: "" };
    const only = q.userIds ? new Set(q.userIds) : undefined;
    const all = [...c.members]
      .filter(([u, m]) => !m.muted && m.deliveredSeq < q.seq && m.readSeq < q.seq)
      .filter(([u]) => (!only || only.has(u)) && !q.excludeUserIds.includes(u) && (q.afterUserId === "" || u > q.afterUserId))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const page = all.slice(0, q.limit);
    return {
      kind: c.kind,
      name: c.name,
      candidates: page.map(([userId, m]) => ({ userId, deliveredSeq: m.deliveredSeq, readSeq: m.readSeq })),
      nextAfterUserId: all.length > q.limit ? page[page.length - 1]![0] : "",
    };
  }
}

/** Display names from a map; counts calls; can fail or hang. */
export class FakeDirectory implements UserDirectory {
  readonly names = new Map<string, string>();
  calls = 0;
  failWith: Error | undefined;
  hang = false;
  /** Resolves when a call came in while `hang` is set. */
  private hungCallbacks: (() => void)[] = [];

  async displayNames(userIds: readonly string[]): Promise<Map<string, string>> {
    this.calls++;
    if (this.hang) {
      for (const cb of this.hungCallbacks.splice(0)) cb();
      await new Promise<never>(() => {});
    }
    if (this.failWith) throw this.failWith;
    return new Map(userIds.filter((u) => this.names.has(u)).map((u) => [u, this.names.get(u)!]));
  }

  /** Resolves at the next call that hangs. */
  nextHungCall(): Promise<void> {
    return new Promise((resolve) => this.hungCallbacks.push(resolve));
  }
}

export interface SentPush {
  target: DeviceTarget;
  push: Push;
}

type Script = SendOutcome | "hang" | ((target: DeviceTarget, push: Push) => SendOutcome | "hang");

/**
 * A PushSender that records every push and answers from a script: per device token a
 * queue of outcomes (then "sent"), or a default. "hang" never answers (a process that
 * dies mid-send).
 */
export class ScriptedSender implements PushSender {
  readonly sent: SentPush[] = [];
  private readonly scripts = new Map<string, Script[]>();
  fallback: Script = { status: "sent" };
  closed = false;

  constructor(readonly platform: Platform) {}

  /** The next answers for the device with this token (or Web Push endpoint). */
  script(token: string, ...outcomes: Script[]): this {
    this.scripts.set(token, [...(this.scripts.get(token) ?? []), ...outcomes]);
    return this;
  }

  sentTo(token: string): SentPush[] {
    return this.sent.filter((s) => (s.target.subscription?.endpoint ?? s.target.token) === token);
  }

  async send(target: DeviceTarget, push: Push): Promise<SendOutcome> {
    this.sent.push({ target, push });
    const key = target.subscription?.endpoint ?? target.token;
    const step = this.scripts.get(key)?.shift() ?? this.fallback;
    const outcome = typeof step === "function" ? step(target, push) : step;
    if (outcome === "hang") return new Promise<never>(() => {});
    return outcome;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

export function scriptedSenders(): Record<Platform, ScriptedSender> {
  return {
    fcm: new ScriptedSender("fcm"),
    apns: new ScriptedSender("apns"),
    webpush: new ScriptedSender("webpush"),
    webhook: new ScriptedSender("webhook"),
  };
}
