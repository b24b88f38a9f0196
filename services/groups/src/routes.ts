import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import type { GroupsContext } from "./context.js";
import { getConversation } from "./routes/get-conversation.js";
import { getOrCreateDirectConversation } from "./routes/get-or-create-direct-conversation.js";
import { listUserConversations } from "./routes/list-user-conversations.js";

export function groupsRoutes(ctx: GroupsContext): Routes {
  return (router) =>
    router.service(GroupsService, {
      getOrCreateDirectConversation: getOrCreateDirectConversation(ctx),
      getConversation: getConversation(ctx),
      listUserConversations: listUserConversations(ctx),
    });
}
