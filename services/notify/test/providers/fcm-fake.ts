/**
 * A local stand-in for Google's OAuth2 token endpoint and the FCM HTTP v1 send API, checking
 * what they check: the jwt-bearer grant (form encoding, RS256 signature by the service
 * account's key, iss/aud/scope/iat/exp, at most one hour, kid), the Bearer token on each send
 * (issued here, unexpired, not revoked, with the firebase.messaging scope), the project in the
 * path, and the message (strict field names as protobuf JSON parsing does, exactly one target,
 * string-only data without reserved keys, ttl as a duration, APNs header rules, 4 KB limit).
 * Errors come back in the v1 format (`error.details[]` with FcmError / BadRequest).
 *
 * Plain HTTP/1.1 on 127.0.0.1: the sender's endpoint and token_uri are configurable, and it
 * allows http only to loopback hosts.
 */
import { randomBytes, type KeyObject } from "node:crypto";
import { EventEmitter } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { decodeProtectedHeader, jwtVerify } from "jose";

export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";

/** What the fake does with the next request of a kind, instead of answering normally. */
export type Scripted =
  | { kind: "respond"; status: number; body?: unknown; headers?: Record<string, string> }
  /** Close the connection without an answer. */
  | { kind: "destroy" }
  /** Never answer (until the client gives up or the fake closes); emits "hang". */
  | { kind: "hang" };

export interface FakeFcmOptions {
  projectId: string;
  clientEmail: string;
  /** The service account's public key: assertions must verify with it. */
  publicKey: KeyObject;
  /** When set, assertions must carry it as `kid`. */
  privateKeyId?: string;
  /** The fake's clock (ms); share it with the sender to move time. */
  now?: () => number;
  /** `expires_in` of issued access tokens, seconds. */
  tokenLifetimeS?: number;
}

export interface AcceptedSend {
  message: Record<string, unknown>;
  name: string;
  accessToken: string;
  headers: IncomingMessage["headers"];
}

interface IssuedToken {
  expiresAtMs: number;
  scopes: string[];
}

export class FakeFcm {
  readonly events = new EventEmitter();
  /** Registration tokens of app instances that exist; others answer UNREGISTERED. */
  readonly registered = new Set<string>();
  readonly sendScript: Scripted[] = [];
  readonly tokenScript: Scripted[] = [];
  /** Every send and token request that reached the fake. */
  sendRequests = 0;
  tokenRequests = 0;
  readonly accepted: AcceptedSend[] = [];
  /** Answers other than 200 to sends: status and body. */
  readonly rejectedSends: Array<{ status: number; body: unknown }> = [];
  readonly rejectedAssertions: string[] = [];
  /** Verified assertions: protected header and claims. */
  readonly assertions: Array<{ header: Record<string, unknown>; claims: Record<string, unknown> }> = [];
  readonly #issued = new Map<string, IssuedToken>();
  readonly #opts: FakeFcmOptions;
  readonly #now: () => number;
  readonly #server: Server;
  #base = "";

