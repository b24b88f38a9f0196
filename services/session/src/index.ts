/** What the one-process platform needs to host the session service. */
export { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
export { loadConfig, type SessionConfig } from "./config.js";
export { SessionContext, type SessionOverrides } from "./context.js";
export { sessionRoutes } from "./routes.js";
