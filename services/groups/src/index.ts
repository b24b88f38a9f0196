export { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
export { loadConfig } from "./config.js";
export { GroupsContext } from "./context.js";
export { groupsRoutes } from "./routes.js";