  private constructor(opts: FakeFcmOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) json(res, 500, { error: { code: 500, message: String(e), status: "INTERNAL" } });
      });
    });
  }

  static async start(opts: FakeFcmOptions): Promise<FakeFcm> {
    const fake = new FakeFcm(opts);
    await new Promise<void>((resolve, reject) => {
      fake.#server.once("error", reject);
      fake.#server.listen(0, "127.0.0.1", () => resolve());
    });
    fake.#base = `http://127.0.0.1:${(fake.#server.address() as AddressInfo).port}`;
    return fake;
  }

  /** PARLEY_FCM_ENDPOINT for the sender. */
  get endpoint(): string {
    return this.#base;
  }

  /** The token_uri to put in the service account. */
  get tokenUri(): string {
    return `${this.#base}/token`;
  }

  /** Access tokens issued and still known (not revoked). */
  get liveTokens(): number {
    return this.#issued.size;
  }

  /** Revoke every issued access token: the next send with one gets 401. */
  revokeTokens(): void {
    this.#issued.clear();
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const url = new URL(req.url ?? "/", this.#base);
    if (url.pathname === "/token") return this.#token(req, res, body);
    const m = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(url.pathname);
    if (m) return this.#send(req, res, body, decodeURIComponent(m[1]!));
    json(res, 404, { error: { code: 404, message: "Not Found", status: "NOT_FOUND" } });
  }

  /** Returns true when a scripted behaviour answered (or swallowed) the request. */
  #scripted(script: Scripted[], res: ServerResponse, kind: string): boolean {
    const next = script.shift();
    if (!next) return false;
    if (next.kind === "destroy") {
      res.socket?.destroy();
    } else if (next.kind === "hang") {
      this.events.emit("hang", kind);
    } else {
      json(res, next.status, next.body ?? {}, next.headers);
    }
    return true;
  }

  // --- OAuth2 token endpoint (RFC 7523 jwt-bearer), as oauth2.googleapis.com/token answers ---

  async #token(req: IncomingMessage, res: ServerResponse, body: string): Promise<void> {
    this.tokenRequests++;
    const oauthError = (status: number, error: string, description: string) => {
      this.rejectedAssertions.push(`${error}: ${description}`);
      json(res, status, { error, error_description: description });
    };
    if (req.method !== "POST") return oauthError(405, "invalid_request", "POST only");
    if (!(req.headers["content-type"] ?? "").startsWith("application/x-www-form-urlencoded")) {
      return oauthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded");
    }
    const form = new URLSearchParams(body);
    if (form.get("grant_type") !== JWT_BEARER_GRANT) {
      return oauthError(400, "unsupported_grant_type", `Invalid grant_type: ${form.get("grant_type") ?? ""}`);
    }
    const assertion = form.get("assertion");
    if (!assertion) return oauthError(400, "invalid_request", "Missing required parameter: assertion");
    const now = this.#now();
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(assertion) as Record<string, unknown>;
      if (this.#opts.privateKeyId !== undefined && header.kid !== this.#opts.privateKeyId) {
        throw new Error(`unknown kid ${String(header.kid)}`);
      }
      const verified = await jwtVerify(assertion, this.#opts.publicKey, {
        algorithms: ["RS256"],
        issuer: this.#opts.clientEmail,
        audience: this.tokenUri,
        requiredClaims: ["iat", "exp"],
        currentDate: new Date(now),
      });
      claims = verified.payload as Record<string, unknown>;
    } catch (e) {
      return oauthError(400, "invalid_grant", `Invalid JWT Signature. (${(e as Error).message})`);
    }
    const iat = claims.iat as number;
    const exp = claims.exp as number;
    if (exp - iat > 3600 || iat > now / 1000 + 60) {
      return oauthError(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    if (typeof claims.scope !== "string" || claims.scope.trim() === "") {
      return oauthError(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.");
    }
    this.assertions.push({ header, claims });
    if (this.#scripted(this.tokenScript, res, "token")) return;
    const lifetime = this.#opts.tokenLifetimeS ?? 3599;
    const accessToken = `ya29.fake-${randomBytes(24).toString("base64url")}`;
    this.#issued.set(accessToken, { expiresAtMs: now + lifetime * 1000, scopes: claims.scope.split(" ") });
    json(res, 200, { access_token: accessToken, expires_in: lifetime, token_type: "Bearer" });
  }

  // --- FCM HTTP v1 projects.messages.send ---

  async #send(req: IncomingMessage, res: ServerResponse, body: string, projectId: string): Promise<void> {
    this.sendRequests++;
    const reject = (status: number, error: Record<string, unknown>, headers?: Record<string, string>) => {
      const payload = { error: { code: status, ...error } };
      this.rejectedSends.push({ status, body: payload });
      json(res, status, payload, headers);
    };
    if (req.method !== "POST") return reject(405, { message: "Method not allowed", status: "INVALID_ARGUMENT" });

    const auth = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "");
    const issued = auth ? this.#issued.get(auth[1]!) : undefined;
    if (!auth || !issued || issued.expiresAtMs <= this.#now()) {
      return reject(401, {
        message:
          "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        status: "UNAUTHENTICATED",
      });
    }
    if (!issued.scopes.includes(FCM_SCOPE)) {
      return reject(403, { message: "Request had insufficient authentication scopes.", status: "PERMISSION_DENIED" });
    }
    if (projectId !== this.#opts.projectId) {
      return reject(403, {
        message: `Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/${projectId}' (or it may not exist).`,
        status: "PERMISSION_DENIED",
      });
    }
    if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
      return reject(400, { message: "Invalid JSON payload received.", status: "INVALID_ARGUMENT" });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      return reject(400, { message: "Invalid JSON payload received. Unexpected token.", status: "INVALID_ARGUMENT" });
    }

    const violation = validateRequest(parsed);
    if (violation) {
      if (violation.field === "") return reject(400, { message: violation.description, status: "INVALID_ARGUMENT" });
      return reject(400, {
        message: violation.description,
        status: "INVALID_ARGUMENT",
        details: [{ "@type": BAD_REQUEST, fieldViolations: [violation] }],
      });
    }
    const message = (parsed as { message: Record<string, unknown> }).message;

    if (this.#scripted(this.sendScript, res, "send")) return;

    const token = message.token;
    if (typeof token === "string") {
      if (!/^[A-Za-z0-9_:-]{20,}$/.test(token)) {
        return reject(400, {
          message: "The registration token is not a valid FCM registration token",
          status: "INVALID_ARGUMENT",
          details: [
            { "@type": FCM_ERROR, errorCode: "INVALID_ARGUMENT" },
            { "@type": BAD_REQUEST, fieldViolations: [{ field: "message.token", description: "Invalid registration token" }] },
          ],
        });
      }
      if (!this.registered.has(token)) {
        return reject(404, {
          message: "Requested entity was not found.",
          status: "NOT_FOUND",
          details: [{ "@type": FCM_ERROR, errorCode: "UNREGISTERED" }],
        });
      }
    }
    const name = `projects/${projectId}/messages/0:${randomBytes(12).toString("hex")}`;
    this.accepted.push({ message, name, accessToken: auth[1]!, headers: req.headers });
    json(res, 200, { name });
  }
}

