import { PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { PresenceContext } from "./context.js";
import { presenceRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "presence",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [PresenceService],
  async start(logger, discovery) {
    // Discovery (etcd) finds the gateways to deliver presence changes to.
    const ctx = await PresenceContext.fromConfig(cfg, { logger, discovery });
    return { routes: presenceRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
