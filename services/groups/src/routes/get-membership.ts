import { Code, ConnectError } from "@connectrpc/connect";
import type { GetMembershipRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto, memberToProto } from "../convert.js";

/** Any user's membership (the gateway asks on behalf of its users), current or past. */
export function getMembership(ctx: GroupsContext) {
  return async (req: GetMembershipRequest) => {
    const id = requireUuid("conversation_id", req.conversationId);
    const user = requireUuid("user_id", req.userId);
    const found = await ctx.store.getMembership(id, user);
    if (!found) throw new ConnectError("no membership of this conversation", Code.NotFound);
    return { conversation: conversationToProto(found.conversation), member: memberToProto(found.member) };
  };
}
