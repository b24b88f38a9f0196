import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import type { RouterContext } from "./context.js";
import { applyConversationChange } from "./routes/apply-conversation-change.js";
import { send, sendBatch } from "./routes/send.js";
import { sendEphemeral } from "./routes/send-ephemeral.js";

export function routerRoutes(ctx: RouterContext): Routes {
  return (router) =>
    router.service(RouterService, {
      send: send(ctx),
      sendBatch: sendBatch(ctx),
      applyConversationChange: applyConversationChange(ctx),
      sendEphemeral: sendEphemeral(ctx),
    });
}
