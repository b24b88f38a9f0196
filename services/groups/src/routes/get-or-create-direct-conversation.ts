import { Code, ConnectError } from "@connectrpc/connect";
import type { GetOrCreateDirectConversationRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { directConversationId } from "../../../../lib/ids.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";

/** An existing conversation is returned even when blocked (it shows blocked_user_ids); a new one needs no block. */
export function getOrCreateDirectConversation(ctx: GroupsContext) {
  return async (req: GetOrCreateDirectConversationRequest) => {
    const user = requireUuid("user_id", req.userId);
    const peer = requireUuid("peer_user_id", req.peerUserId);
    if (user === peer) throw invalid("peer_user_id", "a direct conversation needs two different users");
    const id = directConversationId(user, peer);
    const result = await ctx.store.getOrCreateDirect(id, user, peer, ctx.clock());
    if ("blocked" in result) throw new ConnectError("a block exists between these users", Code.PermissionDenied);
    if (result.created) ctx.logger.debug({ conversationId: id }, "direct conversation created");
    return { conversation: conversationToProto(result.conversation), created: result.created };
  };
}
