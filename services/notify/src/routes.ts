import { Code, ConnectError } from "@connectrpc/connect";
import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { isUnavailable } from "../../../lib/sql.js";
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

/** A database that is down is UNAVAILABLE (retry later), anything unexpected INTERNAL. */
function toConnectError(ctx: NotifyContext, err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isUnavailable(err)) {
    ctx.logger.warn({ err }, "database unavailable");
    return new ConnectError("database unavailable", Code.Unavailable);
  }
  ctx.logger.error({ err }, "notify request failed");
  return new ConnectError("internal error", Code.Internal);
}
