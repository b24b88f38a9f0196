import { PresenceState, type ReportConnectionsRequest } from "../../../../gen/parley/presence/v1/presence_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { PresenceContext } from "../context.js";
import type { UserReport } from "../presence-store.js";

/** Bounds one report; a gateway with more users sends several. */
export const MAX_REPORT_USERS = 50_000;

/**
 * A gateway's report (full every heartbeat, or a delta): renews the entries of the users
 * listed online (with their state there), drops those listed offline. Changes whose
 * damping window is 0 are published at once; the others by the sweep.
 */
export function reportConnections(ctx: PresenceContext) {
  return async (req: ReportConnectionsRequest) => {
    if (req.gatewayId.length === 0 || req.gatewayId.length > 128) throw invalid("gateway_id", "must have 1 to 128 characters");
    if (req.online.length + req.offlineUserIds.length > MAX_REPORT_USERS) {
      throw invalid("online", `at most ${MAX_REPORT_USERS} users per report`);
    }
    const online = req.online.map((u): UserReport => {
      requireUuid("online.user_id", u.userId);
      if (u.state !== PresenceState.ONLINE && u.state !== PresenceState.AWAY && u.state !== PresenceState.UNSPECIFIED) {
        throw invalid("online.state", "must be ONLINE or AWAY");
      }
      return { userId: u.userId, state: u.state === PresenceState.AWAY ? "away" : "online" };
    });
    for (const id of req.offlineUserIds) requireUuid("offline_user_ids", id);
    const changes = await ctx.store.report(req.gatewayId, online, req.offlineUserIds, ctx.clock());
    void ctx.fanOut.publish(changes);
    return {};
  };
}
