import assert from "node:assert/strict";
import { createECDH, generateKeyPairSync } from "node:crypto";
import { after, before, beforeEach, describe, it } from "node:test";
import { ConfigError } from "../../../../lib/env.js";
import type { DeviceTarget, Push } from "../../src/providers/push-sender.js";
import {
  MAX_PLAINTEXT_OCTETS,
  WebPushSender,
  encryptAes128gcm,
  generateVapidKeys,
  loadWebPushConfig,
  topicFor,
  type WebPushConfig,
} from "../../src/providers/webpush.js";
import { FakePushService, createTestCertificate, type BrowserSubscription } from "./webpush-fake.js";

/** A VAPID key pair made directly with node:crypto (not with the code under test). */
function vapidKeys(): { publicKey: string; privateKey: string } {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = privateKey.export({ format: "jwk" });
  const pub = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
  return { publicKey: pub.toString("base64url"), privateKey: jwk.d! };
}

function configFor(keys: { publicKey: string; privateKey: string }, extra: Record<string, string> = {}): WebPushConfig {
  const cfg = loadWebPushConfig({
    PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: keys.publicKey,
    PARLEY_WEBPUSH_VAPID_PRIVATE_KEY: keys.privateKey,
    PARLEY_WEBPUSH_SUBJECT: "mailto:ops@parley.example",
    ...extra,
  });
  assert.ok(cfg);
  return cfg;
}

