import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { ConversationKind, type GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";

/** What the router needs to know about a conversation to route its messages. */
export interface ConversationRoute {
  kind: "direct" | "group";
  /** Direct conversations: both users (delivered per user). Groups: empty (delivered per topic). */
  memberIds: readonly string[];
}

/** The answer for some senders of one conversation. */
export interface Access {
  /** Undefined for an unknown (or deleted) conversation. */
  route: ConversationRoute | undefined;
  /** The asked users that may send: active members, not blocked. */
  allowed: ReadonlySet<string>;
}

interface Entry {
  route: ConversationRoute | undefined;
  /** user → may send. */
  users: Map<string, boolean>;
  /** Every user's answer is known (direct and unknown conversations): absent means no. */
  complete: boolean;
  expiresAtMs: number;
}

/** What one CheckMembers call learnt. */
interface Snapshot {
  route: ConversationRoute | undefined;
  users: Map<string, boolean>;
  complete: boolean;
}

/** Loads of one conversation in flight, by user; replaced on invalidation. */
type Loading = Map<string, Promise<Snapshot>>;

/** Most users in one CheckMembers call (the groups service's limit). */
const MAX_CHECK = 1000;

/**
 * Who may send in which conversation, cached so that a message costs no database read.
 *
 * Per conversation the cache keeps its route (kind; members of a 1:1) and a verdict per
 * sender, loaded with one CheckMembers call for all senders of a batch that are not
 * known yet (concurrent misses share a load). A group of 100,000 members costs one
 * entry per user that actually sends, never the member list. Direct conversations are
 * loaded whole. Entries live `directTtlMs` / `groupTtlMs` as a safety net (see
 * RouterConfig); unknown conversations are remembered briefly so a flood of sends to
 * a bogus id does not reach the database.
 *
 * Membership changes invalidate explicitly (RouterService.ApplyConversationChange
 * calls `invalidate` before answering): the entry goes, and so do loads in flight —
 * their answers may predate the change, so they are handed to the sends that asked
 * but never stored, and sends that arrive afterwards load afresh.
 */
export class MembershipCache {
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Loading>();

  constructor(
    private readonly groups: Client<typeof GroupsService>,
    private readonly opts: {
      maxEntries: number;
      groupTtlMs: number;
      directTtlMs: number;
      negativeTtlMs: number;
      clock: () => number;
    },
  ) {}

  /** Whether each of `userIds` may send in `conversationId`, and how to route it. */
  async access(conversationId: string, userIds: readonly string[]): Promise<Access> {
    const entry = this.fresh(conversationId);
    const allowed = new Set<string>();
    const missing: string[] = [];
    for (const u of userIds) {
      const v = entry?.users.get(u);
      if (v === undefined && !entry?.complete) missing.push(u);
      else if (v) allowed.add(u);
    }
    if (missing.length === 0) return { route: entry!.route, allowed };
    let route = entry?.route;
    for (const [users, snapshot] of await this.load(conversationId, missing)) {
      route ??= snapshot.route;
      for (const u of users) if (snapshot.users.get(u)) allowed.add(u);
    }
    return { route, allowed };
  }

  /** Drops what is known about a conversation, including loads in flight. */
  invalidate(conversationId: string): void {
    this.entries.delete(conversationId);
    this.loading.delete(conversationId);
  }

  private fresh(conversationId: string): Entry | undefined {
    const hit = this.entries.get(conversationId);
    if (!hit) return undefined;
    if (hit.expiresAtMs <= this.opts.clock()) {
      this.entries.delete(conversationId);
      return undefined;
    }
    // Map order is insertion order: re-inserting keeps the most recently used last.
    this.entries.delete(conversationId);
    this.entries.set(conversationId, hit);
    return hit;
  }

  /**
   * The verdicts of `userIds`: users with a load in flight join it, the others are
   * asked in one call (per 1,000). Results are stored unless invalidated meanwhile.
   */
  private async load(conversationId: string, userIds: readonly string[]): Promise<[string[], Snapshot][]> {
    let loading = this.loading.get(conversationId);
    if (!loading) this.loading.set(conversationId, (loading = new Map()));
    const joined = new Map<Promise<Snapshot>, string[]>();
    const ask: string[] = [];
    for (const u of userIds) {
      const p = loading.get(u);
      if (!p) ask.push(u);
      else if (joined.has(p)) joined.get(p)!.push(u);
      else joined.set(p, [u]);
    }
    for (let i = 0; i < ask.length; i += MAX_CHECK) {
      const chunk = ask.slice(i, i + MAX_CHECK);
      const p = this.fetch(conversationId, chunk, loading);
      joined.set(p, chunk);
      for (const u of chunk) loading.set(u, p);
      const forget = () => {
        for (const u of chunk) if (loading.get(u) === p) loading.delete(u);
        if (loading.size === 0 && this.loading.get(conversationId) === loading) this.loading.delete(conversationId);
      };
      p.then(forget, forget);
    }
    return Promise.all([...joined].map(async ([p, users]) => [users, await p] as [string[], Snapshot]));
  }

  private async fetch(conversationId: string, userIds: string[], loading: Loading): Promise<Snapshot> {
    const snapshot: Snapshot = { route: undefined, users: new Map(), complete: true };
    let ttl = this.opts.negativeTtlMs;
    try {
      const res = await this.groups.checkMembers({ conversationId, userIds });
      const c = res.conversation;
      if (c) {
        const direct = c.kind === ConversationKind.DIRECT;
        snapshot.route = { kind: direct ? "direct" : "group", memberIds: direct ? c.memberIds : [] };
        snapshot.complete = direct;
        ttl = direct ? this.opts.directTtlMs : this.opts.groupTtlMs;
        for (const u of userIds) snapshot.users.set(u, false);
        // A 1:1's two members are known whoever asked: both verdicts are filled.
        const blocked = new Set(c.blockedUserIds);
        const allowed = direct ? c.memberIds.filter((u) => !blocked.has(u)) : res.allowedUserIds;
        for (const u of allowed) snapshot.users.set(u, true);
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code !== Code.NotFound) throw ce;
    }
    // Invalidated while loading: the answer may predate the change; hand it to the
    // sends that asked, but do not keep it.
    if (this.loading.get(conversationId) !== loading) return snapshot;
    let entry = this.entries.get(conversationId);
    if (!entry || entry.route?.kind !== snapshot.route?.kind) {
      entry = { route: snapshot.route, users: new Map(), complete: snapshot.complete, expiresAtMs: this.opts.clock() + ttl };
      this.entries.set(conversationId, entry);
      if (this.entries.size > this.opts.maxEntries) {
        const oldest = this.entries.keys().next().value;
        if (oldest !== undefined) this.entries.delete(oldest);
      }
    }
    for (const [u, v] of snapshot.users) entry.users.set(u, v);
    return snapshot;
  }
}
