import type { ListMembersRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { pageLimit, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { memberToProto } from "../convert.js";
import { LIMITS, notAMember } from "../rules.js";

/** Active members only; active members of the group (or both users of a 1:1) may list. */
export function listMembers(ctx: GroupsContext) {
  return async (req: ListMembersRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    const after = req.afterUserId === "" ? "" : requireUuid("after_user_id", req.afterUserId);
    const limit = pageLimit("limit", req.limit, LIMITS.listMembersDefault, LIMITS.listMembersMax);
    const mine = await ctx.store.getMembership(id, actor);
    if (!mine || mine.member.state !== "active") throw notAMember();
    const page = await ctx.store.listMembers(id, after, limit + 1);
    const more = page.length > limit;
    const members = more ? page.slice(0, limit) : page;
    return {
      members: members.map(memberToProto),
      nextAfterUserId: more ? members[members.length - 1]!.userId : "",
    };
  };
}
