import { Code, ConnectError } from "@connectrpc/connect";
import type { CheckMembersRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";
import { LIMITS, requireUuidList } from "../rules.js";

/** Which of the asked users may send: active members (a 1:1 with a block: nobody). */
export function checkMembers(ctx: GroupsContext) {
  return async (req: CheckMembersRequest) => {
    const id = requireUuid("conversation_id", req.conversationId);
    const users = requireUuidList("user_ids", req.userIds, 0, LIMITS.checkMembers);
    const found = await ctx.store.checkMembers(id, users);
    if (!found) throw new ConnectError(`conversation ${id} not found`, Code.NotFound);
    return { conversation: conversationToProto(found.conversation), allowedUserIds: found.allowed };
  };
}
