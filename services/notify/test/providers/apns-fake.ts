import { execFileSync } from "node:child_process";
import { randomUUID, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { decodeProtectedHeader, jwtVerify } from "jose";

/**
 * A fake APNs on 127.0.0.1 (port 0): HTTP/2 over TLS only (no HTTP/1.1), with a self-signed
 * certificate, checking each request as Apple documents it, in this order:
 *   POST (405 MethodNotAllowed) to /3/device/<token> (404 BadPath); the token is 64 hex
 *   digits (400 BadDeviceToken); `authorization: bearer <jwt>` present (403
 *   MissingProviderToken), the JWT header alg ES256 with the kid of a known key and the
 *   signature verified with that key's public key, iss = the team id, iat present (403
 *   InvalidProviderToken), iat not older than an hour nor in the future (403
 *   ExpiredProviderToken / InvalidProviderToken), a token the fake declared expired stays
 *   expired (403 ExpiredProviderToken), a new token on a connection less than 20 minutes
 *   after that connection's previous one (429 TooManyProviderTokenUpdates); apns-topic
 *   present (400 MissingTopic) and one the key may push to (400 TopicDisallowed);
 *   apns-push-type one of Apple's (400 InvalidPushType); apns-priority 10, 5 or 1 (400
 *   BadPriority); apns-expiration a whole number (400 BadExpirationDate); apns-collapse-id
 *   at most 64 bytes (400 BadCollapseId); a body (400 PayloadEmpty) of at most 4096 bytes
 *   (413 PayloadTooLarge) that is a JSON object with an `aps` object, and for push type
 *   alert an `aps.alert` (400 BadPayload: not one of Apple's reasons, the real service's
 *   answer to malformed JSON is undocumented); the token belongs to the topic (400
 *   DeviceTokenNotForTopic), is one APNs issued (400 BadDeviceToken) and the app is still
 *   installed (410 Unregistered with a timestamp).
 * Then it plays the next scripted step for that device token, if any; else answers 200
 * with an apns-id. Every request that passed the checks is recorded.
 */

export type FakeApnsStep =
  | { kind: "respond"; status: number; reason: string; retryAfter?: string }
  /** Destroy the connection (the HTTP/2 session) without answering. */
  | { kind: "destroy" }
  /** Never answer (until the client cancels or the fake is closed). */
  | { kind: "stall" };

export interface FakeApnsKey {
  keyId: string;
  teamId: string;
  publicKey: KeyObject;
}

export interface FakeApnsOptions {
  tls: { key: string; cert: string };
  keys: FakeApnsKey[];
  /** Topics the keys may push to. */
  topics: string[];
  /** The fake's clock (ms); default Date.now. */
  now?: () => number;
}

export interface ReceivedApnsPush {
  token: string;
  headers: http2.IncomingHttpHeaders;
  jwt: string;
  jwtHeader: Record<string, unknown>;
  jwtClaims: Record<string, unknown>;
  payload: Record<string, unknown>;
  bodyBytes: number;
  apnsId: string;
}

const TOKEN_MAX_AGE_S = 3600;
const TOKEN_MIN_REFRESH_MS = 20 * 60_000;

export class FakeApns {
  readonly origin: string;
  /** Pushes that passed every check and were answered 200. */
  readonly delivered: ReceivedApnsPush[] = [];
  /** Every distinct provider token (JWT) that verified. */
  readonly jwtsSeen = new Set<string>();
  /** Requests that reached the server (any answer). */
  requests = 0;
  /** HTTP/2 connections opened by clients. */
  sessionsOpened = 0;
  /** Device token → the topic it belongs to. Unknown tokens get 400 BadDeviceToken. */
  readonly devices = new Map<string, string>();
  /** Device token → when APNs learned it was no longer valid (ms). */
  readonly unregistered = new Map<string, number>();
  readonly #server: http2.Http2SecureServer;
  readonly #opts: FakeApnsOptions;
  readonly #now: () => number;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  readonly #script = new Map<string, FakeApnsStep[]>();
  readonly #expiredJwts = new Set<string>();
  readonly #waiters: Array<{ token: string; resolve: () => void }> = [];
  /** Per connection: the last provider token and when it was first used there. */
  readonly #sessionToken = new WeakMap<http2.Http2Session, { jwt: string; sinceMs: number }>();

  private constructor(server: http2.Http2SecureServer, opts: FakeApnsOptions) {
    this.#server = server;
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  static async start(opts: FakeApnsOptions): Promise<FakeApns> {
    const server = http2.createSecureServer({ key: opts.tls.key, cert: opts.tls.cert, allowHTTP1: false });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const fake = new FakeApns(server, opts);
    server.on("session", (session) => {
      fake.sessionsOpened++;
      fake.#sessions.add(session);
      session.on("close", () => fake.#sessions.delete(session));
      session.on("error", () => {});
    });
    server.on("stream", (stream, headers) => void fake.#handle(stream, headers));
    return fake;
  }

  /** Register a device token for a topic (a device that has the app installed). */
  addDevice(token: string, topic: string): void {
    this.devices.set(token, topic);
  }

  /** Answer the next requests for `token` with these steps, in order (after the checks pass). */
  script(token: string, ...steps: FakeApnsStep[]): void {
    this.#script.set(token, [...(this.#script.get(token) ?? []), ...steps]);
  }

  /** Resolves when a request for `token` has passed the checks (before it is answered). */
  waitForRequest(token: string): Promise<void> {
    return new Promise((resolve) => this.#waiters.push({ token, resolve }));
  }

  /** Close every client connection (as APNs does to idle or failing connections). */
  dropConnections(): void {
    for (const s of this.#sessions) s.destroy();
  }

  get openSessions(): number {
    return this.#sessions.size;
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    stream.on("error", () => {});
    this.requests++;
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const answer = (status: number, reason: string, extra: http2.OutgoingHttpHeaders = {}, data?: Record<string, unknown>) => {
      if (stream.destroyed || stream.closed) return;
      stream.respond({ ":status": status, "apns-id": headerOf(headers, "apns-id") ?? randomUUID(), "content-type": "application/json", ...extra });
      stream.end(JSON.stringify({ reason, ...data }));
    };

    if (headers[":method"] !== "POST") return answer(405, "MethodNotAllowed");
    const path = /^\/3\/device\/([^/?]*)$/.exec(String(headers[":path"] ?? ""));
    if (!path) return answer(404, "BadPath");
    const token = path[1]!;
    if (token === "") return answer(400, "MissingDeviceToken");
    if (!/^[0-9a-fA-F]{64}$/.test(token)) return answer(400, "BadDeviceToken");

    // Provider token.
    const auth = headerOf(headers, "authorization");
    if (!auth) return answer(403, "MissingProviderToken");
    const bearer = /^bearer (\S+)$/.exec(auth);
    if (!bearer) return answer(403, "InvalidProviderToken");
    const jwt = bearer[1]!;
    let jwtHeader: Record<string, unknown>;
    let jwtClaims: Record<string, unknown>;
    try {
      jwtHeader = decodeProtectedHeader(jwt) as Record<string, unknown>;
      const key = this.#opts.keys.find((k) => k.keyId === jwtHeader.kid);
      if (jwtHeader.alg !== "ES256" || !key) return answer(403, "InvalidProviderToken");
      const verified = await jwtVerify(jwt, key.publicKey, {
        algorithms: ["ES256"],
        issuer: key.teamId,
        requiredClaims: ["iat"],
        currentDate: new Date(this.#now()),
      });
      jwtClaims = verified.payload as Record<string, unknown>;
    } catch {
      return answer(403, "InvalidProviderToken");
    }
    const iat = jwtClaims.iat;
    const nowS = Math.floor(this.#now() / 1000);
    if (typeof iat !== "number" || iat > nowS + 60) return answer(403, "InvalidProviderToken");
    if (nowS - iat > TOKEN_MAX_AGE_S || this.#expiredJwts.has(jwt)) return answer(403, "ExpiredProviderToken");
    const session = stream.session!;
    const previous = this.#sessionToken.get(session);
    if (previous && previous.jwt !== jwt) {
      if (this.#now() - previous.sinceMs < TOKEN_MIN_REFRESH_MS && !this.#expiredJwts.has(previous.jwt)) {
        return answer(429, "TooManyProviderTokenUpdates");
      }
    }
    if (!previous || previous.jwt !== jwt) this.#sessionToken.set(session, { jwt, sinceMs: this.#now() });
    this.jwtsSeen.add(jwt);

    // Headers.
    const topic = headerOf(headers, "apns-topic");
    if (!topic) return answer(400, "MissingTopic");
    if (!this.#opts.topics.includes(topic)) return answer(400, "TopicDisallowed");
    const pushType = headerOf(headers, "apns-push-type") ?? "alert";
    if (!["alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk"].includes(pushType)) {
      return answer(400, "InvalidPushType");
    }
    const priority = headerOf(headers, "apns-priority");
    if (priority !== undefined && !["10", "5", "1"].includes(priority)) return answer(400, "BadPriority");
    const expiration = headerOf(headers, "apns-expiration");
    if (expiration !== undefined && !/^\d+$/.test(expiration)) return answer(400, "BadExpirationDate");
    const collapse = headerOf(headers, "apns-collapse-id");
    if (collapse !== undefined && Buffer.byteLength(collapse) > 64) return answer(400, "BadCollapseId");

    // Body.
    if (body.length === 0) return answer(400, "PayloadEmpty");
    if (body.length > 4096) return answer(413, "PayloadTooLarge");
    let payload: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(body.toString("utf8"));
      if (!isObject(parsed) || !isObject(parsed.aps)) return answer(400, "BadPayload");
      if (pushType === "alert" && parsed.aps.alert === undefined) return answer(400, "BadPayload");
      payload = parsed;
    } catch {
      return answer(400, "BadPayload");
    }

    // The device.
    const deviceTopic = this.devices.get(token.toLowerCase());
    const gone = this.unregistered.get(token.toLowerCase());
    if (gone !== undefined) return answer(410, "Unregistered", {}, { timestamp: gone });
    if (deviceTopic === undefined) return answer(400, "BadDeviceToken");
    if (deviceTopic !== topic) return answer(400, "DeviceTokenNotForTopic");

    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      if (this.#waiters[i]!.token === token) this.#waiters.splice(i, 1)[0]!.resolve();
    }
    const step = this.#script.get(token)?.shift();
    if (step?.kind === "destroy") return void session.destroy();
    if (step?.kind === "stall") return;
    if (step?.kind === "respond") {
      if (step.reason === "ExpiredProviderToken") this.#expiredJwts.add(jwt);
      return answer(step.status, step.reason, step.retryAfter ? { "retry-after": step.retryAfter } : {});
    }

    const apnsId = headerOf(headers, "apns-id") ?? randomUUID();
    this.delivered.push({ token, headers, jwt, jwtHeader, jwtClaims, payload, bodyBytes: body.length, apnsId });
    stream.respond({ ":status": 200, "apns-id": apnsId });
    stream.end();
  }
}

function headerOf(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI in `dir`. */
export function makeTlsCert(dir: string): { key: string; cert: string; certPath: string } {
  const keyPath = join(dir, "tls-key.pem");
  const certPath = join(dir, "tls-cert.pem");
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", keyPath, "-out", certPath, "-days", "1", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ],
    { stdio: "ignore" },
  );
  return { key: readFileSync(keyPath, "utf8"), cert: readFileSync(certPath, "utf8"), certPath };
}
