/**
 * FCM HTTP v1: one push to one Android/iOS/web app instance through Firebase Cloud Messaging.
 *
 * Auth is a Google service account: a JWT signed RS256 with its private key is exchanged at
 * the account's `token_uri` for an OAuth2 access token (RFC 7523 jwt-bearer grant), which is
 * cached and shared by all sends until shortly before it expires. The send is
 * `POST {endpoint}/v1/projects/{project_id}/messages:send` with `{"message": {...}}`.
 *
 * Errors follow the v1 format `{"error": {code, message, status, details: [...]}}`, where
 * `details` holds a `google.firebase.fcm.v1.FcmError` (`errorCode`) and/or a
 * `google.rpc.BadRequest` (`fieldViolations`).
 */
import { createHash, createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { SignJWT } from "jose";
import { ConfigError, envInt, envString, type Env } from "../../../../lib/env.js";
import { retryAfterMs, type DeviceTarget, type Push, type PushSender, type SendOutcome } from "./push-sender.js";

export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
export const FCM_DEFAULT_ENDPOINT = "https://fcm.googleapis.com";
const GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token";
const JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/** Google accepts assertions valid for at most one hour. */
const ASSERTION_LIFETIME_S = 3600;
/** Refresh the access token this long before it expires (or at half its life, if shorter). */
const REFRESH_MARGIN_MS = 5 * 60_000;
/** FCM's longest TTL: 28 days. */
const MAX_TTL_S = 28 * 24 * 3600;
/** APNs rejects an apns-collapse-id longer than 64 bytes. */
const MAX_APNS_COLLAPSE_ID_BYTES = 64;

export interface FcmServiceAccount {
  projectId: string;
  clientEmail: string;
  /** PEM (PKCS#8, as Google issues it; PKCS#1 is accepted too). */
  privateKey: string;
  /** Sent as the JWT `kid` when the account file has one. */
  privateKeyId?: string;
  tokenUri: string;
}

export interface FcmConfig {
  serviceAccount: FcmServiceAccount;
  /** Base URL of the FCM API, without a trailing slash. */
  endpoint: string;
  /** Deadline for each HTTP request (token exchange or send). */
  timeoutMs: number;
}

/**
 * FCM settings from the environment; undefined when PARLEY_FCM_SERVICE_ACCOUNT is unset.
 * - PARLEY_FCM_SERVICE_ACCOUNT: the service-account JSON itself, or the path of the file.
 * - PARLEY_FCM_ENDPOINT: default https://fcm.googleapis.com.
 * - PARLEY_FCM_TIMEOUT_MS: per-request deadline, default 10000.
 * URLs must be https, except plain http to a loopback host (local fakes and tests).
 */
export function loadFcmConfig(env: Env): FcmConfig | undefined {
  const raw = env.PARLEY_FCM_SERVICE_ACCOUNT?.trim();
  if (raw === undefined || raw === "") return undefined;
  let text: string;
  let source: string;
  if (raw.startsWith("{")) {
    text = raw;
    source = "PARLEY_FCM_SERVICE_ACCOUNT";
  } else {
    source = `PARLEY_FCM_SERVICE_ACCOUNT (${raw})`;
    try {
      text = readFileSync(raw, "utf8");
    } catch (e) {
      throw new ConfigError(`${source}: cannot read the service-account file: ${(e as Error).message}`);
    }
  }
  const serviceAccount = parseServiceAccount(text, source);
  const endpoint = checkUrl(envString(env, "PARLEY_FCM_ENDPOINT", FCM_DEFAULT_ENDPOINT), "PARLEY_FCM_ENDPOINT").replace(/\/+$/, "");
  const timeoutMs = envInt(env, "PARLEY_FCM_TIMEOUT_MS", 10_000, 100, 120_000);
  return { serviceAccount, endpoint, timeoutMs };
}

/** A Google service-account key file (the JSON the Firebase console downloads), checked. */
export function parseServiceAccount(text: string, source: string): FcmServiceAccount {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${source}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`${source}: must be a JSON object`);
  }
  const o = json as Record<string, unknown>;
  if (o.type !== undefined && o.type !== "service_account") {
    throw new ConfigError(`${source}: type must be "service_account", got ${JSON.stringify(o.type)}`);
  }
  const field = (name: string): string => {
    const v = o[name];
    if (typeof v !== "string" || v.trim() === "") throw new ConfigError(`${source}: ${name} is missing or empty`);
    return v.trim();
  };
  const privateKey = field("private_key");
  try {
    const key = createPrivateKey(privateKey);
    if (key.asymmetricKeyType !== "rsa") throw new Error(`an ${key.asymmetricKeyType} key, not RSA`);
  } catch (e) {
    throw new ConfigError(`${source}: private_key is not a usable RSA private key: ${(e as Error).message}`);
  }
  const keyId = o.private_key_id;
  return {
    projectId: field("project_id"),
    clientEmail: field("client_email"),
    privateKey,
    ...(typeof keyId === "string" && keyId !== "" ? { privateKeyId: keyId } : {}),
    tokenUri: checkUrl(o.token_uri === undefined ? GOOGLE_TOKEN_URI : field("token_uri"), `${source}: token_uri`),
  };
}

