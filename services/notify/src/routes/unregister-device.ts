import { Code, ConnectError } from "@connectrpc/connect";
import type { UnregisterDeviceRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";

export function unregisterDevice(ctx: NotifyContext) {
  return async (req: UnregisterDeviceRequest) => {
    const userId = requireUuid("user_id", req.userId);
    const deviceId = requireUuid("push_device_id", req.pushDeviceId);
    // Unknown and someone else's look the same: ids are no oracle.
    if (!(await ctx.store.unregisterDevice(userId, deviceId))) {
      throw new ConnectError("no such push device", Code.NotFound);
    }
    return {};
  };
}
