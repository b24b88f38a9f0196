import type { SetMutedRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { notAMember } from "../rules.js";

/** The caller's own setting, for any conversation they are or were a member of. Publishes nothing. */
export function setMuted(ctx: GroupsContext) {
  return async (req: SetMutedRequest) => {
    const user = requireUuid("user_id", req.userId);
    const id = requireUuid("conversation_id", req.conversationId);
    if (!(await ctx.store.setMuted(id, user, req.muted))) throw notAMember();
    return {};
  };
}