/** `promise`, or a rejection after `ms`: waiting for an event with a deadline, never a sleep. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function target(subscription: BrowserSubscription | undefined): DeviceTarget {
  return { platform: "webpush", token: "", appId: "", ...(subscription ? { subscription } : {}) };
}

function push(overrides: Partial<Push> = {}): Push {
  return {
    title: "Alice",
    body: "are we still on for lunch? 🍜",
    collapseKey: "0190c3a4-7d1e-7c3b-9a4e-2f1d3c4b5a69",
    badge: 3,
    data: { conversation_id: "c-1", seq: "42", message_id: "m-1" },
    ttlSeconds: 3600,
    ...overrides,
  };
}

describe("loadWebPushConfig", () => {
  const keys = vapidKeys();
  const env = {
    PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: keys.publicKey,
    PARLEY_WEBPUSH_VAPID_PRIVATE_KEY: keys.privateKey,
    PARLEY_WEBPUSH_SUBJECT: "https://parley.example/contact",
  };

  it("is undefined when Web Push is not configured", () => {
    assert.equal(loadWebPushConfig({}), undefined);
    assert.equal(loadWebPushConfig({ PARLEY_WEBPUSH_SUBJECT: "  " }), undefined);
  });

  it("reads the keys, the subject and a default timeout", () => {
    assert.deepEqual(loadWebPushConfig(env), {
      vapidPublicKey: keys.publicKey,
      vapidPrivateKey: keys.privateKey,
      subject: "https://parley.example/contact",
      timeoutMs: 10_000,
    });
    assert.equal(loadWebPushConfig({ ...env, PARLEY_WEBPUSH_TIMEOUT_MS: "2500" })?.timeoutMs, 2500);
  });

  it("rejects partial or malformed settings", () => {
    const bad: Record<string, string | undefined>[] = [
      { PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: keys.publicKey },
      { ...env, PARLEY_WEBPUSH_SUBJECT: undefined },
      { ...env, PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: "not base64!" },
      { ...env, PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: keys.publicKey.slice(0, 40) },
      { ...env, PARLEY_WEBPUSH_VAPID_PUBLIC_KEY: Buffer.concat([Buffer.from([2]), Buffer.alloc(64, 1)]).toString("base64url") },
      { ...env, PARLEY_WEBPUSH_VAPID_PRIVATE_KEY: Buffer.alloc(32, 0).toString("base64url") },
      { ...env, PARLEY_WEBPUSH_VAPID_PRIVATE_KEY: vapidKeys().privateKey },
      { ...env, PARLEY_WEBPUSH_SUBJECT: "ops@parley.example" },
      { ...env, PARLEY_WEBPUSH_SUBJECT: "http://parley.example" },
      { ...env, PARLEY_WEBPUSH_TIMEOUT_MS: "soon" },
    ];
    for (const e of bad) assert.throws(() => loadWebPushConfig(e), ConfigError, JSON.stringify(e));
  });

  it("accepts keys made by generateVapidKeys", () => {
    const k = generateVapidKeys();
    assert.equal(configFor(k).vapidPublicKey, k.publicKey);
  });
});

describe("RFC 8291 encryption", () => {
  it("matches the worked example of RFC 8291 section 5 to the octet", () => {
    const body = encryptAes128gcm(
      Buffer.from("When I grow up, I want to be a watermelon"),
      Buffer.from("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4", "base64url"),
      Buffer.from("BTBZMqHH6r4Tts7J_aSIgg", "base64url"),
      {
        salt: Buffer.from("DGv6ra1nlYgDCS1FRnbzlw", "base64url"),
        senderPrivateKey: Buffer.from("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw", "base64url"),
      },
    );
    assert.equal(
      body.toString("base64url"),
      "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
    );
  });

  it("keeps short collapse keys as the Topic and hashes long ones to 32 base64url characters", () => {
    assert.equal(topicFor("c1_u2-x"), "c1_u2-x");
    assert.equal(topicFor(""), undefined);
    const long = topicFor("user:0190c3a4-7d1e-7c3b-9a4e-2f1d3c4b5a69/conv:0190c3a4-7d1e-7c3b-9a4e-000000000000");
    assert.match(long!, /^[A-Za-z0-9_-]{32}$/);
    assert.equal(topicFor("user:0190c3a4-7d1e-7c3b-9a4e-2f1d3c4b5a69/conv:0190c3a4-7d1e-7c3b-9a4e-000000000000"), long);
    assert.notEqual(topicFor("user:0190c3a4-7d1e-7c3b-9a4e-2f1d3c4b5a69/conv:0190c3a4-7d1e-7c3b-9a4e-000000000001"), long);
  });
});

describe("WebPushSender against a fake push service", { timeout: 30_000 }, () => {
  const tls = createTestCertificate();
  const keys = vapidKeys();
  let clock = Date.now();
  const now = () => clock;
  let fake: FakePushService;
  let sender: WebPushSender;
  const extraSenders: WebPushSender[] = [];
  const newSender = (cfg: WebPushConfig) => {
    const s = new WebPushSender(cfg, { ca: tls.cert, now });
    extraSenders.push(s);
    return s;
  };

  before(async () => {
    fake = await FakePushService.start(tls, { now });
    sender = new WebPushSender(configFor(keys), { ca: tls.cert, now });
  });
  beforeEach(() => fake.clearScript());
  after(async () => {
    await sender.close();
    for (const s of extraSenders) await s.close();
    await fake.close();
  });

  it("delivers a push the browser can decrypt, with VAPID, TTL, Urgency and Topic", async () => {
    const { id, subscription } = fake.subscribe({ applicationServerKey: keys.publicKey });
    const p = push();
    const outcome = await sender.send(target(subscription), p);
    assert.equal(outcome.status, "sent", JSON.stringify({ outcome, rejections: fake.rejections }));
    assert.ok(outcome.status === "sent" && outcome.providerId?.startsWith(`${fake.origin}/m/`));
    const got = fake.received.at(-1)!;
    assert.equal(got.subscriptionId, id);
    assert.deepEqual(got.payload, { title: p.title, body: p.body, data: p.data, badge: 3 });
    assert.equal(got.ttl, 3600);
    assert.equal(got.urgency, "normal");
    assert.equal(got.topic, topicFor(p.collapseKey));
    assert.equal(got.vapidKey, keys.publicKey);
    assert.equal(got.claims.aud, fake.origin);
    assert.equal(got.claims.sub, "mailto:ops@parley.example");
    assert.ok(got.claims.exp * 1000 > clock && got.claims.exp * 1000 <= clock + 24 * 3600_000);
    // Padded to hide the exact length, and within the 4096 octets every push service takes.
    assert.equal((got.plaintextOctets + got.paddingOctets + 1) % 128, 0);
    assert.ok(got.bodyOctets <= 4096);
  });

  it("omits the badge when unknown and sends TTL 0 as is", async () => {
    const { subscription } = fake.subscribe();
    const p = push({ badge: undefined, ttlSeconds: 0, collapseKey: "" });
    assert.equal((await sender.send(target(subscription), p)).status, "sent");
    const got = fake.received.at(-1)!;
    assert.deepEqual(got.payload, { title: p.title, body: p.body, data: p.data });
    assert.equal(got.ttl, 0);
    assert.equal(got.topic, undefined);
  });

  it("shortens a preview too long for one push, and the result still decrypts", async () => {
    const { subscription } = fake.subscribe();
    const outcome = await sender.send(target(subscription), push({ body: "ß".repeat(5000) }));
    assert.equal(outcome.status, "sent", JSON.stringify({ outcome, rejections: fake.rejections }));
    const got = fake.received.at(-1)!;
    const body = (got.payload as { body: string }).body;
    assert.ok(body.endsWith("…") && body.startsWith("ßßß"));
    assert.ok(got.plaintextOctets <= MAX_PLAINTEXT_OCTETS);
    assert.equal(got.bodyOctets, 4096);
  });

  it("reports an unknown subscription (404) and an expired one (410) as invalid tokens", async () => {
    const { id, subscription } = fake.subscribe();
    const unknown = { ...subscription, endpoint: `${fake.origin}/push/00000000-0000-4000-8000-000000000000` };
    const o404 = await sender.send(target(unknown), push());
    assert.equal(o404.status, "invalid-token");
    assert.match((o404 as { reason: string }).reason, /404/);

    fake.unsubscribe(id);
    const o410 = await sender.send(target(subscription), push());
    assert.equal(o410.status, "invalid-token");
    assert.match((o410 as { reason: string }).reason, /410/);
  });

  it("reports unusable subscriptions as invalid tokens without calling the push service", async () => {
    const before = fake.requests;
    const { subscription } = fake.subscribe();
    const notOnCurve = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 7)]).toString("base64url");
    const cases: (BrowserSubscription | undefined)[] = [
      undefined,
      { ...subscription, endpoint: "not a url" },
      { ...subscription, endpoint: subscription.endpoint.replace("https:", "http:") },
      { ...subscription, p256dh: "abc" },
      { ...subscription, p256dh: notOnCurve },
      { ...subscription, auth: Buffer.alloc(8).toString("base64url") },
    ];
    for (const c of cases) {
      const o = await sender.send(target(c), push());
      assert.equal(o.status, "invalid-token", JSON.stringify(c));
    }
    assert.equal(fake.requests, before);
  });

  it("accepts subscription keys in standard base64 with padding", async () => {
    const { subscription } = fake.subscribe();
    const std = (s: string) => Buffer.from(s, "base64url").toString("base64");
    const o = await sender.send(target({ ...subscription, p256dh: std(subscription.p256dh), auth: std(subscription.auth) }), push());
    assert.equal(o.status, "sent");
  });

  it("retries on 429 and 5xx, after Retry-After when given", async () => {
    const { subscription } = fake.subscribe();
    fake.respondNext(429, { "retry-after": "7" }, '{"errno":999,"error":"Too Many Requests"}');
    const o429 = await sender.send(target(subscription), push());
    assert.deepEqual({ ...o429, reason: undefined }, { status: "retry", retryAfterMs: 7000, reason: undefined });
    assert.match((o429 as { reason: string }).reason, /429.*Too Many Requests/);

    fake.respondNext(503, { "retry-after": new Date(clock + 30_000).toUTCString() });
    const o503 = await sender.send(target(subscription), push());
    assert.equal(o503.status, "retry");
    const ms = (o503 as { retryAfterMs?: number }).retryAfterMs;
    assert.ok(ms !== undefined && ms > 28_000 && ms <= 30_000, String(ms));

    fake.respondNext(500);
    const o500 = await sender.send(target(subscription), push());
    assert.equal(o500.status, "retry");
    assert.equal((o500 as { retryAfterMs?: number }).retryAfterMs, undefined);
  });

  it("fails permanently on 400, 413 and rejected VAPID credentials", async () => {
    const { subscription } = fake.subscribe({ applicationServerKey: keys.publicKey });
    fake.respondNext(400, {}, '{"error":"Bad Request"}');
    assert.equal((await sender.send(target(subscription), push())).status, "failed");
    fake.respondNext(413);
    assert.equal((await sender.send(target(subscription), push())).status, "failed");

    // The subscription was made for our key; a server with other keys gets 403 from the service.
    const rejectionsBefore = fake.rejections.length;
    const other = newSender(configFor(vapidKeys()));
    const o403 = await other.send(target(subscription), push());
    assert.equal(o403.status, "failed");
    assert.match((o403 as { reason: string }).reason, /403/);
    assert.equal(fake.rejections.at(-1)?.status, 403);
    assert.equal(fake.rejections.length, rejectionsBefore + 1);
  });

  it("retries when the connection is dropped", async () => {
    const { subscription } = fake.subscribe();
    const dropped = fake.dropNext();
    const o = await sender.send(target(subscription), push());
    await within(dropped, 5000, "the fake saw the request");
    assert.equal(o.status, "retry");
    assert.match((o as { reason: string }).reason, /network/);
    // The next push goes through on a fresh connection.
    assert.equal((await sender.send(target(subscription), push())).status, "sent");
  });

  it("retries when the caller aborts a push the service does not answer", async () => {
    const { subscription } = fake.subscribe();
    const arrived = fake.hangNext();
    const ac = new AbortController();
    const pending = sender.send(target(subscription), push(), ac.signal);
    await within(arrived, 5000, "the fake saw the request");
    ac.abort(new Error("shutting down"));
    const o = await pending;
    assert.equal(o.status, "retry");
    assert.match((o as { reason: string }).reason, /aborted: shutting down/);

    const pre = new AbortController();
    pre.abort(new Error("already"));
    assert.equal((await sender.send(target(subscription), push(), pre.signal)).status, "retry");
  });

  it("retries when the service does not answer within the timeout", async () => {
    const { subscription } = fake.subscribe();
    const quick = newSender(configFor(keys, { PARLEY_WEBPUSH_TIMEOUT_MS: "200" }));
    const arrived = fake.hangNext();
    const o = await within(quick.send(target(subscription), push()), 5000, "the timed-out send");
    await within(arrived, 5000, "the fake saw the request");
    assert.equal(o.status, "retry");
    assert.match((o as { reason: string }).reason, /no answer within 200 ms/);
  });

  it("signs one VAPID JWT per push service origin and reuses it until close to expiry", async () => {
    const own = vapidKeys();
    const s = newSender(configFor(own));
    const a = fake.subscribe().subscription;
    const b = fake.subscribe().subscription;
    for (const sub of [a, b, a, b, a]) assert.equal((await s.send(target(sub), push())).status, "sent");
    assert.equal(fake.jwtCount(own.publicKey), 1);

    // Another origin (same server, named "localhost") gets its own JWT, with its own aud.
    const { subscription: viaLocalhost } = fake.subscribe({ host: "localhost" });
    const rejected = await s.send(target(viaLocalhost), push());
    // The fake's origin is https://127.0.0.1:port, so it refuses aud=https://localhost:port: proof that
    // aud follows the endpoint. A real push service has one name per origin.
    assert.equal(rejected.status, "failed");
    assert.match(fake.rejections.at(-1)!.reason, /aud/);
    assert.equal(fake.jwtCount(own.publicKey), 1);

    // Eleven and a half hours later the 12 h token has under an hour left: a new one is signed.
    clock += 11.5 * 3600_000;
    assert.equal((await s.send(target(a), push())).status, "sent");
    assert.equal((await s.send(target(b), push())).status, "sent");
    assert.equal(fake.jwtCount(own.publicKey), 2);
    const last = fake.received.at(-1)!;
    assert.ok(last.claims.exp * 1000 > clock + 11 * 3600_000);
  });

  it("does not send after close", async () => {
    const s = newSender(configFor(keys));
    await s.close();
    const before = fake.requests;
    const { subscription } = fake.subscribe();
    assert.equal((await s.send(target(subscription), push())).status, "retry");
    assert.equal(fake.requests, before);
  });
});

// The browser side of the fake is a second, independent implementation of RFC 8291: check it
// against the sender's encryption with keys a browser would have made.
describe("fake push service decryption", () => {
  it("reads what encryptAes128gcm writes, padding included", async () => {
    const tls = createTestCertificate();
    const fake = await FakePushService.start(tls);
    try {
      const keys = vapidKeys();
      const sender = new WebPushSender(configFor(keys), { ca: tls.cert });
      try {
        const { subscription } = fake.subscribe();
        assert.equal((await sender.send(target(subscription), push({ body: "x" }))).status, "sent");
        assert.equal((fake.received[0]!.payload as { body: string }).body, "x");
        assert.ok(fake.received[0]!.paddingOctets > 0);
      } finally {
        await sender.close();
      }
    } finally {
      await fake.close();
    }
  });

  it("refuses a body encrypted for another subscription", async () => {
    const tls = createTestCertificate();
    const fake = await FakePushService.start(tls);
    try {
      const keys = vapidKeys();
      const sender = new WebPushSender(configFor(keys), { ca: tls.cert });
      try {
        const { subscription } = fake.subscribe();
        const stranger = createECDH("prime256v1");
        stranger.generateKeys();
        const wrong = { ...subscription, p256dh: stranger.getPublicKey().toString("base64url") };
        const o = await sender.send(target(wrong), push());
        assert.equal(o.status, "failed");
        assert.match(fake.rejections.at(-1)!.reason, /does not decrypt/);
      } finally {
        await sender.close();
      }
    } finally {
      await fake.close();
    }
  });
});
