/**
 * Web Push sender: RFC 8030 (the push protocol), RFC 8292 (VAPID) and RFC 8291 (message
 * encryption, `aes128gcm` of RFC 8188), written on node:crypto and `jose` (no `web-push`
 * dependency).
 *
 * One push = one POST to the subscription's endpoint (a URL the browser got from its push
 * service) with TTL, Urgency, Topic, `Content-Encoding: aes128gcm`, `Authorization: vapid
 * t=<jwt>,k=<public key>` and an encrypted body that only the browser can read.
 *
 * Trust: endpoints must be `https:`. The system CA store is used; a private push service (or
 * a fake one in an end-to-end run) can be trusted with `NODE_EXTRA_CA_CERTS`, or in-process
 * with the `ca` option.
 */
import {
  createCipheriv,
  createECDH,
  createHash,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from "node:crypto";
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import https from "node:https";
import { SignJWT } from "jose";
import { ConfigError, envInt, type Env } from "../../../../lib/env.js";
import { retryAfterMs, type DeviceTarget, type Push, type PushSender, type SendOutcome } from "./push-sender.js";

export interface WebPushConfig {
  /** VAPID public key: base64url of the 65-octet uncompressed P-256 point (what browsers get as applicationServerKey). */
  vapidPublicKey: string;
  /** VAPID private key: base64url of the 32-octet P-256 scalar. */
  vapidPrivateKey: string;
  /** Contact for the push service operator: a `mailto:` or `https:` URL (the JWT's `sub`). */
  subject: string;
  /** Give up on one request after this long (and report `retry`). */
  timeoutMs: number;
}

const ENV_PUBLIC = "PARLEY_WEBPUSH_VAPID_PUBLIC_KEY";
const ENV_PRIVATE = "PARLEY_WEBPUSH_VAPID_PRIVATE_KEY";
const ENV_SUBJECT = "PARLEY_WEBPUSH_SUBJECT";
const ENV_TIMEOUT = "PARLEY_WEBPUSH_TIMEOUT_MS";

/**
 * The Web Push configuration, or undefined when none of the VAPID variables is set.
 * Throws ConfigError when only some are set, or a value is malformed, or the keys are not a pair.
 */
export function loadWebPushConfig(env: Env): WebPushConfig | undefined {
  const read = (name: string): string | undefined => env[name]?.trim() || undefined;
  const pub = read(ENV_PUBLIC);
  const priv = read(ENV_PRIVATE);
  const subject = read(ENV_SUBJECT);
  if (pub === undefined && priv === undefined && subject === undefined) return undefined;
  const missing = [
    [ENV_PUBLIC, pub],
    [ENV_PRIVATE, priv],
    [ENV_SUBJECT, subject],
  ].filter(([, v]) => v === undefined);
  if (missing.length > 0) {
    throw new ConfigError(`Web Push: ${missing.map(([n]) => n).join(", ")} must be set too (or none of the PARLEY_WEBPUSH_* keys)`);
  }
  const publicRaw = decodeKey(pub!, ENV_PUBLIC, 65);
  if (publicRaw[0] !== 0x04) throw new ConfigError(`${ENV_PUBLIC}: must be an uncompressed P-256 point (starting with 0x04)`);
  const privateRaw = decodeKey(priv!, ENV_PRIVATE, 32);
  let derived: Buffer;
  try {
    const ecdh = createECDH("prime256v1");
    ecdh.setPrivateKey(privateRaw);
    derived = ecdh.getPublicKey();
  } catch {
    throw new ConfigError(`${ENV_PRIVATE}: not a valid P-256 private key`);
  }
  if (!derived.equals(publicRaw)) throw new ConfigError(`${ENV_PUBLIC} and ${ENV_PRIVATE}: not a key pair`);
  checkSubject(subject!);
  return {
    vapidPublicKey: b64url(publicRaw),
    vapidPrivateKey: b64url(privateRaw),
    subject: subject!,
    timeoutMs: envInt(env, ENV_TIMEOUT, 10_000, 100, 120_000),
  };
}

function decodeKey(value: string, name: string, octets: number): Buffer {
  const raw = /^[A-Za-z0-9_-]+=*$/.test(value) ? Buffer.from(value, "base64url") : undefined;
  if (raw === undefined || raw.length !== octets) {
    throw new ConfigError(`${name}: must be base64url of ${octets} octets`);
  }
  return raw;
}

function checkSubject(subject: string): void {
  let url: URL | undefined;
  try {
    url = new URL(subject);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== "mailto:" && url.protocol !== "https:")) {
    throw new ConfigError(`${ENV_SUBJECT}: must be a mailto: or https: URL, got "${subject}"`);
  }
}

