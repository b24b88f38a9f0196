import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import { ConfigError, envInt, type Env } from "../../../../lib/env.js";
import { UuidV7Generator } from "../../../../lib/ids.js";
import { retryAfterMs, type DeviceTarget, type Push, type PushSender, type SendOutcome } from "./push-sender.js";

/**
 * The signed webhook provider: each push is one HTTP POST of a JSON document to a
 * configured URL, signed with HMAC-SHA256 over a shared secret (the scheme of Stripe's
 * webhooks), so the receiving system can forward it to its own devices.
 *
 * Request:
 *   POST <PARLEY_WEBHOOK_URL>
 *   Content-Type: application/json
 *   X-Parley-Push-Id: <id>
 *   X-Parley-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 *   {"id": "<the push id>", "platform": "webhook", "device": "<target.token>",
 *    "app_id": "...", "title": "...", "body": "...", "collapse_key": "...",
 *    "badge": <number or null>, "data": {"k": "v", ...}, "ttl_seconds": <int>,
 *    "sent_at": "<ISO 8601, the same instant as t>"}
 *
 * Answers: 2xx = sent; 410 Gone = the device is unknown to the receiver (invalid-token,
 * the device is removed); 408, 429 and 5xx = retry (after Retry-After when given); any
 * other status (3xx is not followed, 4xx) = failed; no answer within the timeout, a
 * reset connection or an aborted signal = retry. Redelivery is possible (the pipeline
 * retries after timeouts and crashes), so receivers should deduplicate on (id, device):
 * `id` is the push id, the same on every resend of one push (a new UUIDv7 per send when
 * the push has none).
 */

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Signature header (Node lower-cases incoming header names). */
export const WEBHOOK_SIGNATURE_HEADER = "x-parley-signature";
export const WEBHOOK_PUSH_ID_HEADER = "x-parley-push-id";
/** The smallest secret accepted, in bytes (the HMAC-SHA256 block is 64; 32 is its output size). */
export const WEBHOOK_MIN_SECRET_BYTES = 32;
export const WEBHOOK_DEFAULT_TIMEOUT_MS = 10_000;

export interface WebhookConfig {
  /** http: or https: URL the pushes are POSTed to. */
  url: string;
  /** Shared secret; the HMAC key is its UTF-8 bytes. */
  secret: string;
  /** Time allowed for one request, connect to last byte of the answer. */
  timeoutMs: number;
}

/**
 * The webhook provider's configuration, or undefined when PARLEY_WEBHOOK_URL and
 * PARLEY_WEBHOOK_SECRET are both unset (the provider is off). Throws ConfigError when it
 * is half configured or a value is bad.
 *
 * - PARLEY_WEBHOOK_URL: absolute http: or https: URL.
 * - PARLEY_WEBHOOK_SECRET: at least 32 bytes (UTF-8), no surrounding whitespace (a
 *   receiver given the same string must compute the same key).
 * - PARLEY_WEBHOOK_TIMEOUT_MS: 100..300000, default 10000.
 */
