import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { ConversationKind, type GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";

export interface Membership {
  memberIds: readonly string[];
  has(userId: string): boolean;
}

interface Entry {
  membership: Membership | undefined;
  expiresAtMs: number;
}

/**
 * Conversation members, cached so that sending a message costs no database read.
 * Direct conversations never change members and stay until evicted; group entries
 * live `groupTtlMs` (membership changes will invalidate them explicitly in the groups
 * issue); unknown conversations are remembered briefly so a flood of sends to a bogus
 * id does not reach the database. Concurrent misses of one conversation share a load.
 */
export class MembershipCache {
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<Membership | undefined>>();

  constructor(
    private readonly groups: Client<typeof GroupsService>,
    private readonly opts: { maxEntries: number; groupTtlMs: number; negativeTtlMs: number; clock: () => number },
  ) {}

  async get(conversationId: string): Promise<Membership | undefined> {
    const hit = this.entries.get(conversationId);
    if (hit && hit.expiresAtMs > this.opts.clock()) {
      // Map order is insertion order: re-inserting keeps the most recently used last.
      this.entries.delete(conversationId);
      this.entries.set(conversationId, hit);
      return hit.membership;
    }
    let pending = this.loading.get(conversationId);
    if (!pending) {
      pending = this.load(conversationId).finally(() => this.loading.delete(conversationId));
      this.loading.set(conversationId, pending);
    }
    return pending;
  }

  invalidate(conversationId: string): void {
    this.entries.delete(conversationId);
  }

  private async load(conversationId: string): Promise<Membership | undefined> {
    let membership: Membership | undefined;
    let ttl = this.opts.negativeTtlMs;
    try {
      const { conversation } = await this.groups.getConversation({ conversationId });
      if (conversation) {
        const set = new Set(conversation.memberIds);
        membership = { memberIds: conversation.memberIds, has: (u) => set.has(u) };
        ttl = conversation.kind === ConversationKind.DIRECT ? Number.POSITIVE_INFINITY : this.opts.groupTtlMs;
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code !== Code.NotFound) throw ce;
    }
    this.entries.set(conversationId, { membership, expiresAtMs: this.opts.clock() + ttl });
    if (this.entries.size > this.opts.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    return membership;
  }
}
