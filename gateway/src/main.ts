import { createLogger } from "../../lib/logger.js";
import { startOpsServer } from "../../lib/ops-server.js";
import { opsConfig } from "../../lib/service-main.js";
import { telemetryConfig } from "../../lib/telemetry/config.js";
import { metricsRoute, startTelemetry } from "../../lib/telemetry/telemetry.js";
import { discoveryConfig, openDiscovery } from "../../lib/process-discovery.js";
import { onShutdownSignal } from "../../lib/shutdown.js";
import { loadConfig } from "./config.js";
import { Gateway } from "./context.js";
import { drainConfig } from "./core/drain.js";

const cfg = loadConfig(process.env);
const drain = drainConfig(process.env);
const logger = createLogger("gateway", cfg.logLevel);
const telemetry = startTelemetry(telemetryConfig(process.env, "gateway"), { logger });
const discovery = await openDiscovery(discoveryConfig(process.env), logger);
const gateway = await Gateway.start(cfg, { discovery, logger });
// Probes and Prometheus: /healthz, /readyz and /metrics on the ops port (never on the public one).
const ops = await startOpsServer({
  host: cfg.host,
  port: opsConfig(process.env).opsPort,
  readiness: gateway.readiness,
  logger,
  routes: { "/metrics": metricsRoute },
});
onShutdownSignal(
  async (signal) => {
    // The hard deadline of the whole stop: past it the process exits, drained or not.
    setTimeout(() => {
      logger.error({ deadlineMs: drain.deadlineMs }, "drain deadline passed: exiting");
      process.exit(1);
    }, drain.deadlineMs).unref();
    logger.info({ signal, drainMs: drain.drainMs }, "draining");
    await gateway.stop({ drainMs: drain.drainMs, deadlineMs: drain.deadlineMs - 1000 });
    await discovery?.close();
    await ops.close();
    await telemetry.shutdown();
  },
  (err) => logger.error({ err }, "shutdown failed"),
);