export function loadWebhookConfig(env: Env): WebhookConfig | undefined {
  const rawUrl = env.PARLEY_WEBHOOK_URL?.trim() ?? "";
  const secret = env.PARLEY_WEBHOOK_SECRET ?? "";
  if (rawUrl === "" && secret === "") return undefined;
  if (rawUrl === "") throw new ConfigError("PARLEY_WEBHOOK_URL: required when PARLEY_WEBHOOK_SECRET is set");
  if (secret === "") throw new ConfigError("PARLEY_WEBHOOK_SECRET: required when PARLEY_WEBHOOK_URL is set");
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new ConfigError(`PARLEY_WEBHOOK_URL: not a URL: "${rawUrl}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(`PARLEY_WEBHOOK_URL: must be http: or https:, got "${url.protocol}"`);
  }
  if (secret !== secret.trim()) {
    throw new ConfigError("PARLEY_WEBHOOK_SECRET: must not start or end with whitespace");
  }
  const bytes = Buffer.byteLength(secret, "utf8");
  if (bytes < WEBHOOK_MIN_SECRET_BYTES) {
    throw new ConfigError(`PARLEY_WEBHOOK_SECRET: must be at least ${WEBHOOK_MIN_SECRET_BYTES} bytes, got ${bytes}`);
  }
  return {
    url: url.toString(),
    secret,
    timeoutMs: envInt(env, "PARLEY_WEBHOOK_TIMEOUT_MS", WEBHOOK_DEFAULT_TIMEOUT_MS, 100, 300_000),
  };
}

function hmacSha256(secret: string | Uint8Array | KeyObject, timestamp: string, rawBody: string | Uint8Array): Buffer {
  return createHmac("sha256", secret).update(`${timestamp}.`).update(rawBody).digest();
}

/** The X-Parley-Signature value for a body sent at `timestampSeconds`. */
export function signWebhook(secret: string | Uint8Array | KeyObject, timestampSeconds: number, rawBody: string | Uint8Array): string {
  const t = String(Math.floor(timestampSeconds));
  return `t=${t},v1=${hmacSha256(secret, t, rawBody).toString("hex")}`;
}

export type WebhookVerification =
  | { ok: true; timestampSeconds: number }
  | { ok: false; reason: "malformed header" | "signature mismatch" | "timestamp outside tolerance" };

/**
 * Verifies a webhook request as a receiver must, before trusting or parsing it.
 *
 * - `secret`: the shared secret (the same string as PARLEY_WEBHOOK_SECRET).
 * - `header`: the X-Parley-Signature value, `t=<unix seconds>,v1=<hex>`; several `v1`
 *   entries are allowed (any one matching is enough, for secret rotation) and other
 *   schemes (`v0=...`) are ignored.
 * - `rawBody`: the body exactly as received (bytes, or the undecoded string) — not
 *   re-serialized JSON, which would change the bytes.
 * - `nowSeconds`: the receiver's clock, Unix seconds.
 * - `toleranceSeconds`: how far `t` may be from now either way (default 5 minutes), which
 *   bounds replay of a captured request.
 *
 * The HMAC comparison is constant-time (crypto.timingSafeEqual). The signature is checked
 * before the timestamp, so "timestamp outside tolerance" means a genuine but old (or
 * future) request. Returns the signed timestamp on success.
 */
export function verifyWebhookSignature(
  secret: string | Uint8Array,
  header: string | null | undefined,
  rawBody: string | Uint8Array,
  nowSeconds: number,
  toleranceSeconds = 300,
): WebhookVerification {
  if (!header) return { ok: false, reason: "malformed header" };
  let t: string | undefined;
  const candidates: Buffer[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) return { ok: false, reason: "malformed header" };
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === "t") {
      if (t !== undefined || !/^\d{1,12}$/.test(value)) return { ok: false, reason: "malformed header" };
      t = value;
    } else if (key === "v1") {
      if (!/^[0-9a-fA-F]{64}$/.test(value)) return { ok: false, reason: "malformed header" };
      candidates.push(Buffer.from(value, "hex"));
    }
  }
  if (t === undefined || candidates.length === 0) return { ok: false, reason: "malformed header" };
  const expected = hmacSha256(secret, t, rawBody);
  let match = false;
  for (const c of candidates) match = timingSafeEqual(c, expected) || match;
  if (!match) return { ok: false, reason: "signature mismatch" };
  const ts = Number(t);
  if (Math.abs(nowSeconds - ts) > toleranceSeconds) return { ok: false, reason: "timestamp outside tolerance" };
  return { ok: true, timestampSeconds: ts };
}

/** The JSON document POSTed for one push. */
export interface WebhookPayload {
  id: string;
  platform: "webhook";
  device: string;
  app_id: string;
  title: string;
  body: string;
  collapse_key: string;
  badge: number | null;
  data: Record<string, string>;
  ttl_seconds: number;
  sent_at: string;
}

export interface WebhookSenderOptions {
  /** Clock in Unix milliseconds (tests skew it to produce stale signatures). */
  now?: () => number;
}

interface Answer {
  status: number;
  retryAfter: string | undefined;
  text: string;
}

const MAX_REASON_CHARS = 200;

/** PushSender for the signed webhook; one keep-alive connection pool per sender. */
export class WebhookSender implements PushSender {
  readonly platform = "webhook" as const;
  private readonly url: URL;
  private readonly agent: http.Agent;
  private readonly now: () => number;
  private readonly ids: UuidV7Generator;
  /** The HMAC key, prepared once (the webhook has no token to fetch or refresh). */
  private readonly key: KeyObject;
  private closed = false;

  constructor(
    private readonly config: WebhookConfig,
    options: WebhookSenderOptions = {},
  ) {
    this.url = new URL(config.url);
    this.now = options.now ?? Date.now;
    this.ids = new UuidV7Generator(this.now);
    this.key = createSecretKey(Buffer.from(config.secret, "utf8"));
    const agentOptions = { keepAlive: true, maxSockets: 32 };
    this.agent = this.url.protocol === "https:" ? new https.Agent(agentOptions) : new http.Agent(agentOptions);
  }

  async send(target: DeviceTarget, push: Push, signal?: AbortSignal): Promise<SendOutcome> {
    if (this.closed) return { status: "retry", reason: "webhook sender closed" };
    if (signal?.aborted) return { status: "retry", reason: "aborted" };
    const nowMs = this.now();
    const payload: WebhookPayload = {
      id: push.pushId !== undefined && UUID_RE.test(push.pushId) ? push.pushId : this.ids.next(),
      platform: "webhook",
      device: target.token,
      app_id: target.appId,
      title: push.title,
      body: push.body,
      collapse_key: push.collapseKey,
      badge: push.badge ?? null,
      data: push.data,
      ttl_seconds: push.ttlSeconds,
      sent_at: new Date(nowMs).toISOString(),
    };
    const body = Buffer.from(JSON.stringify(payload), "utf8");
    const headers = {
      "content-type": "application/json",
      "content-length": String(body.length),
      "user-agent": "parley-notify",
      [WEBHOOK_PUSH_ID_HEADER]: payload.id,
      [WEBHOOK_SIGNATURE_HEADER]: signWebhook(this.key, nowMs / 1000, body),
    };
    const timeout = AbortSignal.timeout(this.config.timeoutMs);
    let answer: Answer;
    try {
      answer = await this.post(headers, body, signal ? AbortSignal.any([signal, timeout]) : timeout);
    } catch (e) {
      if (timeout.aborted) return { status: "retry", reason: `timeout after ${this.config.timeoutMs} ms` };
      if (signal?.aborted) return { status: "retry", reason: "aborted" };
      const err = e as NodeJS.ErrnoException;
      return { status: "retry", reason: `network: ${err.code ?? err.message}` };
    }
    return this.classify(answer, payload.id);
  }

  private classify(a: Answer, id: string): SendOutcome {
    const what = a.text === "" ? `HTTP ${a.status}` : `HTTP ${a.status}: ${a.text}`;
    if (a.status >= 200 && a.status < 300) return { status: "sent", providerId: id };
    if (a.status === 410) return { status: "invalid-token", reason: what };
    if (a.status === 408 || a.status === 429 || a.status >= 500) {
      const after = retryAfterMs(a.retryAfter, this.now());
      return after === undefined ? { status: "retry", reason: what } : { status: "retry", reason: what, retryAfterMs: after };
    }
    return { status: "failed", reason: what };
  }

  private async post(headers: http.OutgoingHttpHeaders, body: Buffer, signal: AbortSignal): Promise<Answer> {
    const mod = this.url.protocol === "https:" ? https : http;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = mod.request(this.url, { method: "POST", agent: this.agent, headers, signal }, resolve);
      req.on("error", reject);
      req.end(body);
    });
    // Read the whole answer (so the connection can be reused), keeping its start for the reason.
    let text = "";
    for await (const chunk of res as AsyncIterable<Buffer>) {
      if (text.length < MAX_REASON_CHARS) text += chunk.toString("utf8");
    }
    const retryAfter = res.headers["retry-after"];
    return { status: res.statusCode ?? 0, retryAfter, text: text.slice(0, MAX_REASON_CHARS).trim() };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.agent.destroy();
  }
}
