import { createPublicKey } from "node:crypto";
import type { RegisterDeviceRequest } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { invalid, requireText } from "../../../lib/validate.js";
import type { NewDevice, Platform } from "./model.js";
import { endpointProblem } from "./webpush-hosts.js";

/** Limits of RegisterDevice's fields. */
export const DEVICE_LIMITS = {
  fcmToken: 4096,
  apnsTokenMin: 64,
  apnsTokenMax: 200,
  webhookToken: 256,
  endpoint: 2048,
  appId: 255,
  label: 64,
} as const;

const FCM_TOKEN = /^[A-Za-z0-9_:.-]+$/;
const HEX = /^[0-9a-fA-F]+$/;
const PRINTABLE = /^[\x20-\x7e]+$/;
const VISIBLE = /^[\x21-\x7e]*$/;
const BASE64URL = /^[A-Za-z0-9_-]+={0,2}$/;

/**
 * The device of a RegisterDevice request, checked (INVALID_ARGUMENT naming the field):
 * - fcm: `token` of 1..4096 characters [A-Za-z0-9_:.-];
 * - apns: `token` of 64..200 hex digits (stored lower-case);
 * - webhook: `token` of 1..256 printable ASCII characters;
 * - webpush: no `token`; `web_push.endpoint` an https URL of at most 2048 characters on an
 *   allowed push service host, `p256dh` base64url of a 65-byte uncompressed P-256 point,
 *   `auth` base64url of 16 bytes;
 * - `app_id` at most 255 visible ASCII characters, `label` at most 64 characters.
 */
export function deviceFromRequest(
  userId: string,
  platform: Platform,
  req: RegisterDeviceRequest,
  allowedHosts: readonly string[],
): NewDevice {
  if (req.appId.length > DEVICE_LIMITS.appId) throw invalid("app_id", `must have at most ${DEVICE_LIMITS.appId} characters`);
  if (!VISIBLE.test(req.appId)) throw invalid("app_id", "must be visible ASCII characters (a bundle or application id)");
  const label = requireText("label", req.label, 0, DEVICE_LIMITS.label);
  const base = { userId, platform, appId: req.appId, label, p256dh: "", auth: "" };
  if (platform === "webpush") {
    if (req.token !== "") throw invalid("token", "must be empty for Web Push (the subscription goes in web_push)");
    const sub = req.webPush;
    if (!sub) throw invalid("web_push", "is required for Web Push");
    const problem = endpointProblem(allowedHosts, sub.endpoint, DEVICE_LIMITS.endpoint);
    if (problem) throw invalid("web_push.endpoint", problem);
    const key = decodeBase64url(sub.p256dh);
    if (key?.length !== 65 || key[0] !== 0x04 || !onCurve(key)) {
      throw invalid("web_push.p256dh", "must be base64url of an uncompressed P-256 public key (65 bytes starting with 0x04)");
    }
    const auth = decodeBase64url(sub.auth);
    if (auth?.length !== 16) throw invalid("web_push.auth", "must be base64url of 16 bytes");
    return { ...base, tokenKey: sub.endpoint, p256dh: sub.p256dh, auth: sub.auth };
  }
  if (req.webPush) throw invalid("web_push", "is only for Web Push devices");
  const token = req.token;
  if (token === "") throw invalid("token", "is required");
  switch (platform) {
    case "fcm":
      if (token.length > DEVICE_LIMITS.fcmToken) throw invalid("token", `must have at most ${DEVICE_LIMITS.fcmToken} characters`);
      if (!FCM_TOKEN.test(token)) throw invalid("token", "must be an FCM registration token ([A-Za-z0-9_:.-])");
      return { ...base, tokenKey: token };
    case "apns":
      if (token.length < DEVICE_LIMITS.apnsTokenMin || token.length > DEVICE_LIMITS.apnsTokenMax || !HEX.test(token)) {
        throw invalid("token", `must be an APNs device token: ${DEVICE_LIMITS.apnsTokenMin} to ${DEVICE_LIMITS.apnsTokenMax} hex digits`);
      }
      return { ...base, tokenKey: token.toLowerCase() };
    case "webhook":
      if (token.length > DEVICE_LIMITS.webhookToken) throw invalid("token", `must have at most ${DEVICE_LIMITS.webhookToken} characters`);
      if (!PRINTABLE.test(token)) throw invalid("token", "must be printable ASCII characters");
      return { ...base, tokenKey: token };
  }
}

function decodeBase64url(s: string): Buffer | undefined {
  if (!BASE64URL.test(s)) return undefined;
  return Buffer.from(s.replace(/=+$/, ""), "base64url");
}

function onCurve(point: Buffer): boolean {
  try {
    createPublicKey({
      format: "jwk",
      key: { kty: "EC", crv: "P-256", x: point.subarray(1, 33).toString("base64url"), y: point.subarray(33, 65).toString("base64url") },
    });
    return true;
  } catch {
    return false;
  }
}
