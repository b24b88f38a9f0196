import { Code, ConnectError } from "@connectrpc/connect";
import type { GetConversationRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";

export function getConversation(ctx: GroupsContext) {
  return async (req: GetConversationRequest) => {
    const id = requireUuid("conversation_id", req.conversationId);
    const conversation = await ctx.store.get(id);
    if (!conversation) throw new ConnectError(`conversation ${id} not found`, Code.NotFound);
    return { conversation: conversationToProto(conversation) };
  };
}
