import type { DescService } from "@bufbuild/protobuf";
import { createLogger, type Logger } from "./logger.js";
import { startGrpcServer, type GrpcServer, type Routes } from "./rpc.js";

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
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    server
      .close()
      .then(() => ctx.close())
      .then(() => logger.info("stopped"))
      .catch((err: unknown) => {
        logger.error({ err }, "shutdown failed");
        process.exitCode = 1;
      });
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  return server;
}
