import { PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import type { PresenceContext } from "./context.js";
import { getPresence } from "./routes/get-presence.js";
import { reportConnections } from "./routes/report-connections.js";

export function presenceRoutes(ctx: PresenceContext): Routes {
  return (router) =>
    router.service(PresenceService, { reportConnections: reportConnections(ctx), getPresence: getPresence(ctx) });
}
