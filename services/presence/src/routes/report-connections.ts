import type { ReportConnectionsRequest } from "../../../../gen/parley/presence/v1/presence_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { PresenceContext } from "../context.js";

/** Bounds one report; a gateway with more users sends several. */
export const MAX_REPORT_USERS = 50_000;

export function reportConnections(ctx: PresenceContext) {
  return async (req: ReportConnectionsRequest) => {
    if (req.gatewayId.length === 0 || req.gatewayId.length > 128) throw invalid("gateway_id", "must have 1 to 128 characters");
    if (req.online.length + req.offlineUserIds.length > MAX_REPORT_USERS) {
      throw invalid("online", `at most ${MAX_REPORT_USERS} users per report`);
    }
    const online = req.online.map((u) => requireUuid("online.user_id", u.userId));
    for (const id of req.offlineUserIds) requireUuid("offline_user_ids", id);
    await ctx.store.report(req.gatewayId, online, req.offlineUserIds, ctx.clock());
    return {};
  };
}
