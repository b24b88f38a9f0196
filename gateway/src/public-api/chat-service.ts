import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ChatService } from "../../../gen/parley/client/v1/chat_service_pb.js";
import type { Head } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { clientMessage } from "../../../lib/client-message.js";
import { invalid, pageLimit, requireUuid } from "../../../lib/validate.js";
import { isActive, ms, publicConversation, publicUser, readableLastSeq } from "./convert.js";
import { caller, type PublicApiDeps } from "./deps.js";
import { requireMembership, requireSelf } from "./membership.js";

const MAX_USERS_PER_CALL = 200;

/** What a conversation list shows of one conversation's newest message. */
type VisibleHead = Pick<Head, "lastSeq" | "lastSentAt" | "lastMessage">;

/** The public conversation API. Every call acts as the caller and checks membership server-side. */
export function chatService(deps: PublicApiDeps): ServiceImpl<typeof ChatService> {
  async function heads(ids: string[], includeLastMessage = false): Promise<Map<string, Head>> {
    if (ids.length === 0) return new Map();
    const res = await deps.messagestore.getHeads({ conversationIds: ids, includeLastMessage });
    return new Map(res.heads.map((h) => [h.conversationId, h]));
  }

  /**
   * The head a member who left may see: the newest message up to their `left_seq` (one
   * history read when the conversation went on after they left).
   */
  async function capHead(conversationId: string, leftSeq: bigint, head: Head | undefined): Promise<VisibleHead | undefined> {
    if (!head || head.lastSeq <= leftSeq) return head;
    if (leftSeq === 0n) return undefined;
    const { messages } = await deps.messagestore.getHistory({ conversationId, beforeSeq: leftSeq + 1n, limit: 1 });
    const m = messages[0];
    return m && { lastSeq: m.seq, lastSentAt: m.sentAt, lastMessage: m };
  }

  return {
    async openDirectConversation(req, ctx) {
      const me = await caller(deps, ctx);
      let peerId: string;
      switch (req.peer.case) {
        case "peerUserId": {
          peerId = requireUuid("peer_user_id", req.peer.value);
          const { users } = await deps.session.getUsers({ userIds: [peerId] });
          if (users.length === 0) throw new ConnectError("no such user", Code.NotFound);
          break;
        }
        case "peerUsername": {
          const { users } = await deps.session.getUsers({ usernames: [req.peer.value] });
          if (users.length === 0) throw new ConnectError("no such user", Code.NotFound);
          peerId = users[0]!.userId;
          break;
        }
        default:
          throw invalid("peer", "give peer_user_id or peer_username");
      }
      if (peerId === me.userId) throw invalid("peer", "a direct conversation needs another user");
      // A block in either direction is PERMISSION_DENIED from the groups service.
      const { conversation } = await deps.groups.getOrCreateDirectConversation({ userId: me.userId, peerUserId: peerId });
      if (!conversation) throw new ConnectError("groups answered without a conversation", Code.Internal);
      const id = conversation.conversationId;
      const [{ member }, h] = await Promise.all([deps.groups.getMembership({ conversationId: id, userId: me.userId }), heads([id])]);
      return { conversation: publicConversation(conversation, member, h.get(id)) };
    },

    async listConversations(req, ctx) {
      const limit = pageLimit("limit", req.limit, 50, 200);
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const { conversations } = await deps.groups.listUserConversations({ userId });
      const all = conversations.flatMap((uc) => (uc.conversation && uc.member ? [{ c: uc.conversation, m: uc.member }] : []));
      // Order all of them by last activity, then read previews for one page only. A
      // past member sees a conversation as it was at their leave event: it is ordered
      // by that, so the list does not tell them the group is still active.
      const first = await heads(all.map((x) => x.c.conversationId));
      const pastViews = new Map<string, VisibleHead | undefined>();
      await Promise.all(
        all
          .filter((x) => !isActive(x.m))
          .map(async (x) => pastViews.set(x.c.conversationId, await capHead(x.c.conversationId, x.m.leftSeq, first.get(x.c.conversationId)))),
      );
      const seen = (x: (typeof all)[number]) => (isActive(x.m) ? first.get(x.c.conversationId) : pastViews.get(x.c.conversationId));
      const page = all
        .map((x) => ({ ...x, at: ms(seen(x)?.lastSentAt) || ms(x.c.createdAt) }))
        .sort((a, b) => b.at - a.at)
        .slice(0, limit);
      const latest = await heads(
        page.map((x) => x.c.conversationId),
        true,
      );
      const out = await Promise.all(
        page.map(async ({ c, m }) => {
          const head = latest.get(c.conversationId);
          const visible = isActive(m) ? head : await capHead(c.conversationId, m.leftSeq, head);
          return publicConversation(c, m, visible);
        }),
      );
      return { conversations: out };
    },

    async getHistory(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const limit = pageLimit("limit", req.limit, 50, 200);
      const me = await caller(deps, ctx);
      const { member } = await requireMembership(deps, conversationId, me.userId, { active: false });
      let beforeSeq = req.beforeSeq;
      if (!isActive(member)) {
        // A past member reads only up to their leave event.
        if (member.leftSeq === 0n) return { messages: [], nextBeforeSeq: 0n };
        const bound = member.leftSeq + 1n;
        if (beforeSeq === 0n || beforeSeq > bound) beforeSeq = bound;
      }
      const { messages } = await deps.messagestore.getHistory({ conversationId, beforeSeq, limit });
      const last = messages[messages.length - 1];
      return {
        messages: messages.map(clientMessage),
        nextBeforeSeq: messages.length === limit && last && last.seq > 1n ? last.seq : 0n,
      };
    },

    async getUsers(req, ctx) {
      await caller(deps, ctx);
      if (req.userIds.length + req.usernames.length > MAX_USERS_PER_CALL) {
        throw invalid("user_ids", `at most ${MAX_USERS_PER_CALL} users per call`);
      }
      const { users } = await deps.session.getUsers({ userIds: req.userIds, usernames: req.usernames });
      return { users: users.map(publicUser).filter((u) => u !== undefined) };
    },

    async markRead(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      const { member } = await requireMembership(deps, conversationId, me.userId, { active: false });
      const h = await heads([conversationId]);
      const cap = readableLastSeq(member, h.get(conversationId)?.lastSeq ?? 0n);
      const seq = req.seq < cap ? req.seq : cap;
      if (seq > member.readSeq) {
        await deps.groups.advanceReadCursors({ cursors: [{ userId: me.userId, conversationId, seq }] });
        return { readSeq: seq };
      }
      return { readSeq: member.readSeq };
    },

    async setMuted(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      await requireMembership(deps, conversationId, me.userId, { active: false });
      await deps.groups.setMuted({ userId: me.userId, conversationId, muted: req.muted });
      return {};
    },

    async getReceipts(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      if (req.seq === 0n) throw invalid("seq", "must be a message's sequence number (1 or more)");
      const limit = pageLimit("limit", req.limit, 100, 1000);
      if (req.afterUserId !== "") requireUuid("after_user_id", req.afterUserId);
      const me = await caller(deps, ctx);
      await requireMembership(deps, conversationId, me.userId, { active: true });
      const r = await deps.groups.getReceipts({
        conversationId,
        seq: req.seq,
        includeReaders: req.includeReaders,
        afterUserId: req.afterUserId,
        limit,
      });
      return {
        memberCount: r.memberCount,
        deliveredCount: r.deliveredCount,
        readCount: r.readCount,
        readerIds: r.readerIds,
        nextAfterUserId: r.nextAfterUserId,
      };
    },
  };
}
