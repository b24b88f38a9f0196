import type { DescService } from "@bufbuild/protobuf";
import type { Discovery, Registration, ServiceKind } from "./discovery/discovery.js";
import { envInt, envPort, envString, type Env } from "./env.js";
import { createLogger, type Logger } from "./logger.js";
import { startOpsServer, type OpsServer } from "./ops-server.js";
import { discoveryConfig, openDiscovery, registerSelf, type ProcessDiscovery } from "./process-discovery.js";
import {
  discoveryChecks,
  followReadiness,
  Readiness,
  readinessConfig,
  untilDeregistered,
  type ReadinessCheck,
  type ReadinessConfig,
} from "./readiness.js";
import { startGrpcServer, type GrpcServer, type Routes } from "./rpc.js";
import { onShutdownSignal } from "./shutdown.js";
import { telemetryConfig } from "./telemetry/config.js";
import { metricsRoute, startTelemetry } from "./telemetry/telemetry.js";

export interface ServiceProcess {
  kind: ServiceKind;
  host: string;
  port: number;
  logLevel: string;
  services: readonly DescService[];
  /**
   * Builds the service's context; called once. `discovery` is set when etcd is
   * configured. `checks` are the backends the process needs to be ready (its context's
   * `readinessChecks()`); etcd is added here when there is discovery.
   */
  start(
    logger: Logger,
    discovery: Discovery | undefined,
  ): Promise<{ routes: Routes; close(): Promise<void>; checks?: readonly ReadinessCheck[] }>;
}

export interface OpsConfig {
  /** `PARLEY_OPS_PORT`: the HTTP port of `/healthz` and `/readyz`; 0 (default) picks a free one, logged. */
  opsPort: number;
  readiness: ReadinessConfig;
  /** `PARLEY_RPC_DRAIN_MS`: how long in-flight RPCs may run on shutdown before they are cut. */
  rpcDrainMs: number;
  /** `PARLEY_DEREGISTER_WAIT_MS`: at most this long, after leaving discovery, waiting to see the removal. */
  deregisterWaitMs: number;
}

export function opsConfig(env: Env): OpsConfig {
  return {
    opsPort: envPort(env, "PARLEY_OPS_PORT", 0),
    readiness: readinessConfig(env),
    rpcDrainMs: envInt(env, "PARLEY_RPC_DRAIN_MS", 5000, 0, 600_000),
    deregisterWaitMs: envInt(env, "PARLEY_DEREGISTER_WAIT_MS", 2000, 0, 60_000),
  };
}

/** A started service process. */
export interface RunningService {
  readonly server: GrpcServer;
  readonly ops: OpsServer;
  readonly readiness: Readiness;
  readonly logger: Logger;
  /**
   * The graceful stop: not ready (readyz 503, gRPC health NOT_SERVING), leave discovery
   * and wait until the removal is visible, stop accepting and finish the RPCs in flight
   * (cut after PARLEY_RPC_DRAIN_MS), close the context, the ops port and discovery.
   * Idempotent.
   */
  stop(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  /** Replaces `openDiscovery(discoveryConfig(env))` (tests). */
  discovery?: ProcessDiscovery;
}

/**
 * Starts a service process: the ops port first (liveness answers during a slow start;
 * readiness says "starting"), then discovery, the context, the gRPC server, and the
 * registration in discovery. Readiness follows the context's backend checks from then on.
 */
export async function startServiceProcess(p: ServiceProcess, env: Env, o: StartOptions = {}): Promise<RunningService> {
  const logger = o.logger ?? createLogger(p.kind, p.logLevel);
  const dcfg = discoveryConfig(env);
  const ocfg = opsConfig(env);
  const readiness = new Readiness({ timeoutMs: ocfg.readiness.timeoutMs, cacheMs: ocfg.readiness.cacheMs });
  // `/metrics`: the Prometheus text of lib/telemetry (404 while metrics are off).
  const ops = await startOpsServer({ host: p.host, port: ocfg.opsPort, readiness, logger, routes: { "/metrics": metricsRoute } });
  const closers: (() => Promise<void> | void)[] = [() => ops.close()];
  const unwind = async () => {
    for (const c of closers.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
  };
  try {
    const discovery = o.discovery ?? (await openDiscovery(dcfg, logger));
    if (!o.discovery && discovery) closers.push(() => discovery.close());
    const ctx = await p.start(logger, discovery);
    closers.push(() => ctx.close());
    readiness.begin([...(ctx.checks ?? []), ...discoveryChecks(discovery)]);
    const first = await readiness.report();
    if (!first.ready) logger.warn({ failing: first.failing, checks: first.checks }, "not ready yet: serving anyway, readiness follows the backends");
    const server = await startGrpcServer({
      host: p.host,
      advertiseHost: envString(env, "PARLEY_ADVERTISE_HOST", p.host),
      port: p.port,
      routes: ctx.routes,
      services: p.services,
      logger,
      drainMs: ocfg.rpcDrainMs,
    });
    closers.push(() => server.close());
    followReadiness(server.health, p.services.map((s) => s.typeName), readiness);
    readiness.watch(ocfg.readiness.intervalMs);
    closers.push(() => readiness.close());
    const id = dcfg.instanceId ?? `${p.kind}-${p.host}-${server.port}`;
    const registration: Registration | undefined = await registerSelf(discovery, { ...dcfg, instanceId: id }, {
      kind: p.kind,
      url: server.url,
      host: p.host,
      port: server.port,
    });
    let stopping: Promise<void> | undefined;
    const stop = () =>
      (stopping ??= (async () => {
        closers.length = 0;
        readiness.drain();
        logger.info("draining: not ready, leaving discovery");
        if (registration) {
          await registration.close().catch((err: unknown) => logger.warn({ err }, "leaving discovery failed"));
          if (!(await untilDeregistered(discovery, p.kind, id, ocfg.deregisterWaitMs))) {
            logger.warn({ waitedMs: ocfg.deregisterWaitMs }, "own removal from discovery not seen; going on");
          }
        }
        await server.close(); // GOAWAY: in-flight RPCs finish, no new ones; cut after rpcDrainMs
        await ctx.close();
        await ops.close();
        if (!o.discovery) await discovery?.close();
        logger.info("stopped");
      })());
    return { server, ops, readiness, logger, stop };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/**
 * The body of every service's `main.ts`: start the process (see startServiceProcess) and
 * on SIGTERM/SIGINT stop it gracefully, then let the process end.
 */
export async function runServiceProcess(p: ServiceProcess, env: Env): Promise<GrpcServer> {
  const logger = createLogger(p.kind, p.logLevel);
  // Telemetry before anything else (docs/observability.md): metrics on, tracing off by default.
  const telemetry = startTelemetry(telemetryConfig(env, p.kind), { logger });
  const running = await startServiceProcess(p, env, { logger });
  onShutdownSignal(
    async (signal) => {
      running.logger.info({ signal }, "shutting down");
      await running.stop();
      await telemetry.shutdown();
    },
    (err) => running.logger.error({ err }, "shutdown failed"),
  );
  return running.server;
}