/** A fresh VAPID key pair in the configuration's format (base64url raw keys). */
export function generateVapidKeys(): { publicKey: string; privateKey: string } {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return { publicKey: b64url(ecdh.getPublicKey()), privateKey: b64url(ecdh.getPrivateKey()) };
}

// ---------------------------------------------------------------------------------------
// RFC 8291 / RFC 8188 encryption

/** Record size announced in the header; one record carries the whole message. */
const RECORD_SIZE = 4096;
/** salt(16) + rs(4) + idlen(1) + keyid(65). */
const HEADER_OCTETS = 86;
const TAG_OCTETS = 16;
/** Push services must accept 4096-octet bodies (RFC 8030 §7.2): what is left for our JSON. */
export const MAX_PLAINTEXT_OCTETS = RECORD_SIZE - HEADER_OCTETS - TAG_OCTETS - 1;
/** Plaintext is padded to a multiple of this, so the push service learns less from the length. */
const PAD_TO = 128;

export interface EncryptOptions {
  /** Fixed inputs for test vectors; random otherwise. */
  salt?: Buffer;
  /** Sender's ephemeral P-256 private key (32 octets); random otherwise. */
  senderPrivateKey?: Buffer;
  /** Zero octets to add after the delimiter (RFC 8188 padding). */
  padding?: number;
}

/**
 * Encrypts `plaintext` for a subscription (RFC 8291 §3-4): one aes128gcm record, the
 * sender's ephemeral public key as keyid.
 */
export function encryptAes128gcm(plaintext: Buffer, uaPublic: Buffer, authSecret: Buffer, options: EncryptOptions = {}): Buffer {
  const ecdh = createECDH("prime256v1");
  if (options.senderPrivateKey) ecdh.setPrivateKey(options.senderPrivateKey);
  else ecdh.generateKeys();
  const asPublic = ecdh.getPublicKey();
  const ecdhSecret = ecdh.computeSecret(uaPublic);
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), uaPublic, asPublic]);
  const ikm = Buffer.from(hkdfSync("sha256", ecdhSecret, authSecret, keyInfo, 32));
  const salt = options.salt ?? randomBytes(16);
  const cek = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: aes128gcm\0"), 16));
  const nonce = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: nonce\0"), 12));

  const header = Buffer.alloc(HEADER_OCTETS);
  salt.copy(header, 0);
  header.writeUInt32BE(RECORD_SIZE, 16);
  header.writeUInt8(asPublic.length, 20);
  asPublic.copy(header, 21);

  const cipher = createCipheriv("aes-128-gcm", cek, nonce);
  // 0x02: the last (only) record's delimiter, then zero padding.
  const record = Buffer.concat([plaintext, Buffer.from([0x02]), Buffer.alloc(options.padding ?? 0)]);
  return Buffer.concat([header, cipher.update(record), cipher.final(), cipher.getAuthTag()]);
}

// ---------------------------------------------------------------------------------------
// The sender

export interface WebPushSenderOptions {
  /** Extra trust roots (PEM) for push services, e.g. a test's self-signed certificate. */
  ca?: string | Buffer;
  /** Clock for the VAPID JWT lifetime and HTTP-date Retry-After; Date.now by default. */
  now?: () => number;
}

/** How long a VAPID JWT is valid (RFC 8292 §2: at most 24 h). */
const TOKEN_LIFETIME_MS = 12 * 3600_000;
/** A cached JWT is replaced when it has less than this left. */
const TOKEN_REFRESH_MS = 3600_000;
/** Distinct push-service origins we keep a JWT for. */
const TOKEN_CACHE_MAX = 1000;
/** How much of an error response body goes into `reason`. */
const REASON_MAX = 300;

interface CachedToken {
  authorization: Promise<string>;
  expiresAtMs: number;
}

interface Subscription {
  url: URL;
  uaPublic: Buffer;
  auth: Buffer;
}

type HttpResult = { status: number; headers: IncomingHttpHeaders; body: string } | { error: string };

export class WebPushSender implements PushSender {
  readonly platform = "webpush" as const;
  readonly #config: WebPushConfig;
  readonly #signingKey: KeyObject;
  readonly #agent: https.Agent;
  readonly #now: () => number;
  readonly #tokens = new Map<string, CachedToken>();
  #closed = false;

