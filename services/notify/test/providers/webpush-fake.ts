/**
 * A fake Web Push service (RFC 8030) over HTTPS on 127.0.0.1, checking what a real one
 * (Mozilla autopush, FCM's web push endpoint) checks, and playing the browser's part too:
 * it holds each subscription's private key and auth secret and decrypts the body (RFC 8291).
 *
 * Checks, in the order a push service makes them:
 * - POST to /push/<id>: unknown id → 404, unsubscribed → 410.
 * - `Authorization: vapid t=<jwt>, k=<key>` (RFC 8292): k is an uncompressed P-256 point; the JWT
 *   is ES256 and verifies with k; `aud` is this service's origin; `exp` is in the future and at
 *   most 24 h away; `sub` is a mailto: or https: URL → otherwise 401. A subscription created with
 *   an applicationServerKey only accepts that k → otherwise 403.
 * - TTL present, a non-negative integer; Urgency (if any) one of very-low|low|normal|high;
 *   Topic (if any) 1-32 base64url characters → otherwise 400.
 * - A body needs `Content-Encoding: aes128gcm` → otherwise 400 (415 for other encodings);
 *   at most 4096 octets → otherwise 413.
 * - The body decrypts with the subscription's keys into one record ending with the 0x02
 *   delimiter and zero padding, holding JSON → otherwise 400 (a real service cannot see this;
 *   the browser would drop the message. Failing loudly here makes a bad encryption fail tests).
 * Then 201 Created with a Location, unless a test scripted another answer.
 */
import { execFileSync } from "node:child_process";
import { createDecipheriv, createECDH, createPublicKey, hkdfSync, randomBytes, randomUUID, type ECDH } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeProtectedHeader, jwtVerify } from "jose";

