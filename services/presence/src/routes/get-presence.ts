import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { PresenceState, type GetPresenceRequest } from "../../../../gen/parley/presence/v1/presence_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { PresenceContext } from "../context.js";
import type { PresenceState as State } from "../presence-store.js";

export const MAX_PRESENCE_USERS = 1000;

export const RPC_STATE: Record<State, PresenceState> = {
  online: PresenceState.ONLINE,
  away: PresenceState.AWAY,
  offline: PresenceState.OFFLINE,
};

/** The published (damped) state of each user: what their followers were told last. */
export function getPresence(ctx: PresenceContext) {
  return async (req: GetPresenceRequest) => {
    if (req.userIds.length > MAX_PRESENCE_USERS) throw invalid("user_ids", `at most ${MAX_PRESENCE_USERS} users per call`);
    for (const id of req.userIds) requireUuid("user_ids", id);
    const presences = await ctx.store.get(req.userIds, ctx.clock());
    return {
      presences: presences.map((p) => ({
        userId: p.userId,
        state: RPC_STATE[p.state],
        lastSeenAt: p.lastSeenMs ? timestampFromMs(p.lastSeenMs) : undefined,
      })),
    };
  };
}