  constructor(config: WebPushConfig, options: WebPushSenderOptions = {}) {
    this.#config = config;
    const pub = Buffer.from(config.vapidPublicKey, "base64url");
    this.#signingKey = createPrivateKey({
      format: "jwk",
      key: {
        kty: "EC",
        crv: "P-256",
        x: b64url(pub.subarray(1, 33)),
        y: b64url(pub.subarray(33, 65)),
        d: config.vapidPrivateKey,
      },
    });
    this.#agent = new https.Agent({ keepAlive: true, maxSockets: 32, ...(options.ca ? { ca: options.ca } : {}) });
    this.#now = options.now ?? Date.now;
  }

  async send(target: DeviceTarget, push: Push, signal?: AbortSignal): Promise<SendOutcome> {
    if (this.#closed) return { status: "retry", reason: "web push sender is closed" };
    const sub = parseSubscription(target);
    if (typeof sub === "string") return { status: "invalid-token", reason: sub };
    const plaintext = buildPayload(push);
    if (plaintext === undefined) return { status: "failed", reason: `payload does not fit in ${MAX_PLAINTEXT_OCTETS} octets` };
    // The record (plaintext, delimiter, padding) fills a multiple of PAD_TO octets, within the maximum.
    const record = Math.min(Math.ceil((plaintext.length + 1) / PAD_TO) * PAD_TO, MAX_PLAINTEXT_OCTETS + 1);
    const body = encryptAes128gcm(plaintext, sub.uaPublic, sub.auth, { padding: record - plaintext.length - 1 });

    let authorization: string;
    try {
      authorization = await this.#authorization(sub.url.origin);
    } catch (e) {
      return { status: "failed", reason: `cannot sign the VAPID JWT: ${errorText(e)}` };
    }
    const headers: OutgoingHttpHeaders = {
      TTL: String(Math.max(0, Math.floor(push.ttlSeconds))),
      // RFC 8030 §5.3: "normal" is the urgency of an incoming chat message.
      Urgency: "normal",
      "Content-Type": "application/octet-stream",
      "Content-Encoding": "aes128gcm",
      "Content-Length": String(body.length),
      Authorization: authorization,
    };
    const topic = topicFor(push.collapseKey);
    if (topic !== undefined) headers["Topic"] = topic;

    const res = await this.#post(sub.url, headers, body, signal);
    if ("error" in res) return { status: "retry", reason: res.error };
    const { status } = res;
    const detail = `push service answered ${status}${res.body ? `: ${res.body}` : ""}`;
    if (status >= 200 && status < 300) {
      const location = header(res.headers, "location");
      return location ? { status: "sent", providerId: location } : { status: "sent" };
    }
    // 404: unknown subscription, 410: it expired or the user unsubscribed.
    if (status === 404 || status === 410) return { status: "invalid-token", reason: detail };
    if (status === 429 || status >= 500) {
      const after = retryAfterMs(header(res.headers, "retry-after"), this.#now());
      return after === undefined ? { status: "retry", reason: detail } : { status: "retry", reason: detail, retryAfterMs: after };
    }
    // 400 bad headers, 401/403 VAPID rejected, 413 too large, anything else: will not get better.
    return { status: "failed", reason: detail };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#agent.destroy();
    this.#tokens.clear();
  }

  /** `vapid t=<jwt>, k=<key>` for a push service origin, reused until close to its expiry. */
  #authorization(audience: string): Promise<string> {
    const now = this.#now();
    const cached = this.#tokens.get(audience);
    if (cached && cached.expiresAtMs - now > TOKEN_REFRESH_MS) return cached.authorization;
    const expSeconds = Math.floor((now + TOKEN_LIFETIME_MS) / 1000);
    const authorization = new SignJWT({ aud: audience, exp: expSeconds, sub: this.#config.subject })
      .setProtectedHeader({ typ: "JWT", alg: "ES256" })
      .sign(this.#signingKey)
      .then((jwt) => `vapid t=${jwt}, k=${this.#config.vapidPublicKey}`);
    this.#tokens.delete(audience);
    if (this.#tokens.size >= TOKEN_CACHE_MAX) {
      for (const [key, t] of this.#tokens) if (t.expiresAtMs - now <= TOKEN_REFRESH_MS) this.#tokens.delete(key);
      if (this.#tokens.size >= TOKEN_CACHE_MAX) this.#tokens.delete(this.#tokens.keys().next().value!);
    }
    const entry: CachedToken = { authorization, expiresAtMs: expSeconds * 1000 };
    this.#tokens.set(audience, entry);
    authorization.catch(() => {
      if (this.#tokens.get(audience) === entry) this.#tokens.delete(audience);
    });
    return authorization;
  }

  #post(url: URL, headers: OutgoingHttpHeaders, body: Buffer, signal: AbortSignal | undefined): Promise<HttpResult> {
    if (signal?.aborted) return Promise.resolve({ error: `aborted: ${errorText(signal.reason)}` });
    return new Promise<HttpResult>((resolve) => {
      let done = false;
      const finish = (r: HttpResult) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(r);
      };
      const req = https.request(url, { method: "POST", headers, agent: this.#agent }, (res) => {
        const chunks: Buffer[] = [];
        let kept = 0;
        res.on("data", (chunk: Buffer) => {
          if (kept < REASON_MAX) {
            chunks.push(chunk);
            kept += chunk.length;
          }
        });
        res.on("end", () =>
          finish({ status: res.statusCode ?? 0, headers: res.headers, body: reasonText(Buffer.concat(chunks)) }),
        );
        // The status line arrived: an error while reading the body does not change what it means.
        res.on("error", () => {});
        res.on("close", () => finish({ status: res.statusCode ?? 0, headers: res.headers, body: reasonText(Buffer.concat(chunks)) }));
      });
      const fail = (reason: string) => {
        req.destroy();
        finish({ error: reason });
      };
      const onAbort = () => fail(`aborted: ${errorText(signal?.reason)}`);
      const timer = setTimeout(() => fail(`no answer within ${this.#config.timeoutMs} ms`), this.#config.timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (e) => finish({ error: `network: ${errorText(e)}` }));
      req.end(body);
    });
  }
}

function parseSubscription(target: DeviceTarget): Subscription | string {
  const s = target.subscription;
  if (!s) return "no Web Push subscription on this device";
  let url: URL;
  try {
    url = new URL(s.endpoint);
  } catch {
    return "subscription endpoint is not a URL";
  }
  if (url.protocol !== "https:") return "subscription endpoint must be https";
  const uaPublic = decodeSubscriptionKey(s.p256dh);
  if (uaPublic?.length !== 65 || uaPublic[0] !== 0x04) return "subscription p256dh is not an uncompressed P-256 point";
  try {
    createPublicKey({
      format: "jwk",
      key: { kty: "EC", crv: "P-256", x: b64url(uaPublic.subarray(1, 33)), y: b64url(uaPublic.subarray(33, 65)) },
    });
  } catch {
    return "subscription p256dh is not on the P-256 curve";
  }
  const auth = decodeSubscriptionKey(s.auth);
  if (auth?.length !== 16) return "subscription auth secret is not 16 octets";
  return { url, uaPublic, auth };
}

/** Browsers give base64url; accept the standard alphabet and padding too. */
function decodeSubscriptionKey(value: string): Buffer | undefined {
  if (!/^[A-Za-z0-9_\-+/]+=*$/.test(value)) return undefined;
  return Buffer.from(value.replace(/\+/g, "-").replace(/\//g, "_"), "base64url");
}

/**
 * The JSON the service worker receives: {title, body, data, badge?}. A body too long for one
 * push is shortened (by code points, with an ellipsis); undefined when even an empty body does not fit.
 */
export function buildPayload(push: Push): Buffer | undefined {
  const encode = (body: string) =>
    Buffer.from(
      JSON.stringify({ title: push.title, body, data: push.data, ...(push.badge !== undefined ? { badge: push.badge } : {}) }),
    );
  const full = encode(push.body);
  if (full.length <= MAX_PLAINTEXT_OCTETS) return full;
  const points = Array.from(push.body);
  let lo = 0;
  let hi = points.length - 1;
  let best: Buffer | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const candidate = encode(mid === 0 ? "" : `${points.slice(0, mid).join("")}…`);
    if (candidate.length <= MAX_PLAINTEXT_OCTETS) {
      best = candidate;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return best;
}

/**
 * The Topic header (RFC 8030 §5.4: at most 32 base64url characters): the collapse key itself
 * when it fits, otherwise 24 octets of its SHA-256 (32 characters). Undefined for an empty key.
 */
export function topicFor(collapseKey: string): string | undefined {
  if (collapseKey === "") return undefined;
  if (/^[A-Za-z0-9_-]{1,32}$/.test(collapseKey)) return collapseKey;
  return b64url(createHash("sha256").update(collapseKey).digest().subarray(0, 24));
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function reasonText(body: Buffer): string {
  const text = body.toString("utf8").replace(/\s+/g, " ").trim();
  return text.length > REASON_MAX ? `${text.slice(0, REASON_MAX)}…` : text;
}

function errorText(e: unknown): string {
  if (e instanceof Error) return "code" in e && typeof e.code === "string" ? `${e.code} ${e.message}` : e.message;
  return String(e);
}

function b64url(b: Buffer): string {
  return b.toString("base64url");
}
