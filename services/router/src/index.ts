export { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
export { loadConfig } from "./config.js";
export { RouterContext } from "./context.js";
export { routerRoutes } from "./routes.js";
