import type { ListUserGroupIdsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import type { GroupsContext } from "../context.js";
import { LIMITS, requireUuidList } from "../rules.js";

/** Every asked user, in the order asked, with the groups they are an active member of (one query). */
export function listUserGroupIds(ctx: GroupsContext) {
  return async (req: ListUserGroupIdsRequest) => {
    const users = requireUuidList("user_ids", req.userIds, 0, LIMITS.userGroupIds);
    const groups = await ctx.store.listUserGroupIds(users);
    return { users: users.map((userId) => ({ userId, conversationIds: groups.get(userId) ?? [] })) };
  };
}
