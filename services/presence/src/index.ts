export { PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
export { loadConfig } from "./config.js";
export { PresenceContext } from "./context.js";
export { presenceRoutes } from "./routes.js";