// --- message validation, field names as protobuf JSON accepts them (proto name or lowerCamel) ---

interface Violation {
  field: string;
  description: string;
}

type Check = (value: unknown, path: string) => Violation | undefined;

const str: Check = (v, path) =>
  typeof v === "string" ? undefined : { field: path, description: `Invalid value at '${path}' (TYPE_STRING), ${JSON.stringify(v)}` };
const bool: Check = (v, path) =>
  typeof v === "boolean" ? undefined : { field: path, description: `Invalid value at '${path}' (TYPE_BOOL), ${JSON.stringify(v)}` };
const int: Check = (v, path) =>
  Number.isInteger(v) || (typeof v === "string" && /^-?\d+$/.test(v))
    ? undefined
    : { field: path, description: `Invalid value at '${path}' (TYPE_INT32), ${JSON.stringify(v)}` };
const enumOf =
  (...values: string[]): Check =>
  (v, path) =>
    typeof v === "string" && values.includes(v.toUpperCase())
      ? undefined
      : { field: path, description: `Invalid value at '${path}', ${JSON.stringify(v)}` };
const duration: Check = (v, path) => {
  if (typeof v !== "string" || !/^\d+(\.\d{1,9})?s$/.test(v)) {
    return { field: path, description: `Invalid value at '${path}' (type.googleapis.com/google.protobuf.Duration), ${JSON.stringify(v)}` };
  }
  return Number.parseFloat(v) > 28 * 24 * 3600 ? { field: path, description: "TTL exceeds the 4 weeks maximum" } : undefined;
};
const stringMap: Check = (v, path) => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { field: path, description: `Invalid value at '${path}'` };
  let i = 0;
  for (const value of Object.values(v)) {
    if (typeof value !== "string") {
      return { field: `${path}[${i}].value`, description: `Invalid value at '${path}[${i}].value' (TYPE_STRING), ${JSON.stringify(value)}` };
    }
    i++;
  }
  return undefined;
};
const anyObject: Check = (v, path) =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? undefined : { field: path, description: `Invalid value at '${path}'` };

