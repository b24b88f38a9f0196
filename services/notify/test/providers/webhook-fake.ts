import { EventEmitter, once } from "node:events";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import {
  verifyWebhookSignature,
  WEBHOOK_PUSH_ID_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  type WebhookPayload,
} from "../../src/providers/webhook.js";

/**
 * A webhook receiver on 127.0.0.1 (plain HTTP, port 0) that checks every request the way
 * a careful real receiver does, in this order:
 *   POST (405) to the configured path (404) with Content-Type application/json (415) and
 *   a Content-Length matching the body (400); the X-Parley-Signature verified over the raw
 *   body with the shared secret and a 300 s tolerance (401: wrong secret, tampered body,
 *   stale or future `t`, malformed header); the body is JSON with exactly the documented
 *   fields and types (400); X-Parley-Push-Id equals the body's id (400); sent_at is the
 *   signed instant `t` (400).
 * Then it plays the next scripted step if any (a status, closing the connection, never
 * answering, answering headers and never the body), else answers 200 for a registered
 * device and 410 Gone for an unknown one.
 */

export type FakeStep =
  | { kind: "respond"; status: number; headers?: Record<string, string>; body?: string }
  /** Destroy the connection without answering. */
  | { kind: "destroy" }
  /** Never answer (until the client gives up or the fake is closed). */
  | { kind: "stall" }
  /** Send 200 and headers, then never finish the body. */
  | { kind: "stall-body" };

export interface AcceptedPush {
  headers: http.IncomingHttpHeaders;
  rawBody: Buffer;
  payload: WebhookPayload;
  signedAt: number;
}

export interface Rejection {
  status: number;
  reason: string;
}

export interface FakeWebhookOptions {
  secret: string;
  /** Device ids the receiver knows; others get 410 Gone. */
  devices?: Iterable<string>;
  path?: string;
  /** Receiver clock, Unix seconds. */
  nowSeconds?: () => number;
}

const FIELDS = [
  "app_id",
  "badge",
  "body",
  "collapse_key",
  "data",
  "device",
  "id",
  "platform",
  "sent_at",
  "title",
  "ttl_seconds",
].join(",");

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The body's problem, or undefined when it has exactly the documented shape. */
function shapeError(v: unknown): string | undefined {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return "body is not an object";
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort().join(",");
  if (keys !== FIELDS) return `fields are ${keys}, want ${FIELDS}`;
  if (typeof o.id !== "string" || !UUID_RE.test(o.id)) return "id: not a uuid";
  if (o.platform !== "webhook") return "platform: not webhook";
  if (typeof o.device !== "string" || o.device === "") return "device: not a non-empty string";
  for (const k of ["app_id", "title", "body", "collapse_key", "sent_at"]) {
    if (typeof o[k] !== "string") return `${k}: not a string`;
  }
  if (o.badge !== null && !(Number.isInteger(o.badge) && (o.badge as number) >= 0)) return "badge: not null or a count";
  if (!(Number.isInteger(o.ttl_seconds) && (o.ttl_seconds as number) >= 0)) return "ttl_seconds: not a whole number";
  const data = o.data;
  if (typeof data !== "object" || data === null || Array.isArray(data)) return "data: not an object";
  for (const [k, val] of Object.entries(data)) if (typeof val !== "string") return `data.${k}: not a string`;
  return undefined;
}

export class FakeWebhookReceiver {
  readonly accepted: AcceptedPush[] = [];
  readonly rejected: Rejection[] = [];
  readonly devices: Set<string>;
  /** TCP connections accepted so far, and currently open. */
  connections = 0;
  openConnections = 0;
  /** Emits "request" once a request body has been read, "connection-closed" per closed socket. */
  readonly events = new EventEmitter();
  private readonly steps: FakeStep[] = [];

  private constructor(
    private readonly server: http.Server,
    private readonly options: FakeWebhookOptions,
    readonly url: string,
  ) {
    this.devices = new Set(options.devices ?? []);
  }

  static async start(options: FakeWebhookOptions): Promise<FakeWebhookReceiver> {
    const server = http.createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    const fake = new FakeWebhookReceiver(server, options, `http://127.0.0.1:${port}${options.path ?? "/parley/push"}`);
    server.on("connection", (socket) => {
      fake.connections++;
      fake.openConnections++;
      socket.on("close", () => {
        fake.openConnections--;
        fake.events.emit("connection-closed");
      });
    });
    server.on("request", (req, res) => void fake.handle(req, res));
    return fake;
  }

  /** Queue steps for the next requests that pass verification. */
  script(...steps: FakeStep[]): void {
    this.steps.push(...steps);
  }

  /** Forget what was received and scripted (connections stay counted). */
  reset(): void {
    this.accepted.length = 0;
    this.rejected.length = 0;
    this.steps.length = 0;
  }

  private reject(res: http.ServerResponse, status: number, reason: string): void {
    this.rejected.push({ status, reason });
    res.writeHead(status, { "content-type": "text/plain" }).end(reason);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    try {
      for await (const c of req as AsyncIterable<Buffer>) chunks.push(c);
    } catch {
      return; // the client went away mid-body
    }
    const raw = Buffer.concat(chunks);
    this.events.emit("request");
    const path = this.options.path ?? "/parley/push";
    if (req.method !== "POST") return this.reject(res, 405, "method not allowed");
    if (req.url !== path) return this.reject(res, 404, `no route ${req.url}`);
    if (req.headers["content-type"] !== "application/json") return this.reject(res, 415, "content-type must be application/json");
    if (req.headers["content-length"] !== String(raw.length)) return this.reject(res, 400, "content-length does not match the body");
    const sig = req.headers[WEBHOOK_SIGNATURE_HEADER];
    const nowSeconds = this.options.nowSeconds?.() ?? Math.floor(Date.now() / 1000);
    const v = verifyWebhookSignature(this.options.secret, typeof sig === "string" ? sig : undefined, raw, nowSeconds);
    if (!v.ok) return this.reject(res, 401, v.reason);
    let payload: unknown;
    try {
      payload = JSON.parse(raw.toString("utf8"));
    } catch {
      return this.reject(res, 400, "body is not JSON");
    }
    const problem = shapeError(payload);
    if (problem) return this.reject(res, 400, problem);
    const p = payload as WebhookPayload;
    if (req.headers[WEBHOOK_PUSH_ID_HEADER] !== p.id) return this.reject(res, 400, "x-parley-push-id does not match id");
    if (Math.floor(Date.parse(p.sent_at) / 1000) !== v.timestampSeconds) return this.reject(res, 400, "sent_at is not the signed t");

    this.accepted.push({ headers: req.headers, rawBody: raw, payload: p, signedAt: v.timestampSeconds });
    const step = this.steps.shift();
    if (step === undefined) {
      if (this.devices.has(p.device)) res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
      else res.writeHead(410, { "content-type": "text/plain" }).end("unknown device");
      return;
    }
    switch (step.kind) {
      case "respond":
        res.writeHead(step.status, step.headers).end(step.body ?? "");
        return;
      case "destroy":
        req.socket.destroy();
        return;
      case "stall":
        return;
      case "stall-body":
        res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
        res.write('{"ok":');
        return;
    }
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((e) => (e ? reject(e) : resolve())));
  }
}
