import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { errorBoundary } from "../../../lib/handler-errors.js";
import type { NotifyContext } from "./context.js";
import { getSettings } from "./routes/get-settings.js";
import { getStats } from "./routes/get-stats.js";
import { listDeadLetters } from "./routes/list-dead-letters.js";
import { listDevices } from "./routes/list-devices.js";
import { messagesStored } from "./routes/messages-stored.js";
import { registerDevice } from "./routes/register-device.js";
import { unregisterDevice } from "./routes/unregister-device.js";
import { updateSettings } from "./routes/update-settings.js";

export function notifyRoutes(ctx: NotifyContext): Routes {
  const h = errorBoundary(ctx.logger);
  return (router) =>
    router.service(NotifyService, {
      registerDevice: h(registerDevice(ctx)),
      unregisterDevice: h(unregisterDevice(ctx)),
      listDevices: h(listDevices(ctx)),
      getSettings: h(getSettings(ctx)),
      updateSettings: h(updateSettings(ctx)),
      messagesStored: h(messagesStored(ctx)),
      getStats: h(getStats(ctx)),
      listDeadLetters: h(listDeadLetters(ctx)),
    });
}
