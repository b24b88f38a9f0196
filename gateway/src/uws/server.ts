import { createRequire } from "node:module";
import uWS, { type TemplatedApp, type us_listen_socket, type WebSocket } from "uWebSockets.js";
import type { Logger } from "../../../lib/logger.js";
import { readinessHttp, type ReadinessReport, type ReadinessSource } from "../../../lib/readiness.js";
import type { Routes } from "../../../lib/rpc.js";
import type { GatewayConfig } from "../config.js";
import { originAllowed } from "../config.js";
import type { Connection, SocketPort } from "../core/connection.js";
import { decodeClientFrame, type Decoded } from "../core/frames.js";
import type { GatewayCore } from "../core/gateway-core.js";
import { CloseCode, negotiate, tokenRefusal, type Encoding } from "../core/protocol.js";
import { mountConnect } from "./connect-adapter.js";

/** uWS can fall back to a slow JS implementation without saying so: refuse to run on it. */
export function assertNativeUws(): void {
  const require = createRequire(import.meta.url);
  const native = Object.keys(require.cache).some((k) => /uws_[a-z0-9_]+\.node$/.test(k));
  if (!native) throw new Error("uWebSockets.js native binding did not load (unsupported platform or Node ABI)");
}

/** A socket whose token the session service is checking (between the upgrade and Hello). */
interface PendingAuth {
  token: string;
  encoding: Encoding;
  /** Frames the client sent meanwhile, handed to the core once it is authenticated. */
  frames: Decoded[];
  /** Closed before the answer came. */
  closed: boolean;
}

interface UserData {
  /** Set once the token was accepted (the socket is then the core's). */
  conn: Connection | undefined;
  pending: PendingAuth | undefined;
}

/** Frames a client may send before its Hello (a resume and a few sends); more close it with 1008. */
const MAX_FRAMES_BEFORE_AUTH = 16;

/**
 * A uWS socket as the core sees it. One small object per connection with its methods on
 * the prototype: closures made per connection would each cost hundreds of bytes, which
 * idle connections pay for their whole life (tools/bench/idle-connections.ts).
 */
class UwsSocket implements SocketPort {
  constructor(
    private readonly ws: WebSocket<UserData>,
    private readonly maxBackpressure: number,
  ) {}

  send(data: Uint8Array | string, binary: boolean): boolean {
    // 2: dropped (already over the limit, e.g. after topic publishes); uWS shuts the socket down.
    const status = this.ws.send(data, binary);
    return status !== 2 && this.ws.getBufferedAmount() <= this.maxBackpressure;
  }

  cork(fn: () => void): void {
    this.ws.cork(fn);
  }

  close(code: number, reason: string): void {
    this.ws.end(code, reason);
  }

  subscribe(topic: string): void {
    this.ws.subscribe(topic);
  }

  unsubscribe(topic: string): void {
    this.ws.unsubscribe(topic);
  }

  publish(topic: string, data: Uint8Array | string, binary: boolean): void {
    this.ws.publish(topic, data, binary);
  }

  bufferedAmount(): number {
    return this.ws.getBufferedAmount();
  }
}

export interface PublicServer {
  readonly port: number;
  /** Stops accepting new connections and requests (open sockets stay). */
  stopListening(): void;
}

/**
 * The public port: WebSocket at `/ws`, the Connect API, `/healthz` (liveness: 200 while
 * the process runs, draining or not) and `/readyz` (readiness: 503 while draining or
 * while a backend of `readiness` fails; without one, only draining counts). The only
 * place (with connect-adapter.ts) that touches uWebSockets.js.
 */
