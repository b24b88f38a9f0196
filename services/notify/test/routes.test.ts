import assert from "node:assert/strict";
import { createECDH, randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { toJsonString, type MessageInitShape } from "@bufbuild/protobuf";
import { pino } from "pino";
import {
  ConversationKind,
  ListDevicesResponseSchema,
  NotifyService,
  PushPlatform,
  PushPrivacy,
  RegisterDeviceRequestSchema,
} from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import type { Sql } from "../../../lib/sql.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { loadConfig } from "../src/config.js";
import { NotifyContext } from "../src/context.js";
import { LogSender } from "../src/log-sender.js";
import { notifyRoutes } from "../src/routes.js";
import { FakeClock, FakeDirectory, FakeGroups, ScriptedSender } from "./fakes.js";

const T0 = 1_700_000_000_000;
const logger = createLogger("notify-test", "silent");

type RegisterInit = MessageInitShape<typeof RegisterDeviceRequestSchema>;

function webPushKeys(): { p256dh: string; auth: string } {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return { p256dh: ecdh.getPublicKey().toString("base64url"), auth: randomBytes(16).toString("base64url") };
}

async function rejectsWith(call: Promise<unknown>, code: Code, field?: string): Promise<void> {
  await assert.rejects(call, (e: unknown) => {
    const err = ConnectError.from(e);
    assert.equal(err.code, code, `code of: ${err.message}`);
    if (field) assert.ok(err.rawMessage.startsWith(`${field}:`), `"${err.rawMessage}" names ${field}`);
    return true;
  });
}

describe("NotifyService routes", () => {
  let sql: Sql;
  let clock: FakeClock;
  let groups: FakeGroups;
  let fcm: ScriptedSender;
  let ctx: NotifyContext;
  let client: Client<typeof NotifyService>;
  let strict: NotifyContext;
  let strictClient: Client<typeof NotifyService>;

  before(async () => {
    sql = await openPglite();
    clock = new FakeClock(T0);
    groups = new FakeGroups();
    fcm = new ScriptedSender("fcm");
    ctx = await NotifyContext.fromConfig(loadConfig({ PARLEY_NOTIFY_MAX_DEVICES: "3" }), {
      sql,
      candidates: groups,
      users: new FakeDirectory(),
      senders: { fcm },
      clock: clock.now,
      logger,
      start: false,
    });
    client = createClient(NotifyService, inProcess(notifyRoutes(ctx)));
    strict = await NotifyContext.fromConfig(loadConfig({ PARLEY_NOTIFY_REQUIRE_PROVIDERS: "true" }), {
      sql,
      candidates: groups,
      users: new FakeDirectory(),
      senders: { fcm },
      clock: clock.now,
      logger,
      start: false,
    });
    strictClient = createClient(NotifyService, inProcess(notifyRoutes(strict)));
  });

  after(async () => {
    await ctx.close();
    await strict.close();
    await sql.close();
  });

  const fcmDevice = (userId: string, token = `fcm:${randomUuid()}`): RegisterInit => ({
    userId,
    platform: PushPlatform.FCM,
    token,
    appId: "com.example.chat",
    label: "Ann's phone",
  });

  describe("RegisterDevice", () => {
    it("registers a device and shows only a hint of its token", async () => {
      const user = randomUuid();
      const token = `tok_${"a".repeat(150)}xyz123`;
      const res = await client.registerDevice(fcmDevice(user, token));
      assert.equal(res.created, true);
      const d = res.device!;
      assert.equal(d.platform, PushPlatform.FCM);
      assert.equal(d.appId, "com.example.chat");
      assert.equal(d.label, "Ann's phone");
      assert.equal(d.tokenHint, "…xyz123");
      assert.equal(timestampMs(d.createdAt!), T0);
      const again = await client.registerDevice({ ...fcmDevice(user, token), label: "renamed" });
      assert.equal(again.created, false);
      assert.equal(again.device!.pushDeviceId, d.pushDeviceId);
      assert.equal(again.device!.label, "renamed");
      const listed = await client.listDevices({ userId: user });
      assert.deepEqual(listed.devices.map((x) => x.pushDeviceId), [d.pushDeviceId]);
      assert.ok(!toJsonString(ListDevicesResponseSchema, listed).includes(token), "the token never comes back");
    });

    it("accepts each platform's real token shapes", async () => {
      const user = randomUuid();
      const apns = "AB".repeat(32);
      const a = await client.registerDevice({ userId: user, platform: PushPlatform.APNS, token: apns, appId: "com.example.chat" });
      // Hex tokens are one device whatever their case.
      const b = await client.registerDevice({ userId: user, platform: PushPlatform.APNS, token: apns.toLowerCase(), appId: "com.example.chat" });
      assert.equal(b.created, false);
      assert.equal(b.device!.pushDeviceId, a.device!.pushDeviceId);
      await client.registerDevice({ userId: user, platform: PushPlatform.WEBHOOK, token: "device 42 @ crm" });
      await client.registerDevice({
        userId: user,
        platform: PushPlatform.WEB_PUSH,
        webPush: { endpoint: "https://web.push.apple.com/QGz7r1mmmhZ", ...webPushKeys() },
      });
      const platforms = (await client.listDevices({ userId: user })).devices.map((d) => d.platform).sort();
      assert.deepEqual(platforms, [PushPlatform.APNS, PushPlatform.WEB_PUSH, PushPlatform.WEBHOOK].sort());
    });

    it("rejects every malformed field with INVALID_ARGUMENT naming it", async () => {
      const user = randomUuid();
      const keys = webPushKeys();
      const wp = (sub: Partial<{ endpoint: string; p256dh: string; auth: string }>): RegisterInit => ({
        userId: user,
        platform: PushPlatform.WEB_PUSH,
        webPush: { endpoint: "https://fcm.googleapis.com/fcm/send/abc", ...keys, ...sub },
      });
      const fcmWithSubscription: RegisterInit = {
        userId: user,
        platform: PushPlatform.FCM,
        token: "fcm:abc",
        webPush: { endpoint: "https://fcm.googleapis.com/x", ...keys },
      };
      const compressed = Buffer.concat([Buffer.from([0x02]), randomBytes(64)]).toString("base64url");
      const cases: [string, RegisterInit, string][] = [
        ["bad user id", { ...fcmDevice(user), userId: "nope" }, "user_id"],
        ["no platform", { ...fcmDevice(user), platform: PushPlatform.UNSPECIFIED }, "platform"],
        ["unknown platform", { ...fcmDevice(user), platform: 99 as PushPlatform }, "platform"],
        ["fcm: empty token", fcmDevice(user, ""), "token"],
        ["fcm: token too long", fcmDevice(user, "a".repeat(4097)), "token"],
        ["fcm: bad characters", fcmDevice(user, "abc def"), "token"],
        ["fcm: a subscription", fcmWithSubscription, "web_push"],
        ["apns: too short", { userId: user, platform: PushPlatform.APNS, token: "a".repeat(63) }, "token"],
        ["apns: too long", { userId: user, platform: PushPlatform.APNS, token: "a".repeat(201) }, "token"],
        ["apns: not hex", { userId: user, platform: PushPlatform.APNS, token: "g".repeat(64) }, "token"],
        ["webhook: too long", { userId: user, platform: PushPlatform.WEBHOOK, token: "a".repeat(257) }, "token"],
        ["webhook: not printable", { userId: user, platform: PushPlatform.WEBHOOK, token: "a\u0001b" }, "token"],
        ["webhook: not ASCII", { userId: user, platform: PushPlatform.WEBHOOK, token: "gerät" }, "token"],
        ["web push: a token", { ...wp({}), token: "abc" }, "token"],
        ["web push: no subscription", { userId: user, platform: PushPlatform.WEB_PUSH }, "web_push"],
        ["web push: http", wp({ endpoint: "http://fcm.googleapis.com/fcm/send/abc" }), "web_push.endpoint"],
        ["web push: not a URL", wp({ endpoint: "fcm.googleapis.com" }), "web_push.endpoint"],
        ["web push: too long", wp({ endpoint: `https://fcm.googleapis.com/${"a".repeat(2030)}` }), "web_push.endpoint"],
        ["web push: host not allowed", wp({ endpoint: "https://169.254.169.254/latest/meta-data" }), "web_push.endpoint"],
        ["web push: internal host", wp({ endpoint: "https://localhost/push" }), "web_push.endpoint"],
        ["web push: look-alike host", wp({ endpoint: "https://push.apple.com.evil.example/x" }), "web_push.endpoint"],
        ["web push: wildcard base itself", wp({ endpoint: "https://push.apple.com/x" }), "web_push.endpoint"],
        ["web push: credentials", wp({ endpoint: "https://user:pw@fcm.googleapis.com/x" }), "web_push.endpoint"],
        ["web push: other port", wp({ endpoint: "https://fcm.googleapis.com:8443/x" }), "web_push.endpoint"],
        ["web push: short key", wp({ p256dh: randomBytes(64).toString("base64url") }), "web_push.p256dh"],
        ["web push: compressed key", wp({ p256dh: compressed }), "web_push.p256dh"],
        ["web push: key off the curve", wp({ p256dh: Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 1)]).toString("base64url") }), "web_push.p256dh"],
        ["web push: key not base64url", wp({ p256dh: `${keys.p256dh.slice(0, -2)}+/` }), "web_push.p256dh"],
        ["web push: short auth", wp({ auth: randomBytes(15).toString("base64url") }), "web_push.auth"],
        ["web push: auth not base64url", wp({ auth: "not base64!" }), "web_push.auth"],
        ["app id too long", { ...fcmDevice(user), appId: "a".repeat(256) }, "app_id"],
        ["app id with spaces", { ...fcmDevice(user), appId: "com example" }, "app_id"],
        ["label too long", { ...fcmDevice(user), label: "é".repeat(65) }, "label"],
      ];
      for (const [what, req, field] of cases) {
        await assert.rejects(client.registerDevice(req), (e: unknown) => {
          const err = ConnectError.from(e);
          assert.equal(err.code, Code.InvalidArgument, `${what}: ${err.message}`);
          assert.ok(err.rawMessage.startsWith(`${field}:`), `${what}: "${err.rawMessage}" should name ${field}`);
          return true;
        });
      }
      assert.deepEqual((await client.listDevices({ userId: user })).devices, []);
      // The edges that are fine.
      await client.registerDevice({ ...fcmDevice(user, "a".repeat(4096)), appId: "a".repeat(255), label: "é".repeat(64) });
      await client.registerDevice({ userId: user, platform: PushPlatform.APNS, token: "f".repeat(200) });
    });

    it("moves a device to the user who registers it now", async () => {
      const [ann, bob] = [randomUuid(), randomUuid()];
      const token = `fcm:${randomUuid()}`;
      const first = await client.registerDevice(fcmDevice(ann, token));
      const moved = await client.registerDevice(fcmDevice(bob, token));
      assert.equal(moved.created, true);
      assert.notEqual(moved.device!.pushDeviceId, first.device!.pushDeviceId);
      assert.deepEqual((await client.listDevices({ userId: ann })).devices, []);
      assert.equal((await client.listDevices({ userId: bob })).devices.length, 1);
      await rejectsWith(client.unregisterDevice({ userId: ann, pushDeviceId: first.device!.pushDeviceId }), Code.NotFound);
    });

    it("caps the devices of a user (RESOURCE_EXHAUSTED)", async () => {
      const user = randomUuid();
      for (let i = 0; i < 3; i++) await client.registerDevice(fcmDevice(user));
      await rejectsWith(client.registerDevice(fcmDevice(user)), Code.ResourceExhausted);
      assert.equal((await client.listDevices({ userId: user })).devices.length, 3);
    });

    it("refuses platforms without a provider when providers are required, else serves them with the log sender", async () => {
      const user = randomUuid();
      const apns = { userId: user, platform: PushPlatform.APNS, token: "ab".repeat(32), appId: "com.example.chat" };
      await rejectsWith(strictClient.registerDevice(apns), Code.FailedPrecondition);
      await strictClient.registerDevice(fcmDevice(user)); // a sender was given for FCM
      await client.registerDevice(apns);
      assert.ok(!ctx.configuredPlatforms.has("apns"));
      assert.ok(ctx.configuredPlatforms.has("fcm"));
    });
  });

  describe("UnregisterDevice and ListDevices", () => {
    it("removes only the caller's own device; NOT_FOUND otherwise", async () => {
      const [ann, bob] = [randomUuid(), randomUuid()];
      const d = (await client.registerDevice(fcmDevice(ann))).device!;
      await rejectsWith(client.unregisterDevice({ userId: bob, pushDeviceId: d.pushDeviceId }), Code.NotFound);
      await rejectsWith(client.unregisterDevice({ userId: ann, pushDeviceId: randomUuid() }), Code.NotFound);
      await rejectsWith(client.unregisterDevice({ userId: ann, pushDeviceId: "x" }), Code.InvalidArgument, "push_device_id");
      await rejectsWith(client.unregisterDevice({ userId: "x", pushDeviceId: d.pushDeviceId }), Code.InvalidArgument, "user_id");
      await client.unregisterDevice({ userId: ann, pushDeviceId: d.pushDeviceId });
      assert.deepEqual((await client.listDevices({ userId: ann })).devices, []);
      await rejectsWith(client.unregisterDevice({ userId: ann, pushDeviceId: d.pushDeviceId }), Code.NotFound);
      await rejectsWith(client.listDevices({ userId: "nope" }), Code.InvalidArgument, "user_id");
    });
  });

  describe("settings", () => {
    it("round-trips privacy and 'do not disturb'", async () => {
      const user = randomUuid();
      const initial = (await client.getSettings({ userId: user })).settings!;
      assert.equal(initial.privacy, PushPrivacy.FULL);
      assert.equal(initial.mutedUntil, undefined);
      let s = (await client.updateSettings({ userId: user, privacy: PushPrivacy.SENDER_ONLY })).settings!;
      assert.equal(s.privacy, PushPrivacy.SENDER_ONLY);
      s = (await client.updateSettings({ userId: user, mutedUntil: timestampFromMs(T0 + 3_600_000) })).settings!;
      assert.equal(s.privacy, PushPrivacy.SENDER_ONLY, "unchanged");
      assert.equal(timestampMs(s.mutedUntil!), T0 + 3_600_000);
      s = (await client.updateSettings({ userId: user, privacy: PushPrivacy.NONE })).settings!;
      assert.equal(timestampMs(s.mutedUntil!), T0 + 3_600_000, "unchanged");
      s = (await client.getSettings({ userId: user })).settings!;
      assert.deepEqual([s.privacy, timestampMs(s.mutedUntil!)], [PushPrivacy.NONE, T0 + 3_600_000]);
      s = (await client.updateSettings({ userId: user, unmute: true, mutedUntil: timestampFromMs(T0 + 999_999) })).settings!;
      assert.equal(s.mutedUntil, undefined, "unmute wins");
      s = (await client.updateSettings({ userId: user, mutedUntil: timestampFromMs(T0 - 1) })).settings!;
      assert.equal(s.mutedUntil, undefined, "a time in the past unmutes");
      // A mute that ended is shown as none.
      await client.updateSettings({ userId: user, mutedUntil: timestampFromMs(T0 + 10) });
      clock.nowMs = T0 + 10;
      assert.equal((await client.getSettings({ userId: user })).settings!.mutedUntil, undefined);
      clock.nowMs = T0;
    });

    it("rejects bad settings requests", async () => {
      await rejectsWith(client.getSettings({ userId: "" }), Code.InvalidArgument, "user_id");
      await rejectsWith(client.updateSettings({ userId: randomUuid(), privacy: 7 as PushPrivacy }), Code.InvalidArgument, "privacy");
      await rejectsWith(
        client.updateSettings({ userId: randomUuid(), mutedUntil: { seconds: 300_000_000_000n, nanos: 0 } }),
        Code.InvalidArgument,
        "muted_until",
      );
    });
  });

  describe("MessagesStored, GetStats, ListDeadLetters", () => {
    const item = (extra: Record<string, unknown> = {}) => ({
      conversationId: randomUuid(),
      kind: ConversationKind.GROUP,
      seq: 1n,
      messageId: randomUuid(),
      senderId: randomUuid(),
      preview: "hi",
      count: 1,
      firstStoredAt: timestampFromMs(T0),
      ...extra,
    });

    it("rejects malformed hand-overs whole", async () => {
      const before = ctx.pipeline.stats.messagesReceived;
      const cases: [Record<string, unknown>, string][] = [
        [{ conversationId: "x" }, "messages[1].conversation_id"],
        [{ kind: ConversationKind.UNSPECIFIED }, "messages[1].kind"],
        [{ seq: 0n }, "messages[1].seq"],
        [{ seq: 2n ** 60n }, "messages[1].seq"],
        [{ count: 0 }, "messages[1].count"],
        [{ messageId: "m" }, "messages[1].message_id"],
        [{ senderId: "" }, "messages[1].sender_id"],
        [{ kind: ConversationKind.DIRECT, recipientIds: ["bob"] }, "messages[1].recipient_ids[0]"],
      ];
      for (const [bad, field] of cases) {
        await rejectsWith(client.messagesStored({ messages: [item(), item(bad)] }), Code.InvalidArgument, field);
      }
      await rejectsWith(
        client.messagesStored({ messages: Array.from({ length: 1001 }, () => item()) }),
        Code.InvalidArgument,
        "messages",
      );
      assert.equal(ctx.pipeline.stats.messagesReceived, before);
      await client.messagesStored({ messages: Array.from({ length: 1000 }, () => item({ count: 2 })) });
      assert.equal(ctx.pipeline.stats.messagesReceived, before + 2000);
    });

    it("counts, pushes, and lists what failed for good (newest first)", async () => {
      const [ann, bob] = [randomUuid(), randomUuid()];
      const conversationId = randomUuid();
      groups.add(conversationId, "group", [ann, bob], "Team");
      const token = `fcm:${randomUuid()}`;
      const device = (await client.registerDevice(fcmDevice(bob, token))).device!;
      fcm.script(token, { status: "failed", reason: "INVALID_ARGUMENT: message too big" });
      const stats0 = await client.getStats({});
      await client.messagesStored({
        messages: [item({ conversationId, senderId: ann, seq: 5n, count: 2, preview: "a  very\n long   text " })],
      });
      clock.nowMs = T0 + 2000;
      // The previous test's 1,000 hand-overs are due too: run rounds until none is left.
      while ((await ctx.pipeline.tick()).more);
      clock.nowMs = T0;
      assert.equal(fcm.sentTo(token)[0]?.push.body, "a very long text (+1 more)", "the preview is one line");
      const stats = await client.getStats({});
      assert.equal(stats.messagesReceived - stats0.messagesReceived, 2n);
      assert.equal(stats.jobsDue - stats0.jobsDue >= 1n, true);
      assert.equal(stats.pushesCreated - stats0.pushesCreated, 1n);
      assert.equal(stats.deadLettered - stats0.deadLettered, 1n);
      const { deadLetters } = await client.listDeadLetters({ limit: 1 });
      assert.equal(deadLetters.length, 1);
      const [l] = deadLetters;
      assert.deepEqual(
        [l!.userId, l!.conversationId, l!.pushDeviceId, l!.platform, l!.seq, l!.attempts, l!.reason],
        [bob, conversationId, device.pushDeviceId, PushPlatform.FCM, 5n, 1, "INVALID_ARGUMENT: message too big"],
      );
      assert.equal(timestampMs(l!.failedAt!), T0 + 2000);
      assert.equal((await client.listDeadLetters({})).deadLetters.length >= 1, true, "default limit");
      await rejectsWith(client.listDeadLetters({ limit: 1001 }), Code.InvalidArgument, "limit");
    });
  });

  it("builds every platform's sender from configuration, a log sender where none is configured", async () => {
    const own = await NotifyContext.fromConfig(loadConfig({}), {
      sql,
      candidates: groups,
      users: new FakeDirectory(),
      logger,
      start: false,
    });
    try {
      assert.deepEqual([...own.configuredPlatforms], []);
      assert.deepEqual(own.readinessChecks().map((c) => c.name), ["database"]);
    } finally {
      await own.close();
    }
  });
});

describe("LogSender", () => {
  it("logs one line per push, with a hint of the token but never the token", async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString("utf8"));
        done();
      },
    });
    const sender = new LogSender("fcm", pino({ level: "info" }, sink));
    const token = "secret-registration-token-0123456789";
    const outcome = await sender.send(
      { platform: "fcm", token, appId: "" },
      { title: "Ann", body: "hi", collapseKey: "c", data: { push_id: "p", conversation_id: "c", seq: "1", count: "1" }, ttlSeconds: 60 },
    );
    assert.deepEqual(outcome, { status: "sent" });
    assert.equal(sender.sent, 1);
    assert.equal(lines.length, 1);
    assert.ok(!lines[0]!.includes(token), "no token in the log");
    assert.ok(lines[0]!.includes("…456789"), `a hint: ${lines[0]}`);
    assert.ok(!lines[0]!.includes("\"hi\""), "no message text in the log");
  });
});