/** A self-signed certificate for 127.0.0.1 and localhost (the `openssl` CLI), valid one day. */
export function createTestCertificate(): { key: string; cert: string } {
  const dir = mkdtempSync(join(tmpdir(), "parley-webpush-"));
  try {
    execFileSync(
      "openssl",
      [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
    return { key: readFileSync(join(dir, "key.pem"), "utf8"), cert: readFileSync(join(dir, "cert.pem"), "utf8") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What a browser hands the application server (PushSubscription.toJSON(), flattened). */
export interface BrowserSubscription {
  endpoint: string;
  p256dh: string;
  auth: string;
}

export interface FakeSubscription {
  id: string;
  subscription: BrowserSubscription;
}

/** A push the fake accepted, as the browser would see it. */
export interface ReceivedPush {
  subscriptionId: string;
  /** The decrypted JSON. */
  payload: unknown;
  /** Plaintext octets before padding, and padding octets. */
  plaintextOctets: number;
  paddingOctets: number;
  bodyOctets: number;
  ttl: number;
  urgency: string | undefined;
  topic: string | undefined;
  jwt: string;
  /** The VAPID public key (k). */
  vapidKey: string;
  claims: { aud: string; exp: number; sub: string };
}

export interface Rejection {
  status: number;
  reason: string;
}

interface SubscriptionState {
  ecdh: ECDH;
  uaPublic: Buffer;
  auth: Buffer;
  applicationServerKey: string | undefined;
  gone: boolean;
}

type Scripted =
  | { kind: "respond"; status: number; headers: Record<string, string>; body: string }
  | { kind: "drop"; arrived: () => void }
  | { kind: "hang"; arrived: () => void };

const MAX_BODY = 4096;
const DAY_S = 24 * 3600;

export class FakePushService {
  readonly origin: string;
  /** Pushes accepted (201). */
  readonly received: ReceivedPush[] = [];
  /** Requests refused by a check (not scripted answers). */
  readonly rejections: Rejection[] = [];
  /** Every distinct VAPID JWT presented, with the key (k) it came with. */
  readonly jwts = new Map<string, string>();
  requests = 0;
  readonly #server: https.Server;
  readonly #now: () => number;
  readonly #subs = new Map<string, SubscriptionState>();
  readonly #script: Scripted[] = [];

  private constructor(server: https.Server, now: () => number) {
    this.#server = server;
    this.#now = now;
    this.origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    server.on("request", (req, res) => {
      this.#handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) this.#reject(res, 500, `fake push service crashed: ${String(e)}`);
      });
    });
  }

  static async start(tls: { key: string; cert: string }, options: { now?: () => number } = {}): Promise<FakePushService> {
    const server = https.createServer({ key: tls.key, cert: tls.cert });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    return new FakePushService(server, options.now ?? Date.now);
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /**
   * A new subscription, created like a browser does: a P-256 key pair and a 16-octet auth
   * secret. With `applicationServerKey`, only pushes signed with that VAPID key are accepted.
   * `host` lets the endpoint use another name for this server (e.g. "localhost": another origin).
   */
  subscribe(options: { applicationServerKey?: string; host?: string } = {}): FakeSubscription {
    const id = randomUUID();
    const ecdh = createECDH("prime256v1");
    ecdh.generateKeys();
    const state: SubscriptionState = {
      ecdh,
      uaPublic: ecdh.getPublicKey(),
      auth: randomBytes(16),
      applicationServerKey: options.applicationServerKey,
      gone: false,
    };
    this.#subs.set(id, state);
    const base = options.host ? `https://${options.host}:${this.port}` : this.origin;
    return {
      id,
      subscription: {
        endpoint: `${base}/push/${id}`,
        p256dh: state.uaPublic.toString("base64url"),
        auth: state.auth.toString("base64url"),
      },
    };
  }

  /** The user unsubscribed (or the subscription expired): pushes to it get 410 Gone. */
  unsubscribe(id: string): void {
    const s = this.#subs.get(id);
    if (s) s.gone = true;
  }

  /** The next push that passes every check gets this answer instead of 201. */
  respondNext(status: number, headers: Record<string, string> = {}, body = ""): void {
    this.#script.push({ kind: "respond", status, headers, body });
  }

  /** The next request has its connection destroyed on arrival; resolves when that happened. */
  dropNext(): Promise<void> {
    return new Promise((arrived) => this.#script.push({ kind: "drop", arrived }));
  }

  /** The next request is never answered (until close); resolves when it arrived. */
  hangNext(): Promise<void> {
    return new Promise((arrived) => this.#script.push({ kind: "hang", arrived }));
  }

  /** Forget scripted answers no request consumed (a failed test must not leak into the next). */
  clearScript(): void {
    this.#script.length = 0;
  }

  /** Distinct JWTs presented with this VAPID key. */
  jwtCount(vapidKey: string): number {
    return [...this.jwts.values()].filter((k) => k === vapidKey).length;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  #reject(res: ServerResponse, status: number, reason: string): void {
    this.rejections.push({ status, reason });
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify({ code: status, error: reason }));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.requests++;
    const scripted = this.#script[0];
    if (scripted?.kind === "drop") {
      this.#script.shift();
      req.socket.destroy();
      scripted.arrived();
      return;
    }
    if (scripted?.kind === "hang") {
      this.#script.shift();
      scripted.arrived();
      return;
    }

    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);

    if (req.method !== "POST") return this.#reject(res, 405, `method ${req.method}`);
    const match = /^\/push\/([0-9a-f-]{36})$/.exec(req.url ?? "");
    const sub = match ? this.#subs.get(match[1]!) : undefined;
    if (!match || !sub) return this.#reject(res, 404, "no such subscription");
    if (sub.gone) return this.#reject(res, 410, "subscription expired or unsubscribed");

    // VAPID (RFC 8292 §3).
    const auth = parseVapid(req.headers.authorization);
    if (typeof auth === "string") return this.#reject(res, 401, auth);
    const claims = await this.#verifyJwt(auth.t, auth.k);
    if (typeof claims === "string") return this.#reject(res, 401, claims);
    if (sub.applicationServerKey !== undefined && sub.applicationServerKey !== auth.k) {
      return this.#reject(res, 403, "VAPID key differs from the subscription's applicationServerKey");
    }
    this.jwts.set(auth.t, auth.k);

    // RFC 8030 headers.
    const ttlHeader = req.headers["ttl"];
    if (typeof ttlHeader !== "string" || !/^\d+$/.test(ttlHeader)) return this.#reject(res, 400, `bad or missing TTL: ${ttlHeader}`);
    const urgency = req.headers["urgency"] as string | undefined;
    if (urgency !== undefined && !["very-low", "low", "normal", "high"].includes(urgency)) {
      return this.#reject(res, 400, `bad Urgency: ${urgency}`);
    }
    const topic = req.headers["topic"] as string | undefined;
    if (topic !== undefined && !/^[A-Za-z0-9_-]{1,32}$/.test(topic)) return this.#reject(res, 400, `bad Topic: ${topic}`);

    // Payload (RFC 8291).
    if (body.length > MAX_BODY) return this.#reject(res, 413, `body of ${body.length} octets`);
    if (body.length === 0) return this.#reject(res, 400, "this fake expects a payload");
    const encoding = req.headers["content-encoding"];
    if (encoding === undefined) return this.#reject(res, 400, "missing Content-Encoding");
    if (encoding !== "aes128gcm") return this.#reject(res, 415, `Content-Encoding ${encoding}`);
    const decrypted = decrypt(body, sub);
    if (typeof decrypted === "string") return this.#reject(res, 400, decrypted);
    let payload: unknown;
    try {
      payload = JSON.parse(decrypted.plaintext.toString("utf8"));
    } catch {
      return this.#reject(res, 400, "payload is not JSON");
    }

    const next = this.#script[0];
    if (next?.kind === "respond") {
      this.#script.shift();
      res.writeHead(next.status, next.headers);
      res.end(next.body);
      return;
    }
    this.received.push({
      subscriptionId: match[1]!,
      payload,
      plaintextOctets: decrypted.plaintext.length,
      paddingOctets: decrypted.padding,
      bodyOctets: body.length,
      ttl: Number(ttlHeader),
      urgency,
      topic,
      jwt: auth.t,
      vapidKey: auth.k,
      claims,
    });
    const messageId = randomUUID();
    res.writeHead(201, { location: `${this.origin}/m/${messageId}`, ttl: ttlHeader });
    res.end();
  }

  async #verifyJwt(jwt: string, k: string): Promise<ReceivedPush["claims"] | string> {
    const raw = Buffer.from(k, "base64url");
    if (!/^[A-Za-z0-9_-]+$/.test(k) || raw.length !== 65 || raw[0] !== 0x04) return "k is not an uncompressed P-256 point";
    let key;
    try {
      key = createPublicKey({
        format: "jwk",
        key: { kty: "EC", crv: "P-256", x: raw.subarray(1, 33).toString("base64url"), y: raw.subarray(33).toString("base64url") },
      });
    } catch {
      return "k is not on the P-256 curve";
    }
    try {
      const header = decodeProtectedHeader(jwt);
      if (header.typ !== undefined && header.typ !== "JWT") return `JWT typ ${header.typ}`;
      const nowS = Math.floor(this.#now() / 1000);
      const { payload } = await jwtVerify(jwt, key, {
        algorithms: ["ES256"],
        audience: this.origin,
        currentDate: new Date(this.#now()),
        clockTolerance: 0,
        requiredClaims: ["aud", "exp", "sub"],
      });
      const exp = payload.exp!;
      if (exp > nowS + DAY_S) return `exp is more than 24 h away (${exp - nowS} s)`;
      const sub = payload.sub!;
      if (!/^(mailto:|https:)/.test(sub)) return `sub is not a mailto: or https: URL: ${sub}`;
      return { aud: String(payload.aud), exp, sub };
    } catch (e) {
      return `JWT rejected: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
}

function parseVapid(value: string | undefined): { t: string; k: string } | string {
  if (!value) return "missing Authorization";
  const m = /^vapid\s+(.*)$/i.exec(value);
  if (!m) return `Authorization scheme is not vapid: ${value.split(" ")[0]}`;
  const params = new Map<string, string>();
  for (const part of m[1]!.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) return `bad vapid parameter: ${part}`;
    params.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const t = params.get("t");
  const k = params.get("k");
  if (!t || !k) return "vapid needs t and k";
  return { t, k };
}

/** RFC 8188 / RFC 8291 decryption as a browser does it, for one record. */
function decrypt(body: Buffer, sub: SubscriptionState): { plaintext: Buffer; padding: number } | string {
  if (body.length < 21) return "body shorter than the aes128gcm header";
  const salt = body.subarray(0, 16);
  const rs = body.readUInt32BE(16);
  const idlen = body[20]!;
  if (idlen !== 65) return `keyid of ${idlen} octets, expected the sender's 65-octet public key`;
  if (body.length < 21 + idlen) return "body shorter than the aes128gcm header";
  const asPublic = body.subarray(21, 21 + idlen);
  const record = body.subarray(21 + idlen);
  if (rs < 18) return `record size ${rs}`;
  if (record.length > rs) return "more than one record";
  if (record.length < 17) return "record shorter than its tag";
  let ecdhSecret: Buffer;
  try {
    ecdhSecret = sub.ecdh.computeSecret(asPublic);
  } catch {
    return "keyid is not a P-256 public key";
  }
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0"), sub.uaPublic, asPublic]);
  const ikm = Buffer.from(hkdfSync("sha256", ecdhSecret, sub.auth, keyInfo, 32));
  const cek = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: aes128gcm\0"), 16));
  const nonce = Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from("Content-Encoding: nonce\0"), 12));
  let padded: Buffer;
  try {
    const decipher = createDecipheriv("aes-128-gcm", cek, nonce);
    decipher.setAuthTag(record.subarray(record.length - 16));
    padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  } catch {
    return "payload does not decrypt with the subscription's keys";
  }
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  if (end < 0 || padded[end] !== 0x02) return "last record lacks the 0x02 delimiter";
  return { plaintext: padded.subarray(0, end), padding: padded.length - end - 1 };
}
