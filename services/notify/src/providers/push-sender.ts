/**
 * The port every push provider implements: one push to one device, over the provider's
 * real wire protocol (FCM HTTP v1, APNs over HTTP/2, Web Push with VAPID and RFC 8291,
 * a signed webhook). The notify pipeline decides when to push, collapses, retries and
 * dead-letters; a sender only translates one push and classifies the answer.
 */
export type Platform = "fcm" | "apns" | "webpush" | "webhook";

/** Where a push goes: a registered device. */
export interface DeviceTarget {
  platform: Platform;
  /**
   * FCM: the registration token. APNs: the device token (hex). Webhook: an opaque id
   * of the device at the receiving system. Web Push: unused (see `subscription`).
   */
  token: string;
  /** Web Push: the browser's PushSubscription. */
  subscription?: { endpoint: string; p256dh: string; auth: string };
  /** The app: APNs topic (bundle id); FCM/webhook: passed along; may be empty. */
  appId: string;
}

/** What to show; already filtered by the user's privacy setting (preview, sender only, none). */
export interface Push {
  title: string;
  body: string;
  /** Pushes with the same key replace each other on the device (one per user and conversation). */
  collapseKey: string;
  /** Unread count to show on the app icon, when known. */
  badge?: number;
  /** Data for the app (conversation_id, seq, message_id, ...). */
  data: Record<string, string>;
  /** How long the provider should keep trying to reach the device. */
  ttlSeconds: number;
  /**
   * The push's id (a UUID), the same on every retry of it, also after a crash: senders
   * that can carry an id use it (APNs `apns-id`, the webhook's `id`), so a resend can be
   * recognised. Absent: the sender makes one up.
   */
  pushId?: string;
}

/** How one send ended, as the pipeline needs to know it. */
export type SendOutcome =
  | { status: "sent"; providerId?: string }
  /** The provider says this device token or subscription is gone or invalid: remove the device. */
  | { status: "invalid-token"; reason: string }
  /** Rate limited, provider error (5xx), timeout, network: try again later (after `retryAfterMs` if given). */
  | { status: "retry"; reason: string; retryAfterMs?: number }
  /** Will not work however often it is tried (bad request, bad credentials): dead-letter it. */
  | { status: "failed"; reason: string };

export interface PushSender {
  readonly platform: Platform;
  send(target: DeviceTarget, push: Push, signal?: AbortSignal): Promise<SendOutcome>;
  close(): Promise<void>;
}

/** Seconds or an HTTP date in a Retry-After header, as milliseconds; undefined when absent or unreadable. */
export function retryAfterMs(header: string | null | undefined, nowMs: number): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const at = Date.parse(header);
  return Number.isFinite(at) ? Math.max(0, at - nowMs) : undefined;
}
