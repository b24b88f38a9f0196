import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { PushPlatform, PushPrivacy } from "../../../gen/parley/client/v1/notification_service_pb.js";
import { until } from "../../../lib/testing/wait.js";
import { FakeWebhookReceiver } from "../../../services/notify/test/providers/webhook-fake.js";
import { api, FrameClient, startPlatformProcess, tempDir, type ApiClients, type RunningPlatform } from "../harness.js";
import { rejectsWith } from "../../../lib/testing/connect.js";

/**
 * The public NotificationService on the embedded platform (`npm start`: PGlite, one
 * process), with the webhook provider pointed at a local receiver: registration rules,
 * settings, and a push that really leaves the process.
 */

const SECRET = "embedded-push-secret-of-32-bytes-or-more";
const PASSWORD = "correct horse battery";

describe("public NotificationService on the embedded platform", { timeout: 120_000 }, () => {
  const data = tempDir("parley-e2e-push-");
  let platform: RunningPlatform;
  let receiver: FakeWebhookReceiver;
  const people: Record<"ann" | "ben", { id: string; token: string; api: ApiClients; json: ApiClients; username: string }> = {} as never;

  before(async () => {
    receiver = await FakeWebhookReceiver.start({ secret: SECRET, devices: ["ben-phone"] });
    platform = await startPlatformProcess(data.path, {
      PARLEY_WEBHOOK_URL: receiver.url,
      PARLEY_WEBHOOK_SECRET: SECRET,
      PARLEY_NOTIFY_DELAY_MS: "300",
      PARLEY_NOTIFY_POLL_MS: "100",
      PARLEY_PASSWORD_HASH_MEMORY_KIB: "1024",
      PARLEY_PASSWORD_HASH_ITERATIONS: "1",
    });
    const suffix = randomUUID().slice(0, 6);
    for (const who of ["ann", "ben"] as const) {
      const username = `${who}-${suffix}`;
      const res = await api(platform.publicUrl).auth.signUp({ username, password: PASSWORD, displayName: who });
      const token = res.tokens!.accessToken;
      people[who] = { id: res.user!.userId, token, username, api: api(platform.publicUrl, token), json: api(platform.publicUrl, token, false) };
    }
  });
  after(async () => {
    await platform?.stop();
    await receiver?.close();
    data.remove();
  });

  it("registers, updates, lists and removes the caller's own devices; never shows a token", async () => {
    const { ann, ben } = people;
    const token = `fcm-token-${randomUUID()}:APA91b`;
    const first = await ann.api.notifications.registerPushDevice({ platform: PushPlatform.FCM, token, label: "Pixel" });
    assert.equal(first.created, true);
    assert.equal(first.device?.platform, PushPlatform.FCM);
    assert.equal(first.device?.label, "Pixel");
    const hint = first.device?.tokenHint.replace(/^…/, "") ?? "";
    assert.ok(hint.length > 0 && hint.length < token.length / 2 && token.endsWith(hint), `a hint, not the token: ${first.device?.tokenHint}`);
    const again = await ann.json.notifications.registerPushDevice({ platform: PushPlatform.FCM, token, label: "Pixel 9" });
    assert.deepEqual([again.created, again.device?.pushDeviceId, again.device?.label], [false, first.device?.pushDeviceId, "Pixel 9"]);
    const listed = await ann.api.notifications.listPushDevices({});
    assert.deepEqual(listed.devices.map((d) => d.pushDeviceId), [first.device!.pushDeviceId]);
    const shown = JSON.stringify(listed.devices, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v));
    assert.ok(!shown.includes(token), "the token is never listed");
    // Another account cannot remove it (nor see it)...
    await rejectsWith(ben.api.notifications.removePushDevice({ pushDeviceId: first.device!.pushDeviceId }), Code.NotFound);
    assert.deepEqual((await ben.api.notifications.listPushDevices({})).devices, []);
    // ...but registering the same token moves it (a new login on the same phone).
    const moved = await ben.api.notifications.registerPushDevice({ platform: PushPlatform.FCM, token });
    assert.deepEqual((await ben.api.notifications.listPushDevices({})).devices.map((d) => d.pushDeviceId), [moved.device!.pushDeviceId]);
    assert.deepEqual((await ann.api.notifications.listPushDevices({})).devices, [], "the token left Ann's list");
    await ben.api.notifications.removePushDevice({ pushDeviceId: moved.device!.pushDeviceId });
    assert.deepEqual((await ben.api.notifications.listPushDevices({})).devices, []);
    await rejectsWith(ben.api.notifications.removePushDevice({ pushDeviceId: moved.device!.pushDeviceId }), Code.NotFound);
  });

  it("rejects bad registrations with InvalidArgument and unauthenticated calls with Unauthenticated", async () => {
    const n = people.ann.api.notifications;
    await rejectsWith(n.registerPushDevice({ token: "x" }), Code.InvalidArgument);
    await rejectsWith(n.registerPushDevice({ platform: PushPlatform.FCM, token: "" }), Code.InvalidArgument);
    await rejectsWith(n.registerPushDevice({ platform: PushPlatform.FCM, token: "has spaces" }), Code.InvalidArgument);
    await rejectsWith(n.registerPushDevice({ platform: PushPlatform.APNS, token: "not-hex" }), Code.InvalidArgument);
    await rejectsWith(n.registerPushDevice({ platform: PushPlatform.WEB_PUSH, token: "x" }), Code.InvalidArgument);
    await rejectsWith(
      n.registerPushDevice({ platform: PushPlatform.WEB_PUSH, webPush: { endpoint: "http://127.0.0.1:1/internal", p256dh: "x", auth: "y" } }),
      Code.InvalidArgument,
    );
    await rejectsWith(n.registerPushDevice({ platform: PushPlatform.FCM, token: "abc", label: "x".repeat(65) }), Code.InvalidArgument);
    await rejectsWith(n.removePushDevice({ pushDeviceId: "nope" }), Code.InvalidArgument);
    await rejectsWith(api(platform.publicUrl).notifications.listPushDevices({}), Code.Unauthenticated);
  });

  it("keeps privacy and mute settings per user", async () => {
    const n = people.ann.api.notifications;
    assert.equal((await n.getNotificationSettings({})).settings?.privacy, PushPrivacy.FULL);
    const until = Date.now() + 3_600_000;
    const set = await n.updateNotificationSettings({ privacy: PushPrivacy.SENDER_ONLY, mutedUntil: timestampFromMs(until) });
    assert.equal(set.settings?.privacy, PushPrivacy.SENDER_ONLY);
    assert.equal(Math.round(timestampMs(set.settings!.mutedUntil!) / 1000), Math.round(until / 1000));
    const unmuted = await n.updateNotificationSettings({ unmute: true });
    assert.deepEqual([unmuted.settings?.privacy, unmuted.settings?.mutedUntil], [PushPrivacy.SENDER_ONLY, undefined]);
    await n.updateNotificationSettings({ privacy: PushPrivacy.FULL });
    assert.equal((await people.ben.api.notifications.getNotificationSettings({})).settings?.privacy, PushPrivacy.FULL);
  });

  it("pushes to an offline user through the webhook provider, signed, once", async () => {
    const { ann, ben } = people;
    await ben.api.notifications.registerPushDevice({ platform: PushPlatform.WEBHOOK, token: "ben-phone" });
    const { conversation } = await ann.api.chat.openDirectConversation({ peer: { case: "peerUserId", value: ben.id } });
    const id = conversation!.conversationId;
    const socket = await FrameClient.connect(platform.wsUrl, ann.token);
    try {
      socket.send({ ref: 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: id, body: "lunch?" } } });
      await socket.waitFor("ack", (f) => f.ref === 1);
      await until("Ben's push", () => receiver.accepted.length === 1, 20_000);
      const [p] = receiver.accepted;
      assert.deepEqual([p!.payload.device, p!.payload.title, p!.payload.body, p!.payload.data.conversation_id], ["ben-phone", "ann", "lunch?", id]);
      assert.equal(receiver.rejected.length, 0, JSON.stringify(receiver.rejected));
    } finally {
      await socket.close();
    }
  });
});
