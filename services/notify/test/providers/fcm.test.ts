import assert from "node:assert/strict";
import { generateKeyPairSync, createPublicKey, type KeyObject } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import { ConfigError } from "../../../../lib/env.js";
import { FCM_DEFAULT_ENDPOINT, FcmSender, loadFcmConfig, type FcmConfig } from "../../src/providers/fcm.js";
import type { DeviceTarget, Push } from "../../src/providers/push-sender.js";
import { FakeFcm, FCM_SCOPE, validateRequest } from "./fcm-fake.js";

const PROJECT = "parley-test";
const CLIENT_EMAIL = "notify@parley-test.iam.gserviceaccount.com";
const KEY_ID = "0123456789abcdef";
const keys = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
  publicKeyEncoding: { type: "spki", format: "pem" },
});
const publicKey: KeyObject = createPublicKey(keys.publicKey);

/** A service-account file as the Firebase console downloads it, pointing at the fake. */
function serviceAccountJson(tokenUri: string, overrides: Record<string, unknown> = {}): string {
  return JSON.stringify({
    type: "service_account",
    project_id: PROJECT,
    private_key_id: KEY_ID,
    private_key: keys.privateKey,
    client_email: CLIENT_EMAIL,
    client_id: "100000000000000000000",
    auth_uri: "https://accounts.google.com/o/oauth2/auth",
    token_uri: tokenUri,
    ...overrides,
  });
}

const DEVICE_TOKEN = `dGVzdC1kZXZpY2U:APA91b${"x".repeat(140)}`;
const target: DeviceTarget = { platform: "fcm", token: DEVICE_TOKEN, appId: "chat.parley.android" };
const push: Push = {
  title: "Ada",
  body: "3 new messages",
  collapseKey: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
  badge: 4,
  data: { conversation_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", seq: "12" },
  ttlSeconds: 3600,
};

interface Setup {
  fake: FakeFcm;
  sender: FcmSender;
  clock: { now: number };
  config: FcmConfig;
}

/** A fake, a sender configured through loadFcmConfig against it, one shared clock; closed after the test. */
async function setup(t: TestContext, opts: { timeoutMs?: number; tokenLifetimeS?: number; saOverrides?: Record<string, unknown> } = {}): Promise<Setup> {
  const clock = { now: Date.now() };
  const now = () => clock.now;
  const fake = await FakeFcm.start({ projectId: PROJECT, clientEmail: CLIENT_EMAIL, publicKey, privateKeyId: KEY_ID, now, ...(opts.tokenLifetimeS ? { tokenLifetimeS: opts.tokenLifetimeS } : {}) });
  fake.registered.add(DEVICE_TOKEN);
  const config = loadFcmConfig({
    PARLEY_FCM_SERVICE_ACCOUNT: serviceAccountJson(fake.tokenUri, opts.saOverrides),
    PARLEY_FCM_ENDPOINT: fake.endpoint,
    ...(opts.timeoutMs ? { PARLEY_FCM_TIMEOUT_MS: String(opts.timeoutMs) } : {}),
  });
  assert.ok(config);
  const sender = new FcmSender(config, { now });
  t.after(async () => {
    await sender.close();
    await fake.close();
  });
  return { fake, sender, clock, config };
}

describe("loadFcmConfig", () => {
  it("is undefined when no service account is configured", () => {
    assert.equal(loadFcmConfig({}), undefined);
    assert.equal(loadFcmConfig({ PARLEY_FCM_SERVICE_ACCOUNT: "  " }), undefined);
  });

  it("reads the service account inline or from a file, with the default endpoint", () => {
    const inline = loadFcmConfig({ PARLEY_FCM_SERVICE_ACCOUNT: serviceAccountJson("https://oauth2.googleapis.com/token") });
    assert.ok(inline);
    assert.equal(inline.endpoint, FCM_DEFAULT_ENDPOINT);
    assert.equal(inline.timeoutMs, 10_000);
    assert.deepEqual(
      { ...inline.serviceAccount, privateKey: "" },
      { projectId: PROJECT, clientEmail: CLIENT_EMAIL, privateKey: "", privateKeyId: KEY_ID, tokenUri: "https://oauth2.googleapis.com/token" },
    );
    const dir = mkdtempSync(join(tmpdir(), "parley-fcm-"));
    try {
      const path = join(dir, "service-account.json");
      writeFileSync(path, serviceAccountJson("https://oauth2.googleapis.com/token"));
      const fromFile = loadFcmConfig({ PARLEY_FCM_SERVICE_ACCOUNT: path, PARLEY_FCM_ENDPOINT: "https://fcm.example.test/", PARLEY_FCM_TIMEOUT_MS: "2500" });
      assert.ok(fromFile);
      assert.deepEqual(fromFile.serviceAccount, inline.serviceAccount);
      assert.equal(fromFile.endpoint, "https://fcm.example.test");
      assert.equal(fromFile.timeoutMs, 2500);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("throws ConfigError on bad values", () => {
    const bad = (env: Record<string, string>, pattern: RegExp) =>
      assert.throws(() => loadFcmConfig(env), (e: unknown) => e instanceof ConfigError && pattern.test(e.message));
    const sa = (o: Record<string, unknown>) => serviceAccountJson("https://oauth2.googleapis.com/token", o);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: "/nonexistent/parley/sa.json" }, /cannot read/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: "{not json" }, /not valid JSON/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ client_email: "" }) }, /client_email/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ project_id: undefined }) }, /project_id/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ type: "authorized_user" }) }, /service_account/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ private_key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" }) }, /RSA private key/);
    const ec = generateKeyPairSync("ec", { namedCurve: "P-256", privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } });
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ private_key: ec.privateKey }) }, /not RSA/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({ token_uri: "http://oauth.example.test/token" }) }, /token_uri.*https/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({}), PARLEY_FCM_ENDPOINT: "http://fcm.example.test" }, /PARLEY_FCM_ENDPOINT/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({}), PARLEY_FCM_ENDPOINT: "not a url" }, /not a URL/);
    bad({ PARLEY_FCM_SERVICE_ACCOUNT: sa({}), PARLEY_FCM_TIMEOUT_MS: "0" }, /PARLEY_FCM_TIMEOUT_MS/);
  });
});

