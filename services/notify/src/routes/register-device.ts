import { Code, ConnectError } from "@connectrpc/connect";
import type { RegisterDeviceRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import { deviceFromRequest } from "../device-input.js";
import { deviceToProto, platformFromProto } from "../convert.js";

export function registerDevice(ctx: NotifyContext) {
  return async (req: RegisterDeviceRequest) => {
    const userId = requireUuid("user_id", req.userId);
    const platform = platformFromProto(req.platform);
    if (!platform) throw invalid("platform", "must be FCM, APNS, WEB_PUSH or WEBHOOK");
    const device = deviceFromRequest(userId, platform, req, ctx.webPushAllowedHosts);
    if (ctx.requireProviders && !ctx.configuredPlatforms.has(platform)) {
      throw new ConnectError(`push platform ${platform} is not configured on this server`, Code.FailedPrecondition);
    }
    const r = await ctx.store.registerDevice(device, {
      deviceId: ctx.ids.next(),
      maxPerUser: ctx.maxDevicesPerUser,
      nowMs: ctx.clock(),
    });
    if ("overCap" in r) {
      throw new ConnectError(`at most ${ctx.maxDevicesPerUser} push devices per user`, Code.ResourceExhausted);
    }
    return { device: deviceToProto(r.device), created: r.created };
  };
}
