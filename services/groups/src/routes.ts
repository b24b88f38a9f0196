import { Code, ConnectError } from "@connectrpc/connect";
import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { isUnavailable } from "../../../lib/sql.js";
import type { GroupsContext } from "./context.js";
import { getConversation } from "./routes/get-conversation.js";
import { getOrCreateDirectConversation } from "./routes/get-or-create-direct-conversation.js";
import { listUserConversations } from "./routes/list-user-conversations.js";

export function groupsRoutes(ctx: GroupsContext): Routes {
  const h =
    <Req, Res>(handler: (req: Req) => Promise<Res>) =>
    async (req: Req): Promise<Res> => {
      try {
        return await handler(req);
      } catch (err) {
        throw toConnectError(ctx, err);
      }
    };
  return (router) =>
    router.service(GroupsService, {
      getOrCreateDirectConversation: h(getOrCreateDirectConversation(ctx)),
      getConversation: h(getConversation(ctx)),
      listUserConversations: h(listUserConversations(ctx)),
    });
}

/** A database that is down is UNAVAILABLE (retry later), anything unexpected INTERNAL. */
function toConnectError(ctx: GroupsContext, err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isUnavailable(err)) {
    ctx.logger.warn({ err }, "database unavailable");
    return new ConnectError("database unavailable", Code.Unavailable);
  }
  ctx.logger.error({ err }, "unexpected error");
  return new ConnectError("internal error", Code.Internal);
}