describe("the fake FCM", () => {
  it("refuses what FCM refuses in a message", () => {
    const ok = { message: { token: "t", data: { a: "1" }, android: { ttl: "60s", collapse_key: "k" } } };
    assert.equal(validateRequest(ok), undefined);
    assert.equal(validateRequest({ message: { token: "t", data: { a: 1 } } })?.field, "message.data[0].value");
    assert.equal(validateRequest({ message: { token: "t", data: { from: "x" } } })?.field, "message.data");
    assert.equal(validateRequest({ message: { token: "t", android: { ttl: 60 } } })?.field, "message.android.ttl");
    assert.equal(validateRequest({ message: { token: "t", android: { collapsekey: "k" } } })?.field, "message.android");
    assert.equal(validateRequest({ message: { token: "t", apns: { headers: { "apns-collapse-id": "x".repeat(65) } } } })?.field, "message.apns.headers.apns-collapse-id");
    assert.equal(validateRequest({ message: { data: {} } })?.description, "Recipient of the message is not set.");
    assert.equal(validateRequest({ message: { token: "t", topic: "news" } })?.description, "Recipient of the message is not set.");
    assert.equal(validateRequest({ msg: {} })?.description.includes('Unknown name "msg"'), true);
  });
});

describe("FcmSender against a fake FCM", () => {
  it("exchanges a signed JWT for a token and sends the message FCM expects", async (t) => {
    const { fake, sender, clock } = await setup(t);
    const outcome = await sender.send(target, push);
    assert.equal(outcome.status, "sent");
    assert.match(outcome.status === "sent" ? (outcome.providerId ?? "") : "", new RegExp(`^projects/${PROJECT}/messages/`));

    // The token exchange: verified by the fake with the public key; these are the claims.
    assert.deepEqual(fake.rejectedAssertions, []);
    assert.equal(fake.assertions.length, 1);
    const { header, claims } = fake.assertions[0]!;
    assert.equal(header.alg, "RS256");
    assert.equal(header.kid, KEY_ID);
    assert.equal(claims.iss, CLIENT_EMAIL);
    assert.equal(claims.aud, fake.tokenUri);
    assert.equal(claims.scope, FCM_SCOPE);
    assert.equal(claims.iat, Math.floor(clock.now / 1000));
    assert.ok((claims.exp as number) - (claims.iat as number) <= 3600);

    // The send: authorized with the issued token, body in the v1 shape.
    assert.deepEqual(fake.rejectedSends, []);
    assert.equal(fake.accepted.length, 1);
    const sent = fake.accepted[0]!;
    assert.match(sent.headers["content-type"] ?? "", /^application\/json/);
    const m = sent.message;
    assert.equal(m.token, DEVICE_TOKEN);
    assert.deepEqual(m.notification, { title: "Ada", body: "3 new messages" });
    assert.deepEqual(m.data, push.data);
    assert.deepEqual(m.android, { collapse_key: push.collapseKey, priority: "HIGH", ttl: "3600s", notification: { notification_count: 4 } });
    const apns = m.apns as { headers: Record<string, string>; payload: unknown };
    // The collapse key is 73 bytes, more than APNs allows: it goes as its SHA-256.
    assert.match(apns.headers["apns-collapse-id"]!, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(apns.headers["apns-expiration"], String(Math.floor(clock.now / 1000) + 3600));
    assert.equal(apns.headers["apns-priority"], "10");
    assert.deepEqual(apns.payload, { aps: { badge: 4 } });

    // The same collapse key gives the same APNs collapse id; a short one goes as it is.
    await sender.send(target, push);
    await sender.send(target, { ...push, collapseKey: "conv-1", badge: undefined, data: {} } as Push);
    const [first, second, third] = fake.accepted.map((a) => (a.message.apns as { headers: Record<string, string> }).headers["apns-collapse-id"]);
    assert.equal(second, first);
    assert.equal(third, "conv-1");
    assert.equal((fake.accepted[2]!.message.apns as { payload?: unknown }).payload, undefined);
  });

  it("reports a token FCM does not know (404 UNREGISTERED) or refuses (400 on message.token) as invalid", async (t) => {
    const { fake, sender } = await setup(t);
    const unregistered = await sender.send({ ...target, token: `${DEVICE_TOKEN}-gone` }, push);
    assert.equal(unregistered.status, "invalid-token");
    assert.match(unregistered.status === "invalid-token" ? unregistered.reason : "", /UNREGISTERED/);
    const malformed = await sender.send({ ...target, token: "not a token!" }, push);
    assert.equal(malformed.status, "invalid-token");
    assert.deepEqual(fake.rejectedSends.map((r) => r.status), [404, 400]);

    // FCM's documented form without a field violation, only the message, is about the token too.
    fake.sendScript.push({
      kind: "respond",
      status: 400,
      body: {
        error: {
          code: 400,
          message: "The registration token is not a valid FCM registration token",
          status: "INVALID_ARGUMENT",
          details: [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", errorCode: "INVALID_ARGUMENT" }],
        },
      },
    });
    assert.equal((await sender.send(target, push)).status, "invalid-token");
  });

  it("retries on 429 and 5xx, after Retry-After when FCM gives one", async (t) => {
    const { fake, sender, clock } = await setup(t);
    const quota = { error: { code: 429, message: "Quota exceeded", status: "RESOURCE_EXHAUSTED", details: [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", errorCode: "QUOTA_EXCEEDED" }] } };
    fake.sendScript.push(
      { kind: "respond", status: 429, body: quota, headers: { "retry-after": "30" } },
      { kind: "respond", status: 503, body: { error: { code: 503, message: "The service is currently unavailable.", status: "UNAVAILABLE" } }, headers: { "retry-after": new Date(clock.now + 120_000).toUTCString() } },
      { kind: "respond", status: 500, body: { error: { code: 500, message: "Internal error encountered.", status: "INTERNAL" } } },
    );
    const rateLimited = await sender.send(target, push);
    assert.deepEqual(rateLimited, { status: "retry", reason: "fcm: HTTP 429 QUOTA_EXCEEDED Quota exceeded", retryAfterMs: 30_000 });
    const unavailable = await sender.send(target, push);
    assert.equal(unavailable.status, "retry");
    const after = unavailable.status === "retry" ? (unavailable.retryAfterMs ?? -1) : -1;
    assert.ok(after > 118_000 && after <= 120_000, `retryAfterMs ${after}`);
    const internal = await sender.send(target, push);
    assert.equal(internal.status, "retry");
    assert.equal(internal.status === "retry" ? internal.retryAfterMs : -1, undefined);
    assert.equal(fake.sendRequests, 3);
    assert.equal(fake.tokenRequests, 1);
  });

  it("fails permanently on a bad payload, a wrong project and refused credentials", async (t) => {
    const { fake, sender } = await setup(t);
    // A reserved data key: FCM answers 400 with a field violation on message.data, not on the token.
    const badPayload = await sender.send(target, { ...push, data: { from: "x" } });
    assert.equal(badPayload.status, "failed");
    assert.match(badPayload.status === "failed" ? badPayload.reason : "", /HTTP 400 INVALID_ARGUMENT Invalid data payload key: from/);
    // Too big: 400 INVALID_ARGUMENT without details.
    const tooBig = await sender.send(target, { ...push, body: "x".repeat(5000) });
    assert.equal(tooBig.status, "failed");
    assert.deepEqual(fake.rejectedSends.map((r) => r.status), [400, 400]);
    assert.equal(fake.accepted.length, 0);

    const { fake: fake2, sender: wrongProject } = await setup(t, { saOverrides: { project_id: "someone-else" } });
    const denied = await wrongProject.send(target, push);
    assert.equal(denied.status, "failed");
    assert.match(denied.status === "failed" ? denied.reason : "", /HTTP 403 PERMISSION_DENIED/);
    assert.equal(fake2.accepted.length, 0);

    // A key the token endpoint does not know: invalid_grant, the send never happens.
    const other = generateKeyPairSync("rsa", { modulusLength: 2048, privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } });
    const { fake: fake3, sender: wrongKey } = await setup(t, { saOverrides: { private_key: other.privateKey } });
    const refused = await wrongKey.send(target, push);
    assert.equal(refused.status, "failed");
    assert.match(refused.status === "failed" ? refused.reason : "", /token exchange refused \(HTTP 400 invalid_grant/);
    assert.equal(fake3.rejectedAssertions.length, 1);
    assert.equal(fake3.sendRequests, 0);
  });

  it("on 401 gets a new token and tries once more, then fails", async (t) => {
    const { fake, sender } = await setup(t);
    assert.equal((await sender.send(target, push)).status, "sent");
    fake.revokeTokens();
    assert.equal((await sender.send(target, push)).status, "sent");
    assert.equal(fake.tokenRequests, 2);
    assert.deepEqual(fake.rejectedSends.map((r) => r.status), [401]);
    assert.equal(fake.accepted.length, 2);
    assert.notEqual(fake.accepted[1]!.accessToken, fake.accepted[0]!.accessToken);

    const unauthenticated = { error: { code: 401, message: "Request had invalid authentication credentials.", status: "UNAUTHENTICATED" } };
    fake.sendScript.push({ kind: "respond", status: 401, body: unauthenticated }, { kind: "respond", status: 401, body: unauthenticated });
    const outcome = await sender.send(target, push);
    assert.equal(outcome.status, "failed");
    assert.equal(fake.sendRequests, 5);
    assert.equal(fake.tokenRequests, 3);

    // APNs/Web Push credentials of the Firebase project are wrong: a new token would not help.
    fake.sendScript.push({ kind: "respond", status: 401, body: { error: { ...unauthenticated.error, details: [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", errorCode: "THIRD_PARTY_AUTH_ERROR" }] } } });
    const thirdParty = await sender.send(target, push);
    assert.equal(thirdParty.status, "failed");
    assert.match(thirdParty.status === "failed" ? thirdParty.reason : "", /THIRD_PARTY_AUTH_ERROR/);
    assert.equal(fake.tokenRequests, 3);
  });

  it("retries when the connection drops, the request times out or the caller aborts", async (t) => {
    const { fake, sender } = await setup(t, { timeoutMs: 300 });
    fake.sendScript.push({ kind: "destroy" });
    const dropped = await sender.send(target, push);
    assert.equal(dropped.status, "retry");
    assert.match(dropped.status === "retry" ? dropped.reason : "", /send failed/);

    // No answer within the configured deadline (300 ms).
    fake.sendScript.push({ kind: "hang" });
    const timedOut = await sender.send(target, push);
    assert.deepEqual(timedOut, { status: "retry", reason: "fcm: send timed out" });

    // The caller gives up as soon as the fake holds the request.
    fake.sendScript.push({ kind: "hang" });
    const ac = new AbortController();
    const hung = once(fake.events, "hang").then(() => ac.abort());
    const aborted = await sender.send(target, push, ac.signal);
    await hung;
    assert.deepEqual(aborted, { status: "retry", reason: "fcm: send aborted" });

    // The token endpoint misbehaves: 503, then a dropped connection; nothing is sent meanwhile.
    fake.revokeTokens();
    fake.tokenScript.push(
      { kind: "respond", status: 503, body: { error: "temporarily_unavailable" }, headers: { "retry-after": "5" } },
      { kind: "destroy" },
    );
    const sendsBefore = fake.sendRequests;
    // The revoked token is still cached: the send gets 401, then the exchange answers 503.
    const tokenDown = await sender.send(target, push);
    assert.deepEqual(tokenDown, { status: "retry", reason: "fcm: token exchange refused (HTTP 503 temporarily_unavailable)", retryAfterMs: 5000 });
    const tokenDropped = await sender.send(target, push);
    assert.equal(tokenDropped.status, "retry");
    assert.match(tokenDropped.status === "retry" ? tokenDropped.reason : "", /token exchange failed/);
    assert.equal(fake.sendRequests, sendsBefore + 1);
    assert.equal((await sender.send(target, push)).status, "sent");
  });

  it("retries when nothing listens at all", async (t) => {
    const { fake, sender } = await setup(t);
    await fake.close();
    const outcome = await sender.send(target, push);
    assert.equal(outcome.status, "retry");
    assert.match(outcome.status === "retry" ? outcome.reason : "", /token exchange failed/);
  });

  it("reuses one access token until shortly before it expires, one exchange for concurrent sends", async (t) => {
    const { fake, sender, clock } = await setup(t, { tokenLifetimeS: 3600 });
    const outcomes = await Promise.all(Array.from({ length: 8 }, () => sender.send(target, push)));
    assert.deepEqual(outcomes.map((o) => o.status), Array(8).fill("sent"));
    assert.equal(fake.tokenRequests, 1);
    for (let i = 0; i < 5; i++) assert.equal((await sender.send(target, push)).status, "sent");
    assert.equal(fake.tokenRequests, 1);

    clock.now += 50 * 60_000; // 50 of 60 minutes: still well before expiry
    assert.equal((await sender.send(target, push)).status, "sent");
    assert.equal(fake.tokenRequests, 1);

    clock.now += 6 * 60_000; // 4 minutes left: refresh before the token runs out
    assert.equal((await sender.send(target, push)).status, "sent");
    assert.equal(fake.tokenRequests, 2);
    assert.equal((await sender.send(target, push)).status, "sent");
    assert.equal(fake.tokenRequests, 2);
    assert.equal(sender.tokenExchanges, 2);
    assert.deepEqual(fake.rejectedSends, []);
    assert.equal(new Set(fake.accepted.map((a) => a.accessToken)).size, 2);
  });

  it("after close, sends are retried later and requests in flight end", async (t) => {
    const { fake, sender } = await setup(t);
    assert.equal((await sender.send(target, push)).status, "sent");
    fake.sendScript.push({ kind: "hang" });
    const inFlight = sender.send(target, push);
    await once(fake.events, "hang");
    await sender.close();
    assert.deepEqual(await inFlight, { status: "retry", reason: "fcm: sender closed" });
    assert.deepEqual(await sender.send(target, push), { status: "retry", reason: "fcm: sender closed" });
  });
});
