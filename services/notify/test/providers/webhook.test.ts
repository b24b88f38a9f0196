import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";
import { ConfigError } from "../../../../lib/env.js";
import type { DeviceTarget, Push } from "../../src/providers/push-sender.js";
import {
  loadWebhookConfig,
  signWebhook,
  verifyWebhookSignature,
  WebhookSender,
  type WebhookConfig,
} from "../../src/providers/webhook.js";
import { FakeWebhookReceiver } from "./webhook-fake.js";

const SECRET = randomBytes(32).toString("base64url"); // 43 bytes
const DEVICE = "device-1";

const target: DeviceTarget = { platform: "webhook", token: DEVICE, appId: "com.example.chat" };
const push: Push = {
  title: "Alice",
  body: "3 new messages",
  collapseKey: "conv-42",
  badge: 5,
  data: { conversation_id: "c-42", seq: "17", message_id: "m-1" },
  ttlSeconds: 3600,
};

/** Resolves when `cond()` holds, checked after each `event`; rejects after `ms`. */
async function until(emitter: NodeJS.EventEmitter, event: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = AbortSignal.timeout(ms);
  while (!cond()) await once(emitter, event, { signal: deadline });
}

describe("verifyWebhookSignature", () => {
  const body = '{"id":"x","title":"héllo"}';
  const t = 1_700_000_000;

  it("accepts a signature made with the secret, from a string or the raw bytes", () => {
    const header = signWebhook(SECRET, t, body);
    assert.match(header, /^t=1700000000,v1=[0-9a-f]{64}$/);
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body, t), { ok: true, timestampSeconds: t });
    assert.deepEqual(verifyWebhookSignature(Buffer.from(SECRET), header, Buffer.from(body), t + 299), {
      ok: true,
      timestampSeconds: t,
    });
  });

  it("rejects a wrong secret and a tampered body", () => {
    const header = signWebhook(SECRET, t, body);
    assert.deepEqual(verifyWebhookSignature(SECRET + "x", header, body, t), { ok: false, reason: "signature mismatch" });
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body.replace("x", "y"), t), {
      ok: false,
      reason: "signature mismatch",
    });
    // The timestamp is signed too: moving t breaks the signature.
    assert.deepEqual(verifyWebhookSignature(SECRET, header.replace(`t=${t}`, `t=${t + 1}`), body, t), {
      ok: false,
      reason: "signature mismatch",
    });
  });

  it("rejects a genuine signature outside the tolerance, either way", () => {
    const header = signWebhook(SECRET, t, body);
    assert.equal(verifyWebhookSignature(SECRET, header, body, t + 300).ok, true);
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body, t + 301), { ok: false, reason: "timestamp outside tolerance" });
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body, t - 301), { ok: false, reason: "timestamp outside tolerance" });
    assert.equal(verifyWebhookSignature(SECRET, header, body, t + 1000, 1000).ok, true);
  });

  it("accepts any matching v1 (secret rotation) and ignores other schemes", () => {
    const good = signWebhook(SECRET, t, body).split(",v1=")[1]!;
    const other = signWebhook("another secret of at least 32 bytes!", t, body).split(",v1=")[1]!;
    assert.equal(verifyWebhookSignature(SECRET, `t=${t},v1=${other},v1=${good}`, body, t).ok, true);
    assert.equal(verifyWebhookSignature(SECRET, `v0=abc,t=${t},v1=${good}`, body, t).ok, true);
    assert.equal(verifyWebhookSignature(SECRET, `t=${t},v1=${other}`, body, t).ok, false);
  });

  it("rejects malformed headers", () => {
    const v1 = signWebhook(SECRET, t, body).split(",v1=")[1]!;
    for (const header of [
      undefined,
      "",
      `v1=${v1}`,
      `t=${t}`,
      `t=abc,v1=${v1}`,
      `t=-5,v1=${v1}`,
      `t=${t},t=${t},v1=${v1}`,
      `t=${t},v1=${v1.slice(2)}`,
      `t=${t},v1=${"z".repeat(64)}`,
      `t=${t};v1=${v1}`,
    ]) {
      assert.deepEqual(verifyWebhookSignature(SECRET, header, body, t), { ok: false, reason: "malformed header" }, String(header));
    }
  });
});

