import { createLogger } from "../../lib/logger.js";
import { discoveryConfig, openDiscovery } from "../../lib/process-discovery.js";
import { onShutdownSignal } from "../../lib/shutdown.js";
import { loadConfig } from "./config.js";
import { Gateway } from "./context.js";

const cfg = loadConfig(process.env);
const logger = createLogger("gateway", cfg.logLevel);
const discovery = await openDiscovery(discoveryConfig(process.env), logger);
const gateway = await Gateway.start(cfg, { discovery, logger });
onShutdownSignal(
  async () => {
    await gateway.stop();
    await discovery?.close();
  },
  (err) => logger.error({ err }, "shutdown failed"),
);
