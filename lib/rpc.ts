import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, createRouterTransport, type Client, type ConnectRouter, type Interceptor, type Transport } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { HealthRegistry, healthRoutes } from "./grpc-health.js";
import { leanGrpcTransport, recordUnaryRoutes, serveUnary } from "./grpc-unary.js";
import { reflectionRoutes } from "./grpc-reflection.js";
import type { Logger } from "./logger.js";
import { rpcTracingInterceptor } from "./telemetry/rpc.js";

/**
 * W3C trace context on every call (lib/telemetry): the lean unary path propagates it
 * itself; connect's general paths (streams, compressed calls, calls with interceptors,
 * in-process transports) through these interceptors, which cost one branch per call
 * while tracing is off. They do not count as interceptors for choosing the lean path.
 */
const clientTracing = rpcTracingInterceptor("client");
const serverTracing = rpcTracingInterceptor("server");

/** Route definitions, the connect-es way: `(router) => router.service(FooService, impl)`. */
export type Routes = (router: ConnectRouter) => void;

export interface GrpcServerOptions {
  host?: string;
  /** The host in `url` when it differs from the bound one (a pod binding 0.0.0.0 advertises its IP). */
  advertiseHost?: string;
  /** 0 picks a free port. */
  port: number;
  routes: Routes;
  /** The services `routes` registers: announced by reflection and health. */
  services: readonly DescService[];
  logger: Logger;
  interceptors?: Interceptor[];
  /** How long close() lets in-flight calls finish before it cuts them. */
  drainMs?: number;
}

export interface GrpcServer {
  readonly port: number;
  /** `http://host:port`, for clients. */
  readonly url: string;
  readonly health: HealthRegistry;
  /** Stops accepting, marks every service NOT_SERVING, drains in-flight calls, closes. */
  close(): Promise<void>;
}

/**
 * Serves gRPC (and Connect, gRPC-Web) over cleartext HTTP/2 with the standard health
 * service and server reflection, so grpc-js stubs, grpcurl and `buf curl` all work.
 */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<GrpcServer> {
  const host = opts.host ?? "127.0.0.1";
  const health = new HealthRegistry(opts.services.map((s) => s.typeName));
  const lean = recordUnaryRoutes((router) => {
    opts.routes(router);
    healthRoutes(health)(router);
    reflectionRoutes(opts.services)(router);
  });
  const general = connectNodeAdapter({ routes: lean.routes, interceptors: [serverTracing, ...(opts.interceptors ?? [])] });
  // Interceptors only run on connect's general path, so with interceptors everything goes there.
  const handler: typeof general =
    opts.interceptors && opts.interceptors.length > 0 ? general : (req, res) => serveUnary(lean.table, req as http2.Http2ServerRequest, res as http2.Http2ServerResponse) || general(req, res);
  const server = http2.createServer({}, handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${opts.advertiseHost ?? host}:${port}`;
  opts.logger.info({ url, services: opts.services.map((s) => s.typeName) }, "grpc server listening");
  let closing: Promise<void> | undefined;
  return {
    port,
    url,
    health,
    close() {
      closing ??= (async () => {
        health.shutdown();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sessions) s.close(); // GOAWAY: finish in-flight streams, accept no new ones
        const timer = setTimeout(() => {
          for (const s of sessions) s.destroy();
        }, opts.drainMs ?? 5000);
        await closed;
        clearTimeout(timer);
      })();
      return closing;
    },
  };
}

/** A transport that owns its connection: `close()` ends it, so servers can shut down. */
export interface OwnedTransport extends Transport {
  close(): void;
}

/**
 * A gRPC client transport over one long-lived HTTP/2 connection to `url`. Unary calls
 * take the lean path (lib/grpc-unary.ts) unless there are interceptors.
 */
export function dialGrpc(url: string, interceptors?: Interceptor[]): OwnedTransport {
  const sessionManager = new Http2SessionManager(url, {
    pingIntervalMs: 15_000,
    pingTimeoutMs: 5_000,
    idleConnectionTimeoutMs: 60_000,
  });
  const general = createGrpcTransport({ baseUrl: url, sessionManager, interceptors: [...(interceptors ?? []), clientTracing] });
  const transport = interceptors && interceptors.length > 0 ? general : leanGrpcTransport(sessionManager, general);
  return Object.assign(transport, { close: () => sessionManager.abort() });
}

/** A transport that calls `routes` in this process through the same contract (serialized). */
export function inProcess(routes: Routes, interceptors?: Interceptor[]): OwnedTransport {
  const transport = createRouterTransport(routes, {
    transport: { interceptors: [...(interceptors ?? []), clientTracing] },
    router: { interceptors: [serverTracing] },
  });
  return Object.assign(transport, { close: () => {} });
}

/**
 * A transport made on first use: for peers that exist only after this one is built
 * (the one-process platform's groups service calls the router, which calls groups).
 */
export function lazyTransport(make: () => OwnedTransport): OwnedTransport {
  let t: OwnedTransport | undefined;
  const get = () => (t ??= make());
  return {
    unary: (...args) => get().unary(...args),
    stream: (...args) => get().stream(...args),
    close: () => t?.close(),
  };
}

export { createClient, type Client };
