import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  DeadLetterSchema,
  NotificationSettingsSchema,
  PushDeviceSchema,
  PushPlatform,
  PushPrivacy,
  type DeadLetter as DeadLetterPb,
  type NotificationSettings,
  type PushDevice,
} from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { tokenHint, type DeadLetter, type Device, type Platform, type Privacy, type Settings } from "./model.js";

export function platformFromProto(p: PushPlatform): Platform | undefined {
  switch (p) {
    case PushPlatform.FCM:
      return "fcm";
    case PushPlatform.APNS:
      return "apns";
    case PushPlatform.WEB_PUSH:
      return "webpush";
    case PushPlatform.WEBHOOK:
      return "webhook";
    default:
      return undefined;
  }
}

export function platformToProto(p: Platform): PushPlatform {
  return { fcm: PushPlatform.FCM, apns: PushPlatform.APNS, webpush: PushPlatform.WEB_PUSH, webhook: PushPlatform.WEBHOOK }[p];
}

/** UNSPECIFIED → undefined ("unchanged"); an unknown value → null (invalid). */
export function privacyFromProto(p: PushPrivacy): Privacy | undefined | null {
  switch (p) {
    case PushPrivacy.UNSPECIFIED:
      return undefined;
    case PushPrivacy.FULL:
      return "full";
    case PushPrivacy.SENDER_ONLY:
      return "sender-only";
    case PushPrivacy.NONE:
      return "none";
    default:
      return null;
  }
}

export function privacyToProto(p: Privacy): PushPrivacy {
  return { full: PushPrivacy.FULL, "sender-only": PushPrivacy.SENDER_ONLY, none: PushPrivacy.NONE }[p];
}

export function deviceToProto(d: Device): PushDevice {
  return create(PushDeviceSchema, {
    pushDeviceId: d.deviceId,
    platform: platformToProto(d.platform),
    appId: d.appId,
    tokenHint: tokenHint(d.tokenKey),
    label: d.label,
    createdAt: timestampFromMs(d.createdAtMs),
    updatedAt: timestampFromMs(d.updatedAtMs),
  });
}

/** Settings as the API shows them: a mute that has ended is no mute. */
export function settingsToProto(s: Settings, nowMs: number): NotificationSettings {
  return create(NotificationSettingsSchema, {
    privacy: privacyToProto(s.privacy),
    ...(s.mutedUntilMs !== undefined && s.mutedUntilMs > nowMs ? { mutedUntil: timestampFromMs(s.mutedUntilMs) } : {}),
  });
}

export function deadLetterToProto(d: DeadLetter): DeadLetterPb {
  return create(DeadLetterSchema, {
    userId: d.userId,
    conversationId: d.conversationId,
    pushDeviceId: d.deviceId,
    platform: platformToProto(d.platform),
    seq: BigInt(d.seq),
    attempts: d.attempts,
    reason: d.reason,
    failedAt: timestampFromMs(d.failedAtMs),
  });
}
