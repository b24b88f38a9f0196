export { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
export { loadConfig } from "./config.js";
export { NotifyContext } from "./context.js";
export { notifyRoutes } from "./routes.js";
