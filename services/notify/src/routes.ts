import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import type { NotifyContext } from "./context.js";
import { notifyOffline } from "./routes/notify-offline.js";

export function notifyRoutes(ctx: NotifyContext): Routes {
  return (router) => router.service(NotifyService, { notifyOffline: notifyOffline(ctx) });
}
