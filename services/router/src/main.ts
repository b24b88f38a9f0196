import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { RouterContext } from "./context.js";
import { routerRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "router",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [RouterService],
  async start(logger, discovery) {
    const ctx = await RouterContext.fromConfig(cfg, { logger, discovery });
    return { routes: routerRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
