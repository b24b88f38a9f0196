import type { ListBlockedUsersRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";

/** The users this user blocked (not those who blocked them), by user id. */
export function listBlockedUsers(ctx: GroupsContext) {
  return async (req: ListBlockedUsersRequest) => {
    const user = requireUuid("user_id", req.userId);
    return { userIds: await ctx.store.listBlocked(user) };
  };
}
