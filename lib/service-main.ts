import type { DescService } from "@bufbuild/protobuf";
import type { Discovery, ServiceKind } from "./discovery/discovery.js";
import type { Env } from "./env.js";
import { createLogger, type Logger } from "./logger.js";
import { discoveryConfig, openDiscovery, registerSelf } from "./process-discovery.js";
import { startGrpcServer, type GrpcServer, type Routes } from "./rpc.js";
import { onShutdownSignal } from "./shutdown.js";

export interface ServiceProcess {
  kind: ServiceKind;
  host: string;
  port: number;
  logLevel: string;
  services: readonly DescService[];
  /** Builds the service's context; called once. `discovery` is set when etcd is configured. */
  start(logger: Logger, discovery: Discovery | undefined): Promise<{ routes: Routes; close(): Promise<void> }>;
}

/**
 * The body of every service's `main.ts`: build the context, serve gRPC, register in
 * discovery (when configured), and on SIGTERM/SIGINT deregister first (no new
 * traffic), drain, close the context and let the process end.
 */
export async function runServiceProcess(p: ServiceProcess, env: Env): Promise<GrpcServer> {
  const logger = createLogger(p.kind, p.logLevel);
  const dcfg = discoveryConfig(env);
  const discovery = await openDiscovery(dcfg, logger);
  const ctx = await p.start(logger, discovery);
  const server = await startGrpcServer({ host: p.host, port: p.port, routes: ctx.routes, services: p.services, logger });
  const registration = await registerSelf(discovery, dcfg, { kind: p.kind, url: server.url, host: p.host, port: server.port });
  onShutdownSignal(
    async (signal) => {
      logger.info({ signal }, "shutting down");
      await registration?.close();
      await server.close();
      await ctx.close();
      await discovery?.close();
      logger.info("stopped");
    },
    (err) => logger.error({ err }, "shutdown failed"),
  );
  return server;
}