function checkUrl(value: string, what: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${what}: not a URL: "${value}"`);
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
    throw new ConfigError(`${what}: must be an https URL (plain http only to a loopback host), got "${value}"`);
  }
  return value;
}

/** The FCM v1 `message` for one push (exported for tests and for logging what was sent). */
export function fcmMessage(target: DeviceTarget, push: Push, nowMs: number): Record<string, unknown> {
  const ttl = Math.min(MAX_TTL_S, Math.max(0, Math.floor(push.ttlSeconds)));
  const android: Record<string, unknown> = { collapse_key: push.collapseKey, priority: "HIGH", ttl: `${ttl}s` };
  if (push.badge !== undefined) android.notification = { notification_count: push.badge };
  const apns: Record<string, unknown> = {
    headers: {
      "apns-collapse-id": apnsCollapseId(push.collapseKey),
      // APNs: 0 means "deliver now or never"; otherwise an absolute UNIX time.
      "apns-expiration": String(ttl === 0 ? 0 : Math.floor(nowMs / 1000) + ttl),
      "apns-priority": "10",
    },
  };
  if (push.badge !== undefined) apns.payload = { aps: { badge: push.badge } };
  return {
    token: target.token,
    notification: { title: push.title, body: push.body },
    data: push.data,
    android,
    apns,
  };
}

/** The collapse key, or its SHA-256 (base64url, 43 bytes) when APNs would find it too long. */
function apnsCollapseId(key: string): string {
  if (Buffer.byteLength(key, "utf8") <= MAX_APNS_COLLAPSE_ID_BYTES) return key;
  return createHash("sha256").update(key).digest("base64url");
}

export interface FcmSenderOptions {
  /** The clock (ms since the epoch); tests move it to expire cached tokens. */
  now?: () => number;
}

/** A send that ended before FCM answered it, with the outcome to report. */
class OutcomeError extends Error {
  override readonly name = "OutcomeError";
  constructor(readonly outcome: SendOutcome) {
    super(outcome.status === "sent" ? "sent" : outcome.reason);
  }
}

interface AccessToken {
  value: string;
  expiresAtMs: number;
  refreshAtMs: number;
}

interface FcmErrorBody {
  httpStatus: number;
  status?: string;
  message?: string;
  /** `FcmError.errorCode` from `details`. */
  errorCode?: string;
  /** `BadRequest.fieldViolations[].field` from `details`. */
  fields: string[];
}

export class FcmSender implements PushSender {
  readonly platform = "fcm" as const;
  readonly #cfg: FcmConfig;
  readonly #key: KeyObject;
  readonly #now: () => number;
  readonly #url: string;
  /** Aborts requests in flight on close. */
  readonly #closing = new AbortController();
  #token: AccessToken | undefined;
  /** The one token exchange in flight, shared by every send that needs it. */
  #fetching: Promise<AccessToken> | undefined;
  /** Exchanges done (for metrics and tests). */
  tokenExchanges = 0;

  constructor(cfg: FcmConfig, opts: FcmSenderOptions = {}) {
    this.#cfg = cfg;
    this.#key = createPrivateKey(cfg.serviceAccount.privateKey);
    this.#now = opts.now ?? Date.now;
    this.#url = `${cfg.endpoint}/v1/projects/${encodeURIComponent(cfg.serviceAccount.projectId)}/messages:send`;
  }

  async send(target: DeviceTarget, push: Push, signal?: AbortSignal): Promise<SendOutcome> {
    if (this.#closing.signal.aborted) return { status: "retry", reason: "fcm: sender closed" };
    if (target.token === "") return { status: "invalid-token", reason: "fcm: empty registration token" };
    const body = JSON.stringify({ message: fcmMessage(target, push, this.#now()) });
    try {
      let token = await this.#accessToken(signal);
      let res = await this.#post(token, body, signal);
      if (res.status === 401) {
        const err = await readError(res);
        // THIRD_PARTY_AUTH_ERROR is about the project's APNs/Web Push credentials, not our token.
        if (err.errorCode === "THIRD_PARTY_AUTH_ERROR") return failed(err);
        // Our token was refused before its time (revoked, clock skew): get a new one, try once more.
        if (this.#token?.value === token.value) this.#token = undefined;
        token = await this.#accessToken(signal);
        res = await this.#post(token, body, signal);
      }
      return await classify(res, this.#now());
    } catch (e) {
      if (e instanceof OutcomeError) return e.outcome;
      if (this.#closing.signal.aborted) return { status: "retry", reason: "fcm: sender closed" };
      return networkOutcome(e, signal, "send");
    }
  }

  async close(): Promise<void> {
    this.#closing.abort(new Error("fcm: sender closed"));
    this.#token = undefined;
  }

  async #post(token: AccessToken, body: string, signal: AbortSignal | undefined): Promise<Response> {
    return fetch(this.#url, {
      method: "POST",
      headers: {
        authorization: `Bearer ${token.value}`,
        "content-type": "application/json; charset=utf-8",
        accept: "application/json",
      },
      body,
      signal: this.#requestSignal(signal),
    });
  }

  #requestSignal(signal: AbortSignal | undefined): AbortSignal {
    const signals = [this.#closing.signal, AbortSignal.timeout(this.#cfg.timeoutMs)];
    if (signal) signals.push(signal);
    return AbortSignal.any(signals);
  }

  /** The cached access token, or a new one (one exchange at a time, whoever asks). */
  async #accessToken(signal: AbortSignal | undefined): Promise<AccessToken> {
    const cached = this.#token;
    if (cached && this.#now() < cached.refreshAtMs) return cached;
    if (!this.#fetching) {
      const fetching = this.#exchange().then(
        (t) => {
          this.#token = t;
          return t;
        },
      );
      this.#fetching = fetching;
      const clear = () => {
        if (this.#fetching === fetching) this.#fetching = undefined;
      };
      fetching.then(clear, clear);
    }
    return untilAborted(this.#fetching, signal);
  }

  async #exchange(): Promise<AccessToken> {
    const sa = this.#cfg.serviceAccount;
    const iat = Math.floor(this.#now() / 1000);
    const assertion = await new SignJWT({ scope: FCM_SCOPE })
      .setProtectedHeader({ alg: "RS256", typ: "JWT", ...(sa.privateKeyId ? { kid: sa.privateKeyId } : {}) })
      .setIssuer(sa.clientEmail)
      .setAudience(sa.tokenUri)
      .setIssuedAt(iat)
      .setExpirationTime(iat + ASSERTION_LIFETIME_S)
      .sign(this.#key);
    this.tokenExchanges++;
    let res: Response;
    try {
      res = await fetch(sa.tokenUri, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }).toString(),
        signal: this.#requestSignal(undefined),
      });
    } catch (e) {
      throw new OutcomeError(networkOutcome(e, undefined, "token exchange"));
    }
    const text = await res.text().catch(() => "");
    if (!res.ok) {
      let detail = `HTTP ${res.status}`;
      try {
        const j = JSON.parse(text) as { error?: unknown; error_description?: unknown };
        if (typeof j.error === "string") detail += ` ${j.error}`;
        if (typeof j.error_description === "string") detail += `: ${j.error_description}`;
      } catch {
        // not JSON: the status says enough
      }
      const reason = `fcm: token exchange refused (${detail})`;
      if (res.status === 429 || res.status >= 500) {
        throw new OutcomeError(withRetryAfter({ status: "retry", reason }, res, this.#now()));
      }
      // invalid_grant / invalid_client / unauthorized_client: the credentials are wrong.
      throw new OutcomeError({ status: "failed", reason });
    }
    let j: { access_token?: unknown; expires_in?: unknown };
    try {
      j = JSON.parse(text) as typeof j;
    } catch {
      throw new OutcomeError({ status: "retry", reason: "fcm: token exchange answered with something that is not JSON" });
    }
    if (typeof j.access_token !== "string" || j.access_token === "") {
      throw new OutcomeError({ status: "retry", reason: "fcm: token exchange answer has no access_token" });
    }
    const lifeMs = (typeof j.expires_in === "number" && j.expires_in > 0 ? j.expires_in : 3600) * 1000;
    const now = this.#now();
    return {
      value: j.access_token,
      expiresAtMs: now + lifeMs,
      refreshAtMs: now + lifeMs - Math.min(REFRESH_MARGIN_MS, lifeMs / 2),
    };
  }
}

/** The shared promise, or an abort of this caller alone (others keep waiting for it). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

async function classify(res: Response, nowMs: number): Promise<SendOutcome> {
  if (res.ok) {
    const text = await res.text().catch(() => "");
    try {
      const name = (JSON.parse(text) as { name?: unknown }).name;
      if (typeof name === "string" && name !== "") return { status: "sent", providerId: name };
    } catch {
      // FCM accepted it; the id is only for logs
    }
    return { status: "sent" };
  }
  const err = await readError(res);
  const reason = describe(err);
  if (err.errorCode === "UNREGISTERED") return { status: "invalid-token", reason };
  if (res.status === 400 && tokenIsTheProblem(err)) return { status: "invalid-token", reason };
  if (res.status === 429 || res.status >= 500) return withRetryAfter({ status: "retry", reason }, res, nowMs);
  return { status: "failed", reason };
}

/**
 * A 400 INVALID_ARGUMENT is about the token only when FCM says so: a field violation on
 * `message.token`, or (FCM's documented form) no violation elsewhere and a message about the
 * registration token. Anything else (bad data key, message too big) is our payload: failed.
 */
function tokenIsTheProblem(err: FcmErrorBody): boolean {
  if (err.errorCode !== undefined && err.errorCode !== "INVALID_ARGUMENT") return false;
  if (err.fields.includes("message.token")) return true;
  if (err.fields.length > 0) return false;
  return err.errorCode === "INVALID_ARGUMENT" && /registration token/i.test(err.message ?? "");
}

async function readError(res: Response): Promise<FcmErrorBody> {
  const out: FcmErrorBody = { httpStatus: res.status, fields: [] };
  const text = await res.text().catch(() => "");
  let e: unknown;
  try {
    e = (JSON.parse(text) as { error?: unknown }).error;
  } catch {
    return out;
  }
  if (typeof e !== "object" || e === null) return out;
  const o = e as { status?: unknown; message?: unknown; details?: unknown };
  if (typeof o.status === "string") out.status = o.status;
  if (typeof o.message === "string") out.message = o.message;
  if (Array.isArray(o.details)) {
    for (const d of o.details as unknown[]) {
      if (typeof d !== "object" || d === null) continue;
      const detail = d as { "@type"?: unknown; errorCode?: unknown; fieldViolations?: unknown };
      const type = typeof detail["@type"] === "string" ? detail["@type"] : "";
      if (type.endsWith("google.firebase.fcm.v1.FcmError") && typeof detail.errorCode === "string") {
        out.errorCode = detail.errorCode;
      } else if (type.endsWith("google.rpc.BadRequest") && Array.isArray(detail.fieldViolations)) {
        for (const v of detail.fieldViolations as unknown[]) {
          const field = (v as { field?: unknown } | null)?.field;
          if (typeof field === "string") out.fields.push(field);
        }
      }
    }
  }
  return out;
}

function describe(err: FcmErrorBody): string {
  const parts = [`HTTP ${err.httpStatus}`];
  if (err.errorCode) parts.push(err.errorCode);
  else if (err.status) parts.push(err.status);
  if (err.message) parts.push(err.message);
  return `fcm: ${parts.join(" ")}`;
}

function failed(err: FcmErrorBody): SendOutcome {
  return { status: "failed", reason: describe(err) };
}

function withRetryAfter(outcome: { status: "retry"; reason: string }, res: Response, nowMs: number): SendOutcome {
  const after = retryAfterMs(res.headers.get("retry-after"), nowMs);
  return after === undefined ? outcome : { ...outcome, retryAfterMs: after };
}

/** A request that got no answer: the network, a deadline, or the caller gave up. Try again later. */
function networkOutcome(e: unknown, signal: AbortSignal | undefined, what: string): SendOutcome {
  if (signal?.aborted) return { status: "retry", reason: `fcm: ${what} aborted` };
  const err = e as Error & { cause?: { code?: string; message?: string } };
  if (err?.name === "TimeoutError") return { status: "retry", reason: `fcm: ${what} timed out` };
  if (err?.name === "AbortError") return { status: "retry", reason: `fcm: ${what} aborted` };
  const cause = err?.cause?.code ?? err?.cause?.message;
  return { status: "retry", reason: `fcm: ${what} failed: ${err?.message ?? String(e)}${cause ? ` (${cause})` : ""}` };
}
