import type { ServiceImpl } from "@connectrpc/connect";
import {
  PushPlatform as PublicPlatform,
  PushPrivacy as PublicPrivacy,
  type NotificationService,
  type NotificationSettingsSchema as PublicSettingsSchema,
  type PushDeviceSchema as PublicDeviceSchema,
} from "../../../gen/parley/client/v1/notification_service_pb.js";
import {
  PushPlatform,
  PushPrivacy,
  type NotificationSettings,
  type PushDevice,
} from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { invalid } from "../../../lib/validate.js";
import { caller, type PublicApiDeps } from "./deps.js";

/**
 * The public push API: a user registers, lists and removes their own push devices and
 * changes their own notification settings. The notify service validates tokens and
 * subscriptions and enforces the cap; this layer only fixes the user to the caller.
 */
export function notificationService(deps: PublicApiDeps): ServiceImpl<typeof NotificationService> {
  return {
    async registerPushDevice(req, ctx) {
      const me = await caller(deps, ctx);
      const res = await deps.notify.registerDevice({
        userId: me.userId,
        platform: platformIn(req.platform),
        token: req.token,
        webPush: req.webPush && { endpoint: req.webPush.endpoint, p256dh: req.webPush.p256dh, auth: req.webPush.auth },
        appId: req.appId,
        label: req.label,
      });
      return { device: res.device && deviceOut(res.device), created: res.created };
    },

    async removePushDevice(req, ctx) {
      const me = await caller(deps, ctx);
      await deps.notify.unregisterDevice({ userId: me.userId, pushDeviceId: req.pushDeviceId });
      return {};
    },

    async listPushDevices(_req, ctx) {
      const me = await caller(deps, ctx);
      const { devices } = await deps.notify.listDevices({ userId: me.userId });
      return { devices: devices.map(deviceOut) };
    },

    async getNotificationSettings(_req, ctx) {
      const me = await caller(deps, ctx);
      const { settings } = await deps.notify.getSettings({ userId: me.userId });
      return { settings: settings && settingsOut(settings) };
    },

    async updateNotificationSettings(req, ctx) {
      const me = await caller(deps, ctx);
      const privacy = PRIVACY_IN.get(req.privacy);
      if (privacy === undefined) throw invalid("privacy", "unknown value");
      const { settings } = await deps.notify.updateSettings({ userId: me.userId, privacy, mutedUntil: req.mutedUntil, unmute: req.unmute });
      return { settings: settings && settingsOut(settings) };
    },
  };
}

const PLATFORMS: [PublicPlatform, PushPlatform][] = [
  [PublicPlatform.UNSPECIFIED, PushPlatform.UNSPECIFIED],
  [PublicPlatform.FCM, PushPlatform.FCM],
  [PublicPlatform.APNS, PushPlatform.APNS],
  [PublicPlatform.WEB_PUSH, PushPlatform.WEB_PUSH],
  [PublicPlatform.WEBHOOK, PushPlatform.WEBHOOK],
];
const PLATFORM_IN = new Map(PLATFORMS);
const PLATFORM_OUT = new Map(PLATFORMS.map(([a, b]) => [b, a]));

const PRIVACIES: [PublicPrivacy, PushPrivacy][] = [
  [PublicPrivacy.UNSPECIFIED, PushPrivacy.UNSPECIFIED],
  [PublicPrivacy.FULL, PushPrivacy.FULL],
  [PublicPrivacy.SENDER_ONLY, PushPrivacy.SENDER_ONLY],
  [PublicPrivacy.NONE, PushPrivacy.NONE],
];
const PRIVACY_IN = new Map(PRIVACIES);
const PRIVACY_OUT = new Map(PRIVACIES.map(([a, b]) => [b, a]));

function platformIn(p: PublicPlatform): PushPlatform {
  const v = PLATFORM_IN.get(p);
  if (v === undefined || v === PushPlatform.UNSPECIFIED) throw invalid("platform", "must be FCM, APNS, WEB_PUSH or WEBHOOK");
  return v;
}

function deviceOut(d: PushDevice): MessageInitShape<typeof PublicDeviceSchema> {
  return {
    pushDeviceId: d.pushDeviceId,
    platform: PLATFORM_OUT.get(d.platform) ?? PublicPlatform.UNSPECIFIED,
    appId: d.appId,
    tokenHint: d.tokenHint,
    label: d.label,
    createdAt: d.createdAt,
    updatedAt: d.updatedAt,
  };
}

function settingsOut(s: NotificationSettings): MessageInitShape<typeof PublicSettingsSchema> {
  return { privacy: PRIVACY_OUT.get(s.privacy) ?? PublicPrivacy.FULL, mutedUntil: s.mutedUntil };
}
