import type { AssignGatewayRequest } from "../../../../gen/parley/session/v1/session_service_pb.js";
import { ownerOf } from "../../../../lib/balancer.js";
import type { Discovery, Instance } from "../../../../lib/discovery/discovery.js";
import { requireUuid } from "../../../../lib/validate.js";

/**
 * The least loaded live gateway (open connections, as each gateway reports to
 * discovery). Among gateways within 10% of the least load, the user's rendezvous
 * owner wins, so a reconnecting user tends to land where they were while load is even.
 */
export function pickGateway(gateways: readonly Instance[], userId: string): Instance | undefined {
  const usable = gateways.filter((g) => g.publicUrl);
  if (usable.length === 0) return undefined;
  const least = Math.min(...usable.map((g) => g.load ?? 0));
  const limit = least + Math.floor(least * 0.1);
  return ownerOf(userId, usable.filter((g) => (g.load ?? 0) <= limit));
}

export function assignGateway(discovery: Discovery | undefined) {
  return async (req: AssignGatewayRequest) => {
    requireUuid("user_id", req.userId);
    const gw = discovery && pickGateway(discovery.list("gateway"), req.userId);
    return gw ? { gatewayId: gw.id, publicUrl: gw.publicUrl! } : { gatewayId: "", publicUrl: "" };
  };
}
