import type { GetSettingsRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import { settingsToProto } from "../convert.js";

export function getSettings(ctx: NotifyContext) {
  return async (req: GetSettingsRequest) => {
    const userId = requireUuid("user_id", req.userId);
    return { settings: settingsToProto(await ctx.store.getSettings(userId), ctx.clock()) };
  };
}
