import { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { runServiceProcess } from "../../../lib/service-main.js";
import { loadConfig } from "./config.js";
import { MessageStoreContext } from "./context.js";
import { messageStoreRoutes } from "./routes.js";

const cfg = loadConfig(process.env);
await runServiceProcess({
  kind: "messagestore",
  host: cfg.host,
  port: cfg.port,
  logLevel: cfg.logLevel,
  services: [MessageStoreService],
  async start(logger) {
    const ctx = await MessageStoreContext.fromConfig(cfg, { logger });
    return { routes: messageStoreRoutes(ctx), close: () => ctx.close(), checks: ctx.readinessChecks() };
  },
}, process.env);
