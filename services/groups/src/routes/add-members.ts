import { Code, ConnectError } from "@connectrpc/connect";
import type { AddMembersRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";
import { LIMITS, requireRole, requireUuidList } from "../rules.js";

/**
 * Owners and admins; all or nothing under the group's row lock: an active member among
 * the users is ALREADY_EXISTS, going over the cap RESOURCE_EXHAUSTED. Users who had
 * left join again. Event: MembersAdded.
 */
export function addMembers(ctx: GroupsContext) {
  return async (req: AddMembersRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    const users = requireUuidList("user_ids", req.userIds, 1, LIMITS.addMembers);
    const conversation = await ctx.store.mutateGroup(id, async (tx) => {
      const { conversation } = await requireRole(tx, actor, "admin");
      const active = (await tx.members(users)).filter((m) => m.state === "active");
      if (active.length > 0) {
        throw new ConnectError(`already a member: ${active.map((m) => m.userId).join(", ")}`, Code.AlreadyExists);
      }
      if (conversation.memberCount + users.length > ctx.memberCap) {
        throw new ConnectError(`a group has at most ${ctx.memberCap} members`, Code.ResourceExhausted);
      }
      const atMs = ctx.clock();
      await tx.addMembers(users, atMs);
      await tx.recordChange(
        changeRecord(id, actor, atMs, { kind: { case: "membersAdded", value: { userIds: users } } }, { joined: users }),
      );
      return tx.current();
    });
    await ctx.publisher.publish(id);
    return { conversation: conversationToProto(conversation) };
  };
}
