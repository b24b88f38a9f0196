import type { ListUserConversationsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";

/** A user's conversations; the gateway pages and orders them by activity. */
export const MAX_CONVERSATIONS = 1000;

export function listUserConversations(ctx: GroupsContext) {
  return async (req: ListUserConversationsRequest) => {
    const user = requireUuid("user_id", req.userId);
    const conversations = await ctx.store.listForUser(user, MAX_CONVERSATIONS);
    return { conversations: conversations.map(conversationToProto) };
  };
}