describe("loadWebhookConfig", () => {
  it("is undefined when the webhook is not configured", () => {
    assert.equal(loadWebhookConfig({}), undefined);
    assert.equal(loadWebhookConfig({ PARLEY_WEBHOOK_URL: " ", PARLEY_WEBHOOK_TIMEOUT_MS: "5000" }), undefined);
  });

  it("reads the URL, secret and timeout, with a 10 s default", () => {
    assert.deepEqual(loadWebhookConfig({ PARLEY_WEBHOOK_URL: "https://hooks.example.com/push", PARLEY_WEBHOOK_SECRET: SECRET }), {
      url: "https://hooks.example.com/push",
      secret: SECRET,
      timeoutMs: 10_000,
    });
    const cfg = loadWebhookConfig({
      PARLEY_WEBHOOK_URL: "http://127.0.0.1:9000/p",
      PARLEY_WEBHOOK_SECRET: SECRET,
      PARLEY_WEBHOOK_TIMEOUT_MS: "2500",
    });
    assert.equal(cfg?.timeoutMs, 2500);
  });

  it("throws ConfigError on bad or missing values", () => {
    const ok = { PARLEY_WEBHOOK_URL: "https://hooks.example.com/push", PARLEY_WEBHOOK_SECRET: SECRET };
    for (const env of [
      { PARLEY_WEBHOOK_SECRET: SECRET },
      { PARLEY_WEBHOOK_URL: ok.PARLEY_WEBHOOK_URL },
      { ...ok, PARLEY_WEBHOOK_URL: "hooks.example.com/push" },
      { ...ok, PARLEY_WEBHOOK_URL: "ftp://hooks.example.com/push" },
      { ...ok, PARLEY_WEBHOOK_SECRET: "x".repeat(31) },
      { ...ok, PARLEY_WEBHOOK_SECRET: ` ${SECRET}` },
      { ...ok, PARLEY_WEBHOOK_TIMEOUT_MS: "ten" },
      { ...ok, PARLEY_WEBHOOK_TIMEOUT_MS: "0" },
      { ...ok, PARLEY_WEBHOOK_TIMEOUT_MS: "300001" },
    ]) {
      assert.throws(() => loadWebhookConfig(env), ConfigError, JSON.stringify(env));
    }
    // 32 bytes counted as UTF-8: 16 two-byte characters are enough.
    assert.equal(loadWebhookConfig({ ...ok, PARLEY_WEBHOOK_SECRET: "é".repeat(16) })?.secret, "é".repeat(16));
  });
});

