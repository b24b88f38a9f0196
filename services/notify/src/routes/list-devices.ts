import type { ListDevicesRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import { deviceToProto } from "../convert.js";

export function listDevices(ctx: NotifyContext) {
  return async (req: ListDevicesRequest) => {
    const userId = requireUuid("user_id", req.userId);
    return { devices: (await ctx.store.listDevices(userId)).map(deviceToProto) };
  };
}
