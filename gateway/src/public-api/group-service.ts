import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { GroupService } from "../../../gen/parley/client/v1/group_service_pb.js";
import { ConversationKind as InternalKind } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, pageLimit, requireText, requireUuid } from "../../../lib/validate.js";
import { internalRole, isActive, publicConversation, publicMember } from "./convert.js";
import { caller, type PublicApiDeps } from "./deps.js";
import { requireMembership, requireSelf, type Membership } from "./membership.js";
import { existingUsers } from "./users.js";

export const GROUP_NAME_MAX = 100;
export const GROUP_TOPIC_MAX = 500;
/** Most users one CreateGroup or AddMembers call may name. */
export const USERS_PER_CALL_MAX = 1_000;

/**
 * The public group API: validates, checks that the caller is an active member (the same
 * PERMISSION_DENIED for unknown and foreign groups), then calls the groups service as
 * the caller (`actor_id`), which enforces roles, caps and the rest.
 */
export function groupService(deps: PublicApiDeps): ServiceImpl<typeof GroupService> {
  /** The caller's active membership of a group; a 1:1 conversation is no group. */
  async function activeGroupMember(conversationId: string, userId: string): Promise<Membership> {
    const m = await requireMembership(deps, conversationId, userId, { active: true });
    if (m.conversation?.kind !== InternalKind.GROUP) throw new ConnectError("not a group conversation", Code.FailedPrecondition);
    return m;
  }

  /** The group as the caller sees it, read after a change. */
  async function view(conversationId: string, userId: string) {
    const [{ conversation, member }, heads] = await Promise.all([
      deps.groups.getMembership({ conversationId, userId }),
      deps.messagestore.getHeads({ conversationIds: [conversationId] }),
    ]);
    if (!conversation) throw new ConnectError("groups answered without a conversation", Code.Internal);
    return publicConversation(conversation, member, heads.heads[0]);
  }

  /** Distinct, well-formed, existing users other than the caller; NOT_FOUND names the first unknown one. */
  async function requireUsers(field: string, ids: readonly string[], me: string, min: number): Promise<string[]> {
    if (ids.length < min || ids.length > USERS_PER_CALL_MAX) {
      throw invalid(field, `must name ${min} to ${USERS_PER_CALL_MAX} users`);
    }
    const seen = new Set<string>();
    ids.forEach((id, i) => {
      requireUuid(`${field}[${i}]`, id);
      if (id === me) throw invalid(`${field}[${i}]`, "is you");
      if (seen.has(id)) throw invalid(`${field}[${i}]`, "is named twice");
      seen.add(id);
    });
    const found = await existingUsers(deps, ids);
    const unknown = ids.find((id) => !found.has(id));
    if (unknown) throw new ConnectError(`no such user: ${unknown}`, Code.NotFound);
    return [...ids];
  }

  return {
    async createGroup(req, ctx) {
      const me = await caller(deps, ctx);
      const name = requireText("name", req.name, 1, GROUP_NAME_MAX);
      const topic = requireText("topic", req.topic, 0, GROUP_TOPIC_MAX);
      const memberIds = await requireUsers("member_ids", req.memberIds, me.userId, 0);
      const { conversation } = await deps.groups.createGroup({ actorId: me.userId, name, topic, memberIds });
      if (!conversation) throw new ConnectError("groups answered without a conversation", Code.Internal);
      return { conversation: await view(conversation.conversationId, me.userId) };
    },

    async getGroup(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      const { conversation, member } = await activeGroupMember(conversationId, me.userId);
      const { heads } = await deps.messagestore.getHeads({ conversationIds: [conversationId] });
      return { conversation: publicConversation(conversation!, member, heads[0]) };
    },

    async updateGroup(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const name = req.name === undefined ? undefined : requireText("name", req.name, 1, GROUP_NAME_MAX);
      const topic = req.topic === undefined ? undefined : requireText("topic", req.topic, 0, GROUP_TOPIC_MAX);
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      await deps.groups.updateGroup({ actorId: me.userId, conversationId, name, topic });
      return { conversation: await view(conversationId, me.userId) };
    },

    async deleteGroup(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      await deps.groups.deleteGroup({ actorId: me.userId, conversationId });
      return {};
    },

    async listGroups(req, ctx) {
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const { conversations } = await deps.groups.listUserConversations({ userId });
      const groups = conversations.filter((uc) => uc.conversation?.kind === InternalKind.GROUP && isActive(uc.member));
      if (groups.length === 0) return { conversations: [] };
      const { heads } = await deps.messagestore.getHeads({ conversationIds: groups.map((g) => g.conversation!.conversationId) });
      const byId = new Map(heads.map((h) => [h.conversationId, h]));
      return {
        conversations: groups.map((g) => publicConversation(g.conversation!, g.member, byId.get(g.conversation!.conversationId))),
      };
    },

    async listMembers(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const afterUserId = req.afterUserId === "" ? "" : requireUuid("after_user_id", req.afterUserId);
      const limit = pageLimit("limit", req.limit, 100, 1_000);
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      const res = await deps.groups.listMembers({ actorId: me.userId, conversationId, afterUserId, limit });
      return { members: res.members.map(publicMember), nextAfterUserId: res.nextAfterUserId };
    },

    async addMembers(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      // Membership first: a stranger learns nothing about the users they name.
      await activeGroupMember(conversationId, me.userId);
      const userIds = await requireUsers("user_ids", req.userIds, me.userId, 1);
      await deps.groups.addMembers({ actorId: me.userId, conversationId, userIds });
      return { conversation: await view(conversationId, me.userId) };
    },

    async removeMember(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const userId = requireUuid("user_id", req.userId);
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      await deps.groups.removeMember({ actorId: me.userId, conversationId, userId });
      return {};
    },

    async leaveGroup(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      await deps.groups.removeMember({ actorId: me.userId, conversationId, userId: me.userId });
      return {};
    },

    async setMemberRole(req, ctx) {
      const conversationId = requireUuid("conversation_id", req.conversationId);
      const userId = requireUuid("user_id", req.userId);
      const role = internalRole(req.role);
      if (role === undefined) throw invalid("role", "must be ROLE_MEMBER, ROLE_ADMIN or ROLE_OWNER");
      const me = await caller(deps, ctx);
      await activeGroupMember(conversationId, me.userId);
      await deps.groups.setMemberRole({ actorId: me.userId, conversationId, userId, role });
      return {};
    },
  };
}