describe("WebhookSender against a fake receiver", () => {
  let fake: FakeWebhookReceiver;
  let config: WebhookConfig;
  let sender: WebhookSender;

  before(async () => {
    fake = await FakeWebhookReceiver.start({ secret: SECRET, devices: [DEVICE] });
    config = { url: fake.url, secret: SECRET, timeoutMs: 10_000 };
    sender = new WebhookSender(config);
  });
  after(async () => {
    await sender.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  it("POSTs the signed JSON document the receiver verifies", async () => {
    const before = Date.now();
    const outcome = await sender.send(target, push);
    assert.deepEqual(fake.rejected, []);
    assert.equal(fake.accepted.length, 1);
    const got = fake.accepted[0]!;
    assert.deepEqual(outcome, { status: "sent", providerId: got.payload.id });
    assert.equal(got.headers["x-parley-push-id"], got.payload.id);
    assert.equal(got.headers["content-type"], "application/json");
    const { id, sent_at, ...rest } = got.payload;
    assert.deepEqual(rest, {
      platform: "webhook",
      device: DEVICE,
      app_id: "com.example.chat",
      title: "Alice",
      body: "3 new messages",
      collapse_key: "conv-42",
      badge: 5,
      data: { conversation_id: "c-42", seq: "17", message_id: "m-1" },
      ttl_seconds: 3600,
    });
    assert.ok(Date.parse(sent_at) >= before - 1 && Date.parse(sent_at) <= Date.now());
    // A second push gets a new id; no badge is sent as null.
    const { badge: _, ...noBadge } = push;
    const second = await sender.send(target, noBadge);
    assert.equal(second.status, "sent");
    assert.notEqual(fake.accepted[1]!.payload.id, id);
    assert.equal(fake.accepted[1]!.payload.badge, null);
  });

  it("uses the push id as the document's id, the same on every resend", async () => {
    const pushId = "0190f5c8-8a4b-7c3d-9e2f-123456789abc";
    assert.deepEqual(await sender.send(target, { ...push, pushId }), { status: "sent", providerId: pushId });
    assert.deepEqual(await sender.send(target, { ...push, pushId }), { status: "sent", providerId: pushId });
    assert.deepEqual(fake.rejected, []);
    assert.deepEqual(
      fake.accepted.map((a) => [a.payload.id, a.headers["x-parley-push-id"]]),
      [
        [pushId, pushId],
        [pushId, pushId],
      ],
    );
  });

  it("reports an unknown device (410 Gone) as an invalid token", async () => {
    const outcome = await sender.send({ ...target, token: "device-gone" }, push);
    assert.deepEqual(outcome, { status: "invalid-token", reason: "HTTP 410: unknown device" });
    assert.equal(fake.accepted.length, 1);
  });

  it("retries 429 and 5xx, after Retry-After when given (seconds or a date)", async () => {
    const at = new Date(Date.now() + 30_000).toUTCString();
    fake.script(
      { kind: "respond", status: 429, headers: { "retry-after": "7" }, body: "slow down" },
      { kind: "respond", status: 503, headers: { "retry-after": at } },
      { kind: "respond", status: 500, body: "boom" },
      { kind: "respond", status: 408 },
    );
    assert.deepEqual(await sender.send(target, push), { status: "retry", reason: "HTTP 429: slow down", retryAfterMs: 7000 });
    const unavailable = await sender.send(target, push);
    assert.equal(unavailable.status, "retry");
    assert.ok(unavailable.status === "retry" && unavailable.retryAfterMs! > 25_000 && unavailable.retryAfterMs! <= 30_000);
    assert.deepEqual(await sender.send(target, push), { status: "retry", reason: "HTTP 500: boom" });
    assert.deepEqual(await sender.send(target, push), { status: "retry", reason: "HTTP 408" });
    assert.equal(fake.accepted.length, 4);
  });

  it("fails permanently on other 4xx and on redirects", async () => {
    fake.script(
      { kind: "respond", status: 400, body: "bad payload" },
      { kind: "respond", status: 404 },
      { kind: "respond", status: 302, headers: { location: "http://127.0.0.1:1/elsewhere" } },
    );
    assert.deepEqual(await sender.send(target, push), { status: "failed", reason: "HTTP 400: bad payload" });
    assert.deepEqual(await sender.send(target, push), { status: "failed", reason: "HTTP 404" });
    assert.deepEqual(await sender.send(target, push), { status: "failed", reason: "HTTP 302" });
  });

  it("fails permanently when the receiver rejects the signature (wrong secret)", async () => {
    const wrong = new WebhookSender({ ...config, secret: "s".repeat(32) });
    try {
      assert.deepEqual(await wrong.send(target, push), { status: "failed", reason: "HTTP 401: signature mismatch" });
      assert.deepEqual(fake.rejected, [{ status: 401, reason: "signature mismatch" }]);
      assert.equal(fake.accepted.length, 0);
    } finally {
      await wrong.close();
    }
  });

  it("is rejected by the receiver when its clock is more than 5 minutes off", async () => {
    const skewed = new WebhookSender(config, { now: () => Date.now() - 301_000 });
    try {
      assert.deepEqual(await skewed.send(target, push), { status: "failed", reason: "HTTP 401: timestamp outside tolerance" });
      assert.deepEqual(fake.rejected, [{ status: 401, reason: "timestamp outside tolerance" }]);
    } finally {
      await skewed.close();
    }
  });

  it("retries when the connection is closed without an answer", async () => {
    fake.script({ kind: "destroy" });
    const outcome = await sender.send(target, push);
    assert.equal(outcome.status, "retry");
    assert.match((outcome as { reason: string }).reason, /^network: /);
    assert.equal(fake.accepted.length, 1);
    // The sender recovers on a new connection.
    assert.equal((await sender.send(target, push)).status, "sent");
  });

  it("retries when nothing listens", async () => {
    const server = http.createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    const nobody = new WebhookSender({ ...config, url: `http://127.0.0.1:${port}/parley/push` });
    try {
      assert.deepEqual(await nobody.send(target, push), { status: "retry", reason: "network: ECONNREFUSED" });
    } finally {
      await nobody.close();
    }
  });

  it("retries after the timeout, before the answer and in the middle of its body", async () => {
    const impatient = new WebhookSender({ ...config, timeoutMs: 200 });
    try {
      fake.script({ kind: "stall" }, { kind: "stall-body" });
      assert.deepEqual(await impatient.send(target, push), { status: "retry", reason: "timeout after 200 ms" });
      assert.deepEqual(await impatient.send(target, push), { status: "retry", reason: "timeout after 200 ms" });
      assert.equal(fake.accepted.length, 2);
    } finally {
      await impatient.close();
    }
  });

  it("retries when the caller's signal aborts, and does not send with an aborted signal", async () => {
    fake.script({ kind: "stall" });
    const ac = new AbortController();
    const sending = sender.send(target, push, ac.signal);
    await until(fake.events, "request", () => fake.accepted.length === 1);
    ac.abort();
    assert.deepEqual(await sending, { status: "retry", reason: "aborted" });
    assert.deepEqual(await sender.send(target, push, AbortSignal.abort()), { status: "retry", reason: "aborted" });
    assert.equal(fake.accepted.length, 1);
  });

  it("reuses one keep-alive connection for many pushes (no per-push connect or handshake)", async () => {
    const fresh = new WebhookSender(config);
    const connectionsBefore = fake.connections;
    try {
      for (let i = 0; i < 5; i++) assert.equal((await fresh.send(target, { ...push, body: `message ${i}` })).status, "sent");
      assert.equal(fake.connections - connectionsBefore, 1);
      assert.equal(new Set(fake.accepted.map((a) => a.payload.id)).size, 5);
      assert.equal(new Set(fake.accepted.map((a) => a.headers["x-parley-signature"])).size, 5);
    } finally {
      const open = fake.openConnections;
      await fresh.close();
      // close() releases the pooled connection.
      await until(fake.events, "connection-closed", () => fake.openConnections < open);
    }
    assert.deepEqual(await fresh.send(target, push), { status: "retry", reason: "webhook sender closed" });
  });
});