export async function startPublicServer(
  cfg: GatewayConfig,
  core: GatewayCore,
  api: Routes,
  logger: Logger,
  readiness?: ReadinessSource,
): Promise<PublicServer> {
  assertNativeUws();
  const app: TemplatedApp = uWS.App();
  core.useTopicBus({
    publish: (topic, data, binary) => void app.publish(topic, data, binary),
    subscribers: (topic) => app.numSubscribers(topic),
  });

  app.ws<UserData>("/ws", {
    compression: uWS.DISABLED,
    maxPayloadLength: cfg.hardMaxFrameBytes,
    idleTimeout: cfg.idleTimeoutSeconds,
    sendPingsAutomatically: true,
    // Direct writes: the core checks the buffer after each send and closes a client over
    // the limit with 4008 (SocketPort.send). Topic publishes give no per-socket answer
    // (uWS writes them to subscribers later, in its loop), so uWS itself must act: with
    // closeOnBackpressureLimit a subscriber already over maxBackpressure is not skipped
    // (a silent gap in its stream) but has the frame dropped and its socket shut down; the
    // client sees an abnormal closure (1006), reconnects and resyncs from its cursors, and
    // our close handler unregisters it as for any close.
    maxBackpressure: cfg.maxBackpressureBytes,
    closeOnBackpressureLimit: 1,

    // The upgrade completes synchronously, in this handler, and the token is checked with
    // the session service after it (in `open` below): uWebSockets.js before
    // v20.79 can close a socket upgraded asynchronously inside res.cork() right after its
    // open handler (uNetworking/uWebSockets#1929: the poll is reallocated in place and
    // the cork's connection-close check reads the new WebSocket's memory as the old
    // response's state), and an upgrade outside a cork logs a warning per connection.
    upgrade(res, req, context) {
      const refuse = (status: string, message: string): void => {
        res.cork(() => res.writeStatus(status).writeHeader("content-type", "text/plain").end(message));
      };
      if (!core.accepting) return refuse("503 Service Unavailable", "gateway is draining: connect to another gateway");
      if (!originAllowed(req.getHeader("origin"), cfg.allowedOrigins)) return refuse("403 Forbidden", "origin not allowed");
      const offer = negotiate(req.getHeader("sec-websocket-protocol"), req.getHeader("authorization"));
      if (typeof offer === "string") return refuse("400 Bad Request", offer);
      if (!offer.token) {
        return refuse("401 Unauthorized", "missing access token: send Authorization: Bearer <token> or subprotocol bearer.<token>");
      }
      const refusal = tokenRefusal(offer.token, Date.now());
      if (refusal) return refuse("401 Unauthorized", `unauthenticated: ${refusal}`);
      const pending: PendingAuth = { token: offer.token, encoding: offer.encoding, frames: [], closed: false };
      res.upgrade<UserData>(
        { conn: undefined, pending },
        req.getHeader("sec-websocket-key"),
        offer.protocol,
        req.getHeader("sec-websocket-extensions"),
        context,
      );
    },

    open(ws: WebSocket<UserData>) {
      const ud = ws.getUserData();
      const pending = ud.pending!;
      core.authenticate(pending.token).then(
        (principal) => {
          if (pending.closed) return;
          const conn = core.newConnection(principal, pending.encoding);
          ud.conn = conn;
          ud.pending = undefined;
          core.open(conn, new UwsSocket(ws, cfg.maxBackpressureBytes));
          for (const decoded of pending.frames) if (!conn.closed) core.onFrame(conn, decoded);
        },
        (err: unknown) => {
          if (pending.closed) return;
          const unauthenticated = (err as { code?: number }).code === 16;
          if (!unauthenticated) logger.warn({ err }, "authentication failed after upgrade");
          ws.end(
            unauthenticated ? CloseCode.UNAUTHENTICATED : CloseCode.TRY_AGAIN_LATER,
            unauthenticated ? `unauthenticated: ${(err as { rawMessage?: string }).rawMessage ?? "bad token"}` : "try again later",
          );
        },
      );
    },

    drain(ws) {
      const { conn } = ws.getUserData();
      if (conn) core.drained(conn);
    },

    message(ws, message, isBinary) {
      const ud = ws.getUserData();
      const decoded = decodeClientFrame(message, isBinary, cfg.maxFrameBytes);
      if (ud.conn) {
        core.onFrame(ud.conn, decoded);
        return;
      }
      // Still authenticating: the frames wait (a resume, a few sends), within a bound.
      const pending = ud.pending!;
      if (pending.frames.length < MAX_FRAMES_BEFORE_AUTH) pending.frames.push(decoded);
      else ws.end(CloseCode.POLICY_VIOLATION, `more than ${MAX_FRAMES_BEFORE_AUTH} frames before Hello`);
    },

    close(ws) {
      const ud = ws.getUserData();
      if (ud.conn) core.close(ud.conn);
      else if (ud.pending) ud.pending.closed = true;
    },
  });

  app.get("/healthz", (res) => {
    // While draining, every response lets go of its keep-alive connection.
    res.cork(() => res.writeHeader("content-type", "text/plain").writeHeader("cache-control", "no-store").end("ok", !core.accepting));
  });

  const ready = async (): Promise<ReadinessReport> => {
    const r = readiness ? await readiness.report() : undefined;
    if (!core.accepting) return { ready: false, state: "draining", failing: ["draining"], checks: r?.checks ?? [], checkedAtMs: Date.now() };
    return r ?? { ready: true, state: "serving", failing: [], checks: [], checkedAtMs: Date.now() };
  };
  app.get("/readyz", (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    void ready().then((r) => {
      if (aborted) return;
      const { status, body } = readinessHttp(r);
      res.cork(() =>
        res
          .writeStatus(status === 200 ? "200 OK" : "503 Service Unavailable")
          .writeHeader("content-type", "application/json")
          .writeHeader("cache-control", "no-store")
          .end(body, !core.accepting),
      );
    });
  });

  mountConnect(app, api, {
    maxRequestBytes: cfg.maxRequestBytes,
    notFoundFallback: true,
    logger,
    // While draining, every response closes its keep-alive connection.
    closeConnections: () => !core.accepting,
  });

  const listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
    app.listen(cfg.host, cfg.publicPort, (s) => (s ? resolve(s) : reject(new Error(`cannot listen on ${cfg.host}:${cfg.publicPort}`))));
  });
  const port = uWS.us_socket_local_port(listenSocket);
  logger.info({ port, ws: `ws://${cfg.host}:${port}/ws` }, "public gateway port listening");
  let listening = true;
  return {
    port,
    stopListening() {
      if (!listening) return;
      listening = false;
      uWS.us_listen_socket_close(listenSocket);
    },
  };
}
