import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { NotifyContext } from "./context.js";
import { notifyRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "notify",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [NotifyService],
  async start(logger, discovery) {
    const ctx = await NotifyContext.fromConfig(cfg, { logger, discovery });
    return { routes: notifyRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
