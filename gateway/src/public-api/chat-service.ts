import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ChatService } from "../../../gen/parley/client/v1/chat_service_pb.js";
import { ConversationKind } from "../../../gen/parley/client/v1/types_pb.js";
import { ConversationKind as InternalKind, type Conversation } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Head } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { invalid, pageLimit, requireUuid } from "../../../lib/validate.js";
import { clientMessage } from "../../../lib/client-message.js";
import { publicUser } from "./convert.js";
import { caller, type PublicApiDeps } from "./deps.js";

const MAX_USERS_PER_CALL = 200;

function publicConversation(c: Conversation, head: Head | undefined) {
  return {
    conversationId: c.conversationId,
    kind: c.kind === InternalKind.DIRECT ? ConversationKind.DIRECT : ConversationKind.GROUP,
    memberIds: c.memberIds,
    lastSeq: head?.lastSeq ?? 0n,
    createdAt: c.createdAt,
    lastActivityAt: head?.lastSentAt ?? c.createdAt,
  };
}

/** The public conversation API. Every call acts as the caller and checks membership server-side. */
export function chatService(deps: PublicApiDeps): ServiceImpl<typeof ChatService> {
  async function heads(ids: string[]): Promise<Map<string, Head>> {
    if (ids.length === 0) return new Map();
    const res = await deps.messagestore.getHeads({ conversationIds: ids });
    return new Map(res.heads.map((h) => [h.conversationId, h]));
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
      const { conversation } = await deps.groups.getOrCreateDirectConversation({ userId: me.userId, peerUserId: peerId });
      if (!conversation) throw new ConnectError("groups answered without a conversation", Code.Internal);
      const h = await heads([conversation.conversationId]);
      return { conversation: publicConversation(conversation, h.get(conversation.conversationId)) };
    },

    async listConversations(req, ctx) {
      const limit = pageLimit("limit", req.limit, 50, 200);
      const me = await caller(deps, ctx);
      const { conversations } = await deps.groups.listUserConversations({ userId: me.userId });
      const h = await heads(conversations.map((c) => c.conversationId));
      const list = conversations.map((c) => publicConversation(c, h.get(c.conversationId)));
      list.sort((a, b) => activity(b) - activity(a));
      return { conversations: list.slice(0, limit) };
    },

    async getHistory(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const limit = pageLimit("limit", req.limit, 50, 200);
      const me = await caller(deps, ctx);
      await requireMember(deps, conversationId, me.userId);
      const { messages } = await deps.messagestore.getHistory({ conversationId, beforeSeq: req.beforeSeq, limit });
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
  };
}

function activity(c: { lastActivityAt?: { seconds: bigint; nanos: number } }): number {
  return c.lastActivityAt ? timestampMs(c.lastActivityAt as Parameters<typeof timestampMs>[0]) : 0;
}

async function requireMember(deps: PublicApiDeps, conversationId: string, userId: string): Promise<void> {
  let members: string[] = [];
  try {
    const { conversation } = await deps.groups.getConversation({ conversationId });
    members = conversation?.memberIds ?? [];
  } catch (err) {
    if (ConnectError.from(err).code !== Code.NotFound) throw err;
  }
  // Same answer for unknown and foreign conversations: ids are no oracle.
  if (!members.includes(userId)) throw new ConnectError("not a member of this conversation", Code.PermissionDenied);
}
