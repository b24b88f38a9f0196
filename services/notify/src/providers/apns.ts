/**
 * Apple Push Notification service over its real wire protocol: HTTP/2 (one long-lived
 * session, reopened when it closes or receives GOAWAY) with token-based auth, a JWT signed
 * ES256 with the team's .p8 key (header `alg`, `kid`; claims `iss` = team id, `iat`).
 * The JWT is reused for up to 50 minutes: APNs rejects tokens older than an hour and
 * refuses refreshes more often than every 20 minutes.
 *
 * Reference: developer.apple.com, "Sending notification requests to APNs",
 * "Establishing a token-based connection to APNs", "Handling notification responses from APNs".
 */
import http2 from "node:http2";
import { readFileSync } from "node:fs";
import { createHash, createPrivateKey, type KeyObject } from "node:crypto";
import { SignJWT } from "jose";
import { ConfigError, envString, type Env } from "../../../../lib/env.js";
import { retryAfterMs, type DeviceTarget, type Push, type PushSender, type SendOutcome } from "./push-sender.js";

export const APNS_PRODUCTION_ENDPOINT = "https://api.push.apple.com";
export const APNS_SANDBOX_ENDPOINT = "https://api.sandbox.push.apple.com";
/** APNs refuses payloads above 4 KB for regular (non-VoIP) notifications. */
export const APNS_MAX_PAYLOAD_BYTES = 4096;
export const APNS_MAX_COLLAPSE_ID_BYTES = 64;

export interface ApnsConfig {
  /** The signing key from the .p8 file (PKCS#8 PEM, P-256). */
  keyPem: string;
  /** The key's id (10 characters, shown next to the key in the developer account). */
  keyId: string;
  /** The team id (10 characters): the JWT issuer. */
  teamId: string;
  /** The topic (bundle id) used when a device has no app id. */
  defaultTopic?: string;
  /** The APNs origin: production, sandbox, or a test server. */
  endpoint: string;
  /** Extra CA certificates to trust (PEM), for test servers only. */
  caPem?: string;
}

/**
 * The APNs configuration from the environment, or undefined when APNs is not configured
 * (none of PARLEY_APNS_KEY, PARLEY_APNS_KEY_ID, PARLEY_APNS_TEAM_ID set).
 *
 * - PARLEY_APNS_KEY: the .p8 key, as a file path or inline PEM (`\n` escapes allowed)
 * - PARLEY_APNS_KEY_ID, PARLEY_APNS_TEAM_ID: 10 characters each
 * - PARLEY_APNS_TOPIC: default topic (bundle id), optional
 * - PARLEY_APNS_ENDPOINT: default https://api.push.apple.com (sandbox: https://api.sandbox.push.apple.com)
 * - PARLEY_APNS_CA: path to a PEM file of CA certificates to trust, tests only
 */
