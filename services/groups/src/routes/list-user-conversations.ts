import type { ListUserConversationsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto, memberToProto } from "../convert.js";
import { LIMITS } from "../rules.js";

/** A user's conversations, current and past, with their membership; the gateway pages and orders them by activity. */
export function listUserConversations(ctx: GroupsContext) {
  return async (req: ListUserConversationsRequest) => {
    const user = requireUuid("user_id", req.userId);
    const rows = await ctx.store.listForUser(user, LIMITS.userConversations);
    return {
      conversations: rows.map((r) => ({ conversation: conversationToProto(r.conversation), member: memberToProto(r.member) })),
    };
  };
}
