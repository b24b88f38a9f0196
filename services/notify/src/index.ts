export { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
export { loadConfig, type NotifyConfig } from "./config.js";
export { NotifyContext, type NotifyOverrides } from "./context.js";
export { notifyRoutes } from "./routes.js";