function object(fields: Record<string, Check>): Check {
  return (v, path) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return { field: path, description: `Invalid value at '${path}'` };
    for (const [key, value] of Object.entries(v)) {
      const check = fields[key] ?? fields[snake(key)];
      if (!check) {
        return { field: path, description: `Invalid JSON payload received. Unknown name "${key}" at '${path}': Cannot find field.` };
      }
      const bad = check(value, `${path}.${snake(key)}`);
      if (bad) return bad;
    }
    return undefined;
  };
}

function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

const notification = object({ title: str, body: str, image: str });
const androidNotification = object({
  title: str, body: str, icon: str, color: str, sound: str, tag: str, click_action: str, channel_id: str,
  notification_count: int, notification_priority: enumOf("PRIORITY_MIN", "PRIORITY_LOW", "PRIORITY_DEFAULT", "PRIORITY_HIGH", "PRIORITY_MAX"),
  visibility: enumOf("PRIVATE", "PUBLIC", "SECRET"), default_sound: bool, image: str,
});
const android = object({
  collapse_key: str, priority: enumOf("NORMAL", "HIGH"), ttl: duration, restricted_package_name: str,
  data: stringMap, notification: androidNotification, direct_boot_ok: bool, fcm_options: anyObject,
});
const apnsHeaders: Check = (v, path) => {
  const bad = stringMap(v, path);
  if (bad) return bad;
  const h = v as Record<string, string>;
  const collapseId = h["apns-collapse-id"];
  if (collapseId !== undefined && Buffer.byteLength(collapseId) > 64) {
    return { field: `${path}.apns-collapse-id`, description: "apns-collapse-id must not exceed 64 bytes" };
  }
  const expiration = h["apns-expiration"];
  if (expiration !== undefined && !/^\d+$/.test(expiration)) {
    return { field: `${path}.apns-expiration`, description: "apns-expiration must be a UNIX time in seconds" };
  }
  const priority = h["apns-priority"];
  if (priority !== undefined && !["1", "5", "10"].includes(priority)) {
    return { field: `${path}.apns-priority`, description: "apns-priority must be 1, 5 or 10" };
  }
  return undefined;
};
const apnsPayload: Check = (v, path) => {
  const bad = anyObject(v, path);
  if (bad) return bad;
  const aps = (v as { aps?: unknown }).aps;
  if (aps === undefined) return undefined;
  const badAps = anyObject(aps, `${path}.aps`);
  if (badAps) return badAps;
  const badge = (aps as { badge?: unknown }).badge;
  return badge === undefined || Number.isInteger(badge) ? undefined : { field: `${path}.aps.badge`, description: "badge must be an integer" };
};
const apns = object({ headers: apnsHeaders, payload: apnsPayload, fcm_options: anyObject, live_activity_token: str });
const message = object({
  name: str, token: str, topic: str, condition: str, data: stringMap, notification, android, apns,
  webpush: anyObject, fcm_options: anyObject,
});

const RESERVED_DATA_KEY = /^(from|notification|message_type|google.*|gcm.*)$/i;

/** The first thing FCM would refuse in a send request body, or undefined. */
export function validateRequest(body: unknown): Violation | undefined {
  const top = object({ message: anyObject, validate_only: bool })(body, "");
  if (top) return { ...top, field: top.field.replace(/^\./, "") };
  const m = (body as { message?: unknown }).message;
  if (m === undefined) return { field: "message", description: "Message must be set." };
  const bad = message(m, "message");
  if (bad) return bad;
  const msg = m as Record<string, unknown>;
  const targets = ["token", "topic", "condition"].filter((k) => msg[k] !== undefined && msg[k] !== "");
  if (targets.length !== 1) return { field: "message", description: "Recipient of the message is not set." };
  const data = (msg.data ?? {}) as Record<string, string>;
  const reserved = Object.keys(data).find((k) => RESERVED_DATA_KEY.test(k));
  if (reserved !== undefined) return { field: "message.data", description: `Invalid data payload key: ${reserved}` };
  // The documented limit: 4096 bytes of payload (data and notification, keys and values).
  const size = Buffer.byteLength(JSON.stringify(data)) + Buffer.byteLength(JSON.stringify(msg.notification ?? {}));
  if (size > 4096) return { field: "", description: "Request contains an invalid argument." };
  return undefined;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=UTF-8", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
