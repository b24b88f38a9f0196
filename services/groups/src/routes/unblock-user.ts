import type { UnblockUserRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { directConversationId } from "../../../../lib/ids.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";

/** Idempotent; removing a block publishes a change without event, like blocking. */
export function unblockUser(ctx: GroupsContext) {
  return async (req: UnblockUserRequest) => {
    const user = requireUuid("user_id", req.userId);
    const blocked = requireUuid("blocked_user_id", req.blockedUserId);
    if (user === blocked) throw invalid("blocked_user_id", "cannot unblock oneself");
    const direct = directConversationId(user, blocked);
    if (await ctx.store.unblock(user, blocked, direct, changeRecord(direct, user, ctx.clock(), undefined))) {
      await ctx.publisher.publish(direct);
    }
    return {};
  };
}
