import { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { SessionContext } from "./context.js";
import { sessionRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "session",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [SessionService],
  async start(logger, discovery) {
    const ctx = await SessionContext.fromConfig(cfg, { logger, discovery });
    return { routes: sessionRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
