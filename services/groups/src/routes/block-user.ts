import type { BlockUserRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { directConversationId } from "../../../../lib/ids.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";

/**
 * Idempotent. A new block publishes a change without event to the pair's direct
 * conversation (existing or not), so routers drop the cached membership.
 */
export function blockUser(ctx: GroupsContext) {
  return async (req: BlockUserRequest) => {
    const user = requireUuid("user_id", req.userId);
    const blocked = requireUuid("blocked_user_id", req.blockedUserId);
    if (user === blocked) throw invalid("blocked_user_id", "cannot block oneself");
    const direct = directConversationId(user, blocked);
    if (await ctx.store.block(user, blocked, direct, changeRecord(direct, user, ctx.clock(), undefined))) {
      await ctx.publisher.publish(direct);
    }
    return {};
  };
}