export function loadApnsConfig(env: Env): ApnsConfig | undefined {
  const rawKey = envString(env, "PARLEY_APNS_KEY", "");
  const keyId = envString(env, "PARLEY_APNS_KEY_ID", "");
  const teamId = envString(env, "PARLEY_APNS_TEAM_ID", "");
  if (rawKey === "" && keyId === "" && teamId === "") return undefined;
  for (const [name, value] of [["PARLEY_APNS_KEY", rawKey], ["PARLEY_APNS_KEY_ID", keyId], ["PARLEY_APNS_TEAM_ID", teamId]] as const) {
    if (value === "") throw new ConfigError(`${name}: required when APNs is configured`);
  }
  if (!/^[A-Z0-9]{10}$/.test(keyId)) throw new ConfigError(`PARLEY_APNS_KEY_ID: must be 10 upper-case letters or digits, got "${keyId}"`);
  if (!/^[A-Z0-9]{10}$/.test(teamId)) throw new ConfigError(`PARLEY_APNS_TEAM_ID: must be 10 upper-case letters or digits, got "${teamId}"`);

  const keyPem = rawKey.includes("-----BEGIN") ? rawKey.replace(/\\n/g, "\n") : readConfigFile("PARLEY_APNS_KEY", rawKey);
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new ConfigError(`PARLEY_APNS_KEY: not a readable private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new ConfigError("PARLEY_APNS_KEY: must be a P-256 (ES256) key, as in the .p8 file from Apple");
  }

  const topic = envString(env, "PARLEY_APNS_TOPIC", "");
  if (topic !== "" && !isHeaderToken(topic)) throw new ConfigError(`PARLEY_APNS_TOPIC: not a valid topic, got "${topic}"`);

  const endpoint = envString(env, "PARLEY_APNS_ENDPOINT", APNS_PRODUCTION_ENDPOINT);
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new ConfigError(`PARLEY_APNS_ENDPOINT: not a URL, got "${endpoint}"`);
  }
  if (url.protocol !== "https:" || url.pathname !== "/" || url.search !== "" || url.username !== "") {
    throw new ConfigError(`PARLEY_APNS_ENDPOINT: must be an https origin such as ${APNS_PRODUCTION_ENDPOINT}, got "${endpoint}"`);
  }

  const caPath = envString(env, "PARLEY_APNS_CA", "");
  const caPem = caPath === "" ? undefined : readConfigFile("PARLEY_APNS_CA", caPath);
  if (caPem !== undefined && !caPem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new ConfigError(`PARLEY_APNS_CA: ${caPath} holds no PEM certificate`);
  }

  return { keyPem, keyId, teamId, endpoint: url.origin, ...(topic ? { defaultTopic: topic } : {}), ...(caPem ? { caPem } : {}) };
}

function readConfigFile(name: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`${name}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

function isHeaderToken(value: string): boolean {
  return /^[\x21-\x7e]+$/.test(value);
}

export interface ApnsSenderOptions {
  /** Clock in milliseconds (tests move it). Default Date.now. */
  now?: () => number;
  /** How long one request may take before it counts as a network failure. Default 10 s. */
  timeoutMs?: number;
  /** How long a provider token is reused. Default 50 minutes (APNs: 20 to 60). */
  tokenMaxAgeMs?: number;
}

/** How one HTTP/2 exchange ended, before it is classified. */
type Exchange =
  | { kind: "answer"; status: number; reason?: string; apnsId?: string; retryAfter?: string }
  /** `stale`: a reused connection died before any answer (APNs closes idle connections). */
  | { kind: "network"; reason: string; stale?: boolean };

interface CachedToken {
  issuedAtMs: number;
  jwt: Promise<string>;
  /** Set once signed: lets a rejected token be told apart from a newer one. */
  value?: string;
}

export class ApnsSender implements PushSender {
  readonly platform = "apns" as const;
  readonly #cfg: ApnsConfig;
  readonly #key: KeyObject;
  readonly #now: () => number;
  readonly #timeoutMs: number;
  readonly #tokenMaxAgeMs: number;
  #session: http2.ClientHttp2Session | undefined;
  #token: CachedToken | undefined;
  #closed = false;

  constructor(cfg: ApnsConfig, opts: ApnsSenderOptions = {}) {
    this.#cfg = cfg;
    this.#key = createPrivateKey(cfg.keyPem);
    this.#now = opts.now ?? Date.now;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    this.#tokenMaxAgeMs = opts.tokenMaxAgeMs ?? 50 * 60_000;
  }

  async send(target: DeviceTarget, push: Push, signal?: AbortSignal): Promise<SendOutcome> {
    if (this.#closed) return { status: "retry", reason: "APNs sender is closed" };
    if (target.platform !== "apns") return { status: "failed", reason: `not an APNs device (${target.platform})` };
    // Device tokens are hex; anything else cannot be one (and must not reach the path).
    if (!/^[0-9a-fA-F]{16,400}$/.test(target.token)) return { status: "invalid-token", reason: "BadDeviceToken: not a hex device token" };
    const topic = target.appId || this.#cfg.defaultTopic;
    if (!topic) return { status: "failed", reason: "MissingTopic: the device has no app id and PARLEY_APNS_TOPIC is not set" };
    if (!isHeaderToken(topic)) return { status: "failed", reason: `BadTopic: "${topic}"` };
    const body = encodePayload(push);
    if (body === undefined) return { status: "failed", reason: `PayloadTooLarge: the data alone exceeds ${APNS_MAX_PAYLOAD_BYTES} bytes` };
    if (signal?.aborted) return { status: "retry", reason: "aborted before sending" };

    const nowSeconds = Math.floor(this.#now() / 1000);
    const headers: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": `/3/device/${target.token}`,
      "apns-topic": topic,
      "apns-push-type": "alert",
      "apns-priority": "10",
      // 0 means "deliver once, do not store"; otherwise the UNIX time after which APNs gives up.
      "apns-expiration": String(push.ttlSeconds > 0 ? nowSeconds + Math.floor(push.ttlSeconds) : 0),
      "content-type": "application/json",
      "content-length": body.length,
    };
    if (push.collapseKey) headers["apns-collapse-id"] = collapseId(push.collapseKey);
    // APNs takes a canonical UUID as the notification's id (and echoes it back).
    if (push.pushId !== undefined && /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(push.pushId)) {
      headers["apns-id"] = push.pushId;
    }

    let jwt: string;
    try {
      jwt = await this.#providerToken();
    } catch (err) {
      return { status: "failed", reason: `cannot sign the provider token: ${(err as Error).message}` };
    }
    let res = await this.#post(headers, jwt, body, signal);
    if (res.kind === "network" && res.stale && !signal?.aborted) {
      // The connection had died unnoticed (idle close, GOAWAY): once more on a new one. If
      // APNs did get the first copy, the collapse id makes the second replace it.
      res = await this.#post(headers, jwt, body, signal);
    }
    if (res.kind === "answer" && res.status === 403 && res.reason === "ExpiredProviderToken" && !signal?.aborted) {
      // APNs thinks the token is over an hour old: sign a new one (once for all concurrent
      // senders holding the same rejected token) and try this push once more.
      try {
        jwt = await this.#providerToken(jwt);
      } catch (err) {
        return { status: "failed", reason: `cannot sign the provider token: ${(err as Error).message}` };
      }
      res = await this.#post(headers, jwt, body, signal);
    }
    return classify(res, this.#now());
  }

  async close(): Promise<void> {
    this.#closed = true;
    const session = this.#session;
    this.#session = undefined;
    if (session && !session.closed && !session.destroyed) {
      await new Promise<void>((resolve) => session.close(() => resolve()));
    }
  }

  /** The cached provider token, or a new one when it is too old or `rejected` by APNs. */
  #providerToken(rejected?: string): Promise<string> {
    const now = this.#now();
    const cached = this.#token;
    if (
      cached &&
      now - cached.issuedAtMs < this.#tokenMaxAgeMs &&
      now - cached.issuedAtMs > -60_000 && // the clock went back: sign again
      (rejected === undefined || cached.value !== rejected)
    ) {
      return cached.jwt;
    }
    const entry: CachedToken = {
      issuedAtMs: now,
      jwt: new SignJWT({ iss: this.#cfg.teamId, iat: Math.floor(now / 1000) })
        .setProtectedHeader({ alg: "ES256", kid: this.#cfg.keyId })
        .sign(this.#key),
    };
    entry.jwt.then(
      (value) => void (entry.value = value),
      () => void (this.#token === entry && (this.#token = undefined)),
    );
    this.#token = entry;
    return entry.jwt;
  }

  /** The open HTTP/2 session, or a new one when there is none or it is going away. */
  #connect(): http2.ClientHttp2Session {
    const current = this.#session;
    if (current && !current.closed && !current.destroyed) return current;
    const session = http2.connect(this.#cfg.endpoint, this.#cfg.caPem ? { ca: this.#cfg.caPem } : {});
    const forget = () => {
      if (this.#session === session) this.#session = undefined;
    };
    // Streams already sent on a session that errors or goes away fail or finish on their
    // own; new sends open a new session.
    session.on("error", forget);
    session.on("goaway", forget);
    session.on("close", forget);
    this.#session = session;
    return session;
  }

  #post(headers: http2.OutgoingHttpHeaders, jwt: string, body: Buffer, signal?: AbortSignal): Promise<Exchange> {
    return new Promise<Exchange>((resolve) => {
      let stream: http2.ClientHttp2Stream;
      let session: http2.ClientHttp2Session;
      const reused = this.#session !== undefined && !this.#session.closed && !this.#session.destroyed;
      try {
        session = this.#connect();
        try {
          stream = session.request({ ...headers, authorization: `bearer ${jwt}` });
        } catch (err) {
          session.destroy();
          throw err;
        }
      } catch (err) {
        resolve({ kind: "network", reason: (err as Error).message });
        return;
      }

      let settled = false;
      const finish = (exchange: Exchange) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        // A stream with no answer yet is cancelled (timeout, abort); an answered one is done.
        if (exchange.kind === "network" && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        resolve(exchange);
      };
      const timer = setTimeout(() => finish({ kind: "network", reason: `no answer within ${this.#timeoutMs} ms` }), this.#timeoutMs);
      const onAbort = () => finish({ kind: "network", reason: "aborted" });
      signal?.addEventListener("abort", onAbort, { once: true });

      let status: number | undefined;
      let apnsId: string | undefined;
      let retryAfter: string | undefined;
      const chunks: Buffer[] = [];
      stream.on("response", (h) => {
        status = Number(h[":status"]);
        apnsId = headerValue(h["apns-id"]);
        retryAfter = headerValue(h["retry-after"]);
      });
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      const lost = (reason: string) => {
        const dead = session.closed || session.destroyed;
        if (dead && this.#session === session) this.#session = undefined;
        finish({ kind: "network", reason, stale: reused && dead && status === undefined });
      };
      stream.on("end", () => {
        if (status === undefined) return lost("stream ended without an answer");
        finish({ kind: "answer", status, apnsId, retryAfter, reason: readReason(Buffer.concat(chunks)) });
      });
      stream.on("error", (err) => lost(err.message));
      stream.on("close", () => lost(`stream closed before an answer (code ${stream.rstCode})`));
      stream.end(body);
    });
  }
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function readReason(body: Buffer): string | undefined {
  if (body.length === 0) return undefined;
  try {
    const parsed: unknown = JSON.parse(body.toString("utf8"));
    if (parsed && typeof parsed === "object" && typeof (parsed as { reason?: unknown }).reason === "string") {
      return (parsed as { reason: string }).reason;
    }
  } catch {
    // not JSON: fall through
  }
  return undefined;
}

/** An APNs answer as the pipeline needs it. */
function classify(res: Exchange, nowMs: number): SendOutcome {
  if (res.kind === "network") return { status: "retry", reason: `network: ${res.reason}` };
  const reason = res.reason ?? `HTTP ${res.status}`;
  const retry = (): SendOutcome => {
    const after = retryAfterMs(res.retryAfter, nowMs);
    return after === undefined ? { status: "retry", reason } : { status: "retry", reason, retryAfterMs: after };
  };
  switch (res.status) {
    case 200:
      return res.apnsId ? { status: "sent", providerId: res.apnsId } : { status: "sent" };
    case 410: // Unregistered, ExpiredToken: the app is gone from the device
      return { status: "invalid-token", reason };
    case 400:
      return reason === "BadDeviceToken" || reason === "DeviceTokenNotForTopic" ? { status: "invalid-token", reason } : { status: "failed", reason };
    case 403:
      // ExpiredProviderToken here means it came back after one re-signed retry: a clock
      // problem that may pass. InvalidProviderToken, BadCertificate, Forbidden: credentials.
      return reason === "ExpiredProviderToken" ? retry() : { status: "failed", reason };
    case 429: // TooManyRequests (to one device), TooManyProviderTokenUpdates
      return retry();
  }
  return res.status >= 500 ? retry() : { status: "failed", reason };
}

/** The collapse key as APNs takes it: ≤ 64 bytes of visible ASCII, else a stable hash of it. */
export function collapseId(key: string): string {
  if (Buffer.byteLength(key) <= APNS_MAX_COLLAPSE_ID_BYTES && /^[\x20-\x7e]*$/.test(key)) return key;
  return createHash("sha256").update(key).digest("base64url");
}

/** The JSON body APNs gets: the alert in `aps`, the app's data beside it. */
export function apnsPayload(push: Push, body = push.body): Record<string, unknown> {
  const aps: Record<string, unknown> = { alert: { title: push.title, body } };
  if (push.badge !== undefined) aps.badge = push.badge;
  aps.sound = "default";
  aps["mutable-content"] = 1;
  return { ...push.data, aps };
}

/**
 * The body as bytes, shortening the alert text (with an ellipsis) to the longest prefix
 * that fits the 4 KB limit; undefined when even an empty alert body does not fit.
 */
function encodePayload(push: Push): Buffer | undefined {
  const encode = (text: string) => Buffer.from(JSON.stringify(apnsPayload(push, text)));
  const whole = encode(push.body);
  if (whole.length <= APNS_MAX_PAYLOAD_BYTES) return whole;
  const chars = Array.from(push.body);
  // JSON escaping makes the size per character uneven: search the prefix length.
  let lo = 0; // fits (checked below)
  let hi = chars.length; // does not fit
  if (encode("").length > APNS_MAX_PAYLOAD_BYTES) return undefined;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (encode(`${chars.slice(0, mid).join("")}…`).length <= APNS_MAX_PAYLOAD_BYTES) lo = mid;
    else hi = mid;
  }
  return encode(lo === 0 ? "" : `${chars.slice(0, lo).join("")}…`);
}
