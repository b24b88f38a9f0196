import type { DescService } from "@bufbuild/protobuf";
import { createLogger, type Logger } from "./logger.js";
import { startGrpcServer, type GrpcServer, type Routes } from "./rpc.js";
import { onShutdownSignal } from "./shutdown.js";

export interface ServiceProcess {
  name: string;
  host: string;
  port: number;
  logLevel: string;
  services: readonly DescService[];
  /** Builds the service's context; called once. */
  start(logger: Logger): Promise<{ routes: Routes; close(): Promise<void> }>;
}

/**
 * The body of every service's `main.ts`: build the context, serve gRPC, and on
 * SIGTERM/SIGINT stop accepting, drain, close the context and let the process end.
 */
export async function runServiceProcess(p: ServiceProcess): Promise<GrpcServer> {
  const logger = createLogger(p.name, p.logLevel);
  const ctx = await p.start(logger);
  const server = await startGrpcServer({ host: p.host, port: p.port, routes: ctx.routes, services: p.services, logger });
  onShutdownSignal(
    async (signal) => {
      logger.info({ signal }, "shutting down");
      await server.close();
      await ctx.close();
      logger.info("stopped");
    },
    (err) => logger.error({ err }, "shutdown failed"),
  );
  return server;
}
