import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "./logger.js";
import { readinessHttp, type ReadinessSource } from "./readiness.js";

/** What an ops route answers. */
export interface OpsResponse {
  status: number;
  /** Default `text/plain; charset=utf-8`. */
  contentType?: string;
  body: string;
}

/** One route of the ops server (GET and HEAD). */
export type OpsHandler = (req: http.IncomingMessage) => OpsResponse | Promise<OpsResponse>;

export interface OpsServerOptions {
  host?: string;
  /** 0 picks a free port (logged). */
  port: number;
  readiness: ReadinessSource;
  logger: Logger;
  /** More routes by path (e.g. `/metrics` later). */
  routes?: Record<string, OpsHandler>;
}

export interface OpsServer {
  readonly port: number;
  /** `http://host:port` */
  readonly url: string;
  /** Adds (or replaces) a route, e.g. `/metrics`. */
  route(path: string, handler: OpsHandler): void;
  /** Stops listening and lets go of probe connections. */
  close(): Promise<void>;
}

/**
 * The operations port of a process: HTTP/1.1, for probes and tools, never for clients.
 * `/healthz`: liveness, answered by the event loop itself (200 "ok" while the process
 * runs, draining or not). `/readyz`: readiness (200 or 503, JSON naming the failing
 * checks; see lib/readiness.ts). Further routes are added with `route()`.
 */
export async function startOpsServer(o: OpsServerOptions): Promise<OpsServer> {
  const host = o.host ?? "127.0.0.1";
  const routes = new Map<string, OpsHandler>([
    ["/healthz", () => ({ status: 200, body: "ok" })],
    [
      "/readyz",
      async () => {
        const { status, body } = readinessHttp(await o.readiness.report());
        return { status, body, contentType: "application/json" };
      },
    ],
    ...Object.entries(o.routes ?? {}),
  ]);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0]!;
    const handler = routes.get(path);
    const answer = (r: OpsResponse) => {
      const body = Buffer.from(r.body);
      res.writeHead(r.status, {
        "content-type": r.contentType ?? "text/plain; charset=utf-8",
        "content-length": body.length,
        "cache-control": "no-store",
      });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return answer({ status: 405, body: "method not allowed" });
    }
    if (!handler) return answer({ status: 404, body: `not found; try ${[...routes.keys()].join(", ")}` });
    Promise.resolve()
      .then(() => handler(req))
      .then(answer, (err: unknown) => {
        o.logger.error({ err, path }, "ops route failed");
        answer({ status: 500, body: "internal error" });
      });
  });
  // Probes are small and quick: a slow client must not hold a socket for long.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host}:${port}`;
  o.logger.info({ url, routes: [...routes.keys()] }, "ops server listening");
  let closing: Promise<void> | undefined;
  return {
    port,
    url,
    route(path, handler) {
      routes.set(path, handler);
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Idle keep-alive probe connections go now; one in the middle of a request a moment later.
        server.closeIdleConnections();
        const cut = setTimeout(() => server.closeAllConnections(), 1000);
        cut.unref();
      });
      return closing;
    },
  };
}
