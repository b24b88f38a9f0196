import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { GroupsContext } from "./context.js";
import { groupsRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "groups",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [GroupsService],
  async start(logger, discovery) {
    const ctx = await GroupsContext.fromConfig(cfg, { logger, discovery });
    return { routes: groupsRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
