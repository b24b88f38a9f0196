/**
 * The notify service's domain types. Generated protobuf types stay at the RPC edge
 * (routes/, convert.ts); 64-bit sequence numbers are plain numbers here.
 */
import type { Platform } from "./providers/push-sender.js";

export type { Platform };

export const PLATFORMS: readonly Platform[] = ["fcm", "apns", "webpush", "webhook"];

/** What a push may show: sender and text, sender only, nothing. */
export type Privacy = "full" | "sender-only" | "none";

export type ConversationKind = "direct" | "group";

/** A registered push device. `tokenKey` is the token, or the Web Push endpoint. */
export interface Device {
  deviceId: string;
  userId: string;
  platform: Platform;
  appId: string;
  tokenKey: string;
  /** Web Push only (else ""). */
  p256dh: string;
  auth: string;
  label: string;
  createdAtMs: number;
  updatedAtMs: number;
}

export interface NewDevice {
  userId: string;
  platform: Platform;
  appId: string;
  tokenKey: string;
  p256dh: string;
  auth: string;
  label: string;
}

export type RegisterResult = { device: Device; created: boolean } | { overCap: true };

export interface Settings {
  privacy: Privacy;
  /** No push before this time; undefined: not muted. */
  mutedUntilMs: number | undefined;
}

export const DEFAULT_SETTINGS: Settings = { privacy: "full", mutedUntilMs: undefined };

export interface SettingsChange {
  privacy?: Privacy;
  /** A time: muted until then; null: unmuted. Undefined: unchanged. */
  mutedUntilMs?: number | null;
}

/** What a router handed over: the newest of `count` stored messages of one conversation. */
export interface StoredBatch {
  conversationId: string;
  kind: ConversationKind;
  seq: number;
  messageId: string;
  senderId: string;
  preview: string;
  count: number;
  /** Direct conversations: the recipients; groups: empty. */
  recipientIds: string[];
  firstStoredAtMs: number;
}

/** The one open push job of a conversation, as claimed by a pipeline. */
export interface PushJob {
  conversationId: string;
  kind: ConversationKind;
  firstSeq: number;
  lastSeq: number;
  /** Messages the job stands for. */
  count: number;
  messageId: string;
  senderId: string;
  preview: string;
  recipientIds: string[];
  dueAtMs: number;
  /** This claim's id: finishing the job checks that the claim still holds. */
  claimId: string;
}

/** A user to push to for a job, found when it came due. */
export interface TaskInput {
  userId: string;
  /** Messages of the burst this user has not received: min(job count, last seq − their cursor). */
  count: number;
  /** The user's unread bound (last seq − max(delivered, read)): merged counts stay below it. */
  unread: number;
  /** A new push id (used when the task is created or gets new content). */
  pushId: string;
}

/** What finishJob did. */
export interface FinishResult {
  /** False when the claim was lost (another instance took the job over): nothing was written. */
  finished: boolean;
  /** Tasks created or given new content (pushes to users). */
  pushes: number;
}

/** A push to one user for one conversation, with the devices it still has to reach. */
export interface PushTask {
  userId: string;
  conversationId: string;
  /** Stable over retries; new when the task gets new content. */
  pushId: string;
  kind: ConversationKind;
  /** Groups: the name, for the title. */
  conversationName: string;
  upToSeq: number;
  count: number;
  messageId: string;
  senderId: string;
  preview: string;
  deviceIds: string[];
  attempts: number;
  nextAttemptAtMs: number;
  lastError: string;
  claimId: string;
}

export interface DeadLetter {
  userId: string;
  conversationId: string;
  deviceId: string;
  platform: Platform;
  seq: number;
  attempts: number;
  reason: string;
  failedAtMs: number;
}

/** Counters of one process (GetStats). */
export interface Stats {
  messagesReceived: number;
  jobsDue: number;
  pushesCreated: number;
  pushesCancelled: number;
  sendsOk: number;
  sendsRetried: number;
  devicesRemoved: number;
  deadLettered: number;
}

export function emptyStats(): Stats {
  return {
    messagesReceived: 0,
    jobsDue: 0,
    pushesCreated: 0,
    pushesCancelled: 0,
    sendsOk: 0,
    sendsRetried: 0,
    devicesRemoved: 0,
    deadLettered: 0,
  };
}

/**
 * The last characters of a token or Web Push endpoint, to tell devices apart in lists and
 * logs: at most 6, and never more than a third of it.
 */
export function tokenHint(tokenKey: string): string {
  const n = Math.min(6, Math.floor(tokenKey.length / 3));
  return n === 0 ? "" : `…${tokenKey.slice(-n)}`;
}
