import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it, type TestContext } from "node:test";
import { ConfigError, type Env } from "../../../../lib/env.js";
import { ApnsSender, loadApnsConfig, type ApnsSenderOptions } from "../../src/providers/apns.js";
import type { DeviceTarget, Push } from "../../src/providers/push-sender.js";
import { FakeApns, makeTlsCert } from "./apns-fake.js";

const KEY_ID = "ABC123DEFG";
const TEAM_ID = "TEAM456XYZ";
const TOPIC = "chat.parley.ios";
const OTHER_TOPIC = "chat.parley.other";

const dir = mkdtempSync(join(tmpdir(), "parley-apns-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const tls = makeTlsCert(dir);
const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
const keyPath = join(dir, `AuthKey_${KEY_ID}.p8`);
writeFileSync(keyPath, keyPem);

function env(endpoint: string, extra: Env = {}): Env {
  return {
    PARLEY_APNS_KEY: keyPath,
    PARLEY_APNS_KEY_ID: KEY_ID,
    PARLEY_APNS_TEAM_ID: TEAM_ID,
    PARLEY_APNS_TOPIC: TOPIC,
    PARLEY_APNS_ENDPOINT: endpoint,
    PARLEY_APNS_CA: tls.certPath,
    ...extra,
  };
}

async function setup(t: TestContext, opts: { env?: Env; sender?: ApnsSenderOptions } = {}) {
  const clock = { ms: Date.now() };
  const fake = await FakeApns.start({ tls, keys: [{ keyId: KEY_ID, teamId: TEAM_ID, publicKey }], topics: [TOPIC, OTHER_TOPIC], now: () => clock.ms });
  const cfg = loadApnsConfig(env(fake.origin, opts.env));
  assert.ok(cfg, "APNs is configured");
  const sender = new ApnsSender(cfg, { now: () => clock.ms, ...opts.sender });
  t.after(async () => {
    await sender.close();
    await fake.close();
  });
  const device = (topic = TOPIC): DeviceTarget => {
    const token = randomBytes(32).toString("hex");
    fake.addDevice(token, topic);
    return { platform: "apns", token, appId: topic };
  };
  return { clock, fake, sender, device };
}

const push = (over: Partial<Push> = {}): Push => ({
  title: "Alice",
  body: "Lunch at noon?",
  collapseKey: "u1:c1",
  badge: 3,
  data: { conversation_id: "c1", seq: "42" },
  ttlSeconds: 3600,
  ...over,
});

describe("loadApnsConfig", () => {
  it("is undefined when APNs is not configured", () => {
    assert.equal(loadApnsConfig({}), undefined);
    assert.equal(loadApnsConfig({ PARLEY_APNS_TOPIC: TOPIC }), undefined);
  });

  it("reads the key from a path or inline, with the production endpoint by default", () => {
    const fromPath = loadApnsConfig({ PARLEY_APNS_KEY: keyPath, PARLEY_APNS_KEY_ID: KEY_ID, PARLEY_APNS_TEAM_ID: TEAM_ID });
    assert.deepEqual(fromPath, { keyPem, keyId: KEY_ID, teamId: TEAM_ID, endpoint: "https://api.push.apple.com" });
    const inline = loadApnsConfig({
      PARLEY_APNS_KEY: keyPem.replace(/\n/g, "\\n"),
      PARLEY_APNS_KEY_ID: KEY_ID,
      PARLEY_APNS_TEAM_ID: TEAM_ID,
      PARLEY_APNS_TOPIC: TOPIC,
      PARLEY_APNS_ENDPOINT: "https://api.sandbox.push.apple.com",
      PARLEY_APNS_CA: tls.certPath,
    });
    assert.deepEqual(inline, {
      keyPem,
      keyId: KEY_ID,
      teamId: TEAM_ID,
      defaultTopic: TOPIC,
      endpoint: "https://api.sandbox.push.apple.com",
      caPem: tls.cert,
    });
  });

  it("rejects partial or bad values", () => {
    const ok = env("https://api.push.apple.com");
    const bad = (over: Env, pattern: RegExp) => assert.throws(() => loadApnsConfig({ ...ok, ...over }), (e: unknown) => e instanceof ConfigError && pattern.test(e.message));
    bad({ PARLEY_APNS_KEY_ID: undefined }, /PARLEY_APNS_KEY_ID: required/);
    bad({ PARLEY_APNS_TEAM_ID: "" }, /PARLEY_APNS_TEAM_ID: required/);
    bad({ PARLEY_APNS_KEY: undefined }, /PARLEY_APNS_KEY: required/);
    bad({ PARLEY_APNS_KEY_ID: "abc" }, /PARLEY_APNS_KEY_ID/);
    bad({ PARLEY_APNS_TEAM_ID: "team-456-x" }, /PARLEY_APNS_TEAM_ID/);
    bad({ PARLEY_APNS_KEY: join(dir, "missing.p8") }, /PARLEY_APNS_KEY: cannot read/);
    bad({ PARLEY_APNS_KEY: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----" }, /PARLEY_APNS_KEY: not a readable private key/);
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }) as string;
    bad({ PARLEY_APNS_KEY: rsa }, /P-256/);
    bad({ PARLEY_APNS_ENDPOINT: "http://api.push.apple.com" }, /PARLEY_APNS_ENDPOINT/);
    bad({ PARLEY_APNS_ENDPOINT: "https://api.push.apple.com/3/device" }, /PARLEY_APNS_ENDPOINT/);
    bad({ PARLEY_APNS_ENDPOINT: "not a url" }, /PARLEY_APNS_ENDPOINT/);
    bad({ PARLEY_APNS_CA: join(dir, "missing.pem") }, /PARLEY_APNS_CA: cannot read/);
    bad({ PARLEY_APNS_CA: keyPath }, /PARLEY_APNS_CA: .* no PEM certificate/);
    bad({ PARLEY_APNS_TOPIC: "chat parley" }, /PARLEY_APNS_TOPIC/);
  });
});

describe("ApnsSender against a fake APNs (HTTP/2, TLS, ES256 provider tokens)", () => {
  it("sends an alert with the headers, provider token and body APNs checks", async (t) => {
    const { clock, fake, sender, device } = await setup(t);
    const target = device();
    const outcome = await sender.send(target, push());
    assert.equal(fake.delivered.length, 1);
    const got = fake.delivered[0]!;
    assert.deepEqual(outcome, { status: "sent", providerId: got.apnsId });
    assert.equal(got.token, target.token);
    assert.equal(got.headers[":method"], "POST");
    assert.equal(got.headers[":path"], `/3/device/${target.token}`);
    assert.equal(got.headers["apns-topic"], TOPIC);
    assert.equal(got.headers["apns-push-type"], "alert");
    assert.equal(got.headers["apns-priority"], "10");
    assert.equal(got.headers["apns-expiration"], String(Math.floor(clock.ms / 1000) + 3600));
    assert.equal(got.headers["apns-collapse-id"], "u1:c1");
    assert.equal(got.headers["content-type"], "application/json");
    assert.match(String(got.headers.authorization), /^bearer [\w-]+\.[\w-]+\.[\w-]+$/);
    assert.deepEqual(got.jwtHeader, { alg: "ES256", kid: KEY_ID });
    assert.deepEqual(got.jwtClaims, { iss: TEAM_ID, iat: Math.floor(clock.ms / 1000) });
    assert.deepEqual(got.payload, {
      conversation_id: "c1",
      seq: "42",
      aps: { alert: { title: "Alice", body: "Lunch at noon?" }, badge: 3, sound: "default", "mutable-content": 1 },
    });
  });

  it("sends the push id as apns-id (the same on a resend), and lets APNs pick one when there is none", async (t) => {
    const { fake, sender, device } = await setup(t);
    const target = device();
    const pushId = "0190f5c8-8a4b-7c3d-9e2f-123456789abc";
    assert.deepEqual(await sender.send(target, push({ pushId })), { status: "sent", providerId: pushId });
    assert.deepEqual(await sender.send(target, push({ pushId })), { status: "sent", providerId: pushId });
    assert.equal((await sender.send(target, push({ pushId: "not-a-uuid" }))).status, "sent");
    const [a, b, c] = fake.delivered;
    assert.equal(a!.headers["apns-id"], pushId);
    assert.equal(b!.headers["apns-id"], pushId);
    assert.equal(c!.headers["apns-id"], undefined, "only a UUID is an apns-id");
  });

  it("uses the configured topic when the device has no app id, and keeps collapse ids within 64 bytes", async (t) => {
    const { fake, sender, device } = await setup(t);
    const target = { ...device(), appId: "" };
    const longKey = `user:${"x".repeat(80)}:conversation:é`;
    assert.equal((await sender.send(target, push({ collapseKey: longKey, badge: undefined, ttlSeconds: 0 }))).status, "sent");
    assert.equal((await sender.send(target, push({ collapseKey: longKey }))).status, "sent");
    assert.equal((await sender.send(target, push({ collapseKey: "" }))).status, "sent");
    const [a, b, c] = fake.delivered;
    assert.equal(a!.headers["apns-topic"], TOPIC);
    assert.equal(a!.headers["apns-expiration"], "0");
    assert.equal((a!.payload.aps as Record<string, unknown>).badge, undefined);
    const id = String(a!.headers["apns-collapse-id"]);
    assert.ok(Buffer.byteLength(id) <= 64, `collapse id ${id} is over 64 bytes`);
    assert.equal(b!.headers["apns-collapse-id"], id, "the same key collapses the same way");
    assert.equal(c!.headers["apns-collapse-id"], undefined);

    // Another app's device: its own topic. No topic at all: nothing is sent.
    const other = device(OTHER_TOPIC);
    assert.equal((await sender.send(other, push())).status, "sent");
    assert.equal(fake.delivered[3]!.headers["apns-topic"], OTHER_TOPIC);
    const cfg = loadApnsConfig(env(fake.origin, { PARLEY_APNS_TOPIC: undefined }))!;
    const noTopic = new ApnsSender(cfg);
    t.after(() => noTopic.close());
    const outcome = await noTopic.send(target, push());
    assert.equal(outcome.status, "failed");
    assert.equal(fake.requests, 4);
  });

  it("shortens a long alert body to fit 4 KB and fails a push whose data alone is too large", async (t) => {
    const { fake, sender, device } = await setup(t);
    const target = device();
    const long = "héllo \"wörld\"\n".repeat(600);
    assert.equal((await sender.send(target, push({ body: long }))).status, "sent");
    const got = fake.delivered[0]!;
    assert.ok(got.bodyBytes <= 4096 && got.bodyBytes > 3900, `body is ${got.bodyBytes} bytes`);
    const alert = (got.payload.aps as { alert: { body: string } }).alert;
    assert.ok(alert.body.endsWith("…") && long.startsWith(alert.body.slice(0, -1)), "the body is a prefix of the text and an ellipsis");
    const outcome = await sender.send(target, push({ data: { blob: "x".repeat(5000) } }));
    assert.equal(outcome.status, "failed");
    assert.match((outcome as { reason: string }).reason, /PayloadTooLarge/);
    assert.equal(fake.requests, 1);
  });

  it("sends concurrent pushes over one HTTP/2 connection with one provider token, and reconnects when it closes", async (t) => {
    const { fake, sender, device } = await setup(t);
    const targets = Array.from({ length: 20 }, () => device());
    const outcomes = await Promise.all(targets.map((target) => sender.send(target, push())));
    assert.deepEqual(new Set(outcomes.map((o) => o.status)), new Set(["sent"]));
    assert.equal(fake.sessionsOpened, 1);
    assert.equal(fake.jwtsSeen.size, 1);

    fake.dropConnections();
    assert.equal((await sender.send(targets[0]!, push())).status, "sent");
    assert.equal(fake.sessionsOpened, 2);
    assert.equal(fake.jwtsSeen.size, 1, "the provider token outlives the connection");
  });

  it("reuses the provider token for 50 minutes, then signs a new one", async (t) => {
    const { clock, fake, sender, device } = await setup(t);
    const target = device();
    const start = clock.ms;
    for (let i = 0; i < 5; i++) assert.equal((await sender.send(target, push())).status, "sent");
    clock.ms = start + 49 * 60_000;
    assert.equal((await sender.send(target, push())).status, "sent");
    assert.equal(fake.jwtsSeen.size, 1);
    clock.ms = start + 51 * 60_000;
    assert.equal((await sender.send(target, push())).status, "sent");
    assert.equal(fake.jwtsSeen.size, 2);
    assert.equal(fake.delivered.at(-1)!.jwtClaims.iat, Math.floor(clock.ms / 1000));
    clock.ms = start + 100 * 60_000;
    assert.equal((await sender.send(target, push())).status, "sent");
    assert.equal(fake.jwtsSeen.size, 2, "49 minutes after the second token: still the second");
  });

  it("the fake refuses a provider token refreshed within 20 minutes on one connection", async (t) => {
    const { clock, fake, device } = await setup(t);
    const target = device();
    const eager = new ApnsSender(loadApnsConfig(env(fake.origin))!, { now: () => clock.ms, tokenMaxAgeMs: 5 * 60_000 });
    t.after(() => eager.close());
    assert.equal((await eager.send(target, push())).status, "sent");
    clock.ms += 6 * 60_000;
    assert.deepEqual(await eager.send(target, push()), { status: "retry", reason: "TooManyProviderTokenUpdates" });
    assert.equal(fake.delivered.length, 1);
  });

  it("signs a new token and retries once when APNs answers ExpiredProviderToken", async (t) => {
    const { clock, fake, sender, device } = await setup(t);
    const target = device();
    assert.equal((await sender.send(target, push())).status, "sent");
    clock.ms += 30 * 60_000;
    fake.script(target.token, { kind: "respond", status: 403, reason: "ExpiredProviderToken" });
    assert.equal((await sender.send(target, push())).status, "sent");
    assert.equal(fake.jwtsSeen.size, 2);
    assert.equal(fake.requests, 3);

    // Expired again right after the new token: one retry only, then "retry later".
    fake.script(target.token, { kind: "respond", status: 403, reason: "ExpiredProviderToken" }, { kind: "respond", status: 403, reason: "ExpiredProviderToken" });
    clock.ms += 30 * 60_000;
    const outcome = await sender.send(target, push());
    assert.equal(outcome.status, "retry");
    assert.equal(fake.requests, 5);
  });

  it("reports invalid device tokens so the device is removed", async (t) => {
    const { clock, fake, sender, device } = await setup(t);
    const gone = device();
    fake.unregistered.set(gone.token, clock.ms - 1000);
    assert.deepEqual(await sender.send(gone, push()), { status: "invalid-token", reason: "Unregistered" });
    const unknown: DeviceTarget = { platform: "apns", token: randomBytes(32).toString("hex"), appId: TOPIC };
    assert.deepEqual(await sender.send(unknown, push()), { status: "invalid-token", reason: "BadDeviceToken" });
    const otherApp = { ...device(OTHER_TOPIC), appId: TOPIC };
    assert.deepEqual(await sender.send(otherApp, push()), { status: "invalid-token", reason: "DeviceTokenNotForTopic" });
    assert.equal(fake.requests, 3);
    // Not hex: never sent.
    assert.equal((await sender.send({ platform: "apns", token: "../../x", appId: TOPIC }, push())).status, "invalid-token");
    assert.equal(fake.requests, 3);
  });

  it("asks to retry on 429 and 5xx, with Retry-After when given", async (t) => {
    const { clock, fake, sender, device } = await setup(t);
    const target = device();
    const retryAt = new Date(Math.floor(clock.ms / 1000) * 1000 + 30_000).toUTCString();
    fake.script(
      target.token,
      { kind: "respond", status: 429, reason: "TooManyRequests", retryAfter: "7" },
      { kind: "respond", status: 500, reason: "InternalServerError" },
      { kind: "respond", status: 503, reason: "ServiceUnavailable", retryAfter: retryAt },
    );
    assert.deepEqual(await sender.send(target, push()), { status: "retry", reason: "TooManyRequests", retryAfterMs: 7000 });
    assert.deepEqual(await sender.send(target, push()), { status: "retry", reason: "InternalServerError" });
    const outcome = await sender.send(target, push());
    assert.equal(outcome.status, "retry");
    assert.equal((outcome as { retryAfterMs?: number }).retryAfterMs, Math.floor(clock.ms / 1000) * 1000 + 30_000 - clock.ms);
    assert.equal((await sender.send(target, push())).status, "sent");
  });

  it("fails permanently on bad credentials and requests APNs refuses", async (t) => {
    const { fake, device } = await setup(t);
    const target = device();
    // A key APNs does not know for this key id: the signature does not verify.
    const stranger = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({ type: "pkcs8", format: "pem" }) as string;
    const badKey = new ApnsSender(loadApnsConfig(env(fake.origin, { PARLEY_APNS_KEY: stranger }))!);
    t.after(() => badKey.close());
    assert.deepEqual(await badKey.send(target, push()), { status: "failed", reason: "InvalidProviderToken" });
    // The right key under the wrong team.
    const badTeam = new ApnsSender(loadApnsConfig(env(fake.origin, { PARLEY_APNS_TEAM_ID: "OTHER12345" }))!);
    t.after(() => badTeam.close());
    assert.deepEqual(await badTeam.send(target, push()), { status: "failed", reason: "InvalidProviderToken" });
    // A topic this key may not push to.
    const good = new ApnsSender(loadApnsConfig(env(fake.origin))!);
    t.after(() => good.close());
    assert.deepEqual(await good.send({ ...target, appId: "com.example.notours" }, push()), { status: "failed", reason: "TopicDisallowed" });
    // Another 400 and a 413, as scripted.
    fake.script(target.token, { kind: "respond", status: 400, reason: "BadPriority" }, { kind: "respond", status: 413, reason: "PayloadTooLarge" });
    assert.deepEqual(await good.send(target, push()), { status: "failed", reason: "BadPriority" });
    assert.deepEqual(await good.send(target, push()), { status: "failed", reason: "PayloadTooLarge" });
    assert.equal(fake.delivered.length, 0);
  });

  it("asks to retry when the connection drops, is refused, times out or is aborted", async (t) => {
    const { fake, sender, device } = await setup(t, { sender: {} });
    const target = device();

    // Dropped on a reused connection: tried once more on a new one (APNs closes idle
    // connections); dropped again on that fresh one: retry later.
    assert.equal((await sender.send(target, push())).status, "sent");
    fake.script(target.token, { kind: "destroy" }, { kind: "destroy" });
    const dropped = await sender.send(target, push());
    assert.equal(dropped.status, "retry");
    assert.equal(fake.sessionsOpened, 2);
    assert.equal((await sender.send(target, push())).status, "sent", "a new connection after the drop");
    assert.equal(fake.sessionsOpened, 3);
    fake.script(target.token, { kind: "destroy" });
    assert.equal((await sender.send(target, push())).status, "sent", "one drop on a reused connection: sent on a new one");
    assert.equal(fake.sessionsOpened, 4);

    fake.script(target.token, { kind: "stall" });
    const controller = new AbortController();
    void fake.waitForRequest(target.token).then(() => controller.abort());
    assert.deepEqual(await sender.send(target, push(), controller.signal), { status: "retry", reason: "network: aborted" });
    assert.deepEqual(await sender.send(target, push(), controller.signal), { status: "retry", reason: "aborted before sending" });
    assert.equal((await sender.send(target, push())).status, "sent", "the connection survives a cancelled stream");

    const impatient = new ApnsSender(loadApnsConfig(env(fake.origin))!, { timeoutMs: 50 });
    t.after(() => impatient.close());
    fake.script(target.token, { kind: "stall" });
    const late = await impatient.send(target, push());
    assert.equal(late.status, "retry");
    assert.match((late as { reason: string }).reason, /no answer within 50 ms/);

    // Nothing listens on this port.
    const port = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, "127.0.0.1", () => {
        const p = (probe.address() as { port: number }).port;
        probe.close(() => resolve(p));
      });
    });
    const nowhere = new ApnsSender(loadApnsConfig(env(`https://127.0.0.1:${port}`))!);
    t.after(() => nowhere.close());
    const refused = await nowhere.send(target, push());
    assert.equal(refused.status, "retry");
    assert.match((refused as { reason: string }).reason, /ECONNREFUSED/);
  });

  it("does not talk to a server it does not trust", async (t) => {
    const { fake, device } = await setup(t);
    const untrusting = new ApnsSender(loadApnsConfig(env(fake.origin, { PARLEY_APNS_CA: undefined }))!);
    t.after(() => untrusting.close());
    const outcome = await untrusting.send(device(), push());
    assert.equal(outcome.status, "retry");
    assert.match((outcome as { reason: string }).reason, /certificate/);
    assert.equal(fake.requests, 0);
  });

  it("closes its connection on close and sends nothing after", async (t) => {
    const { fake, sender, device } = await setup(t);
    const target = device();
    assert.equal((await sender.send(target, push())).status, "sent");
    assert.equal(fake.openSessions, 1);
    await sender.close();
    const deadline = Date.now() + 5000;
    while (fake.openSessions > 0 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    assert.equal(fake.openSessions, 0);
    assert.equal((await sender.send(target, push())).status, "retry");
    assert.equal(fake.requests, 1);
  });
});
