import type { ConversationKind, Privacy } from "./model.js";
import type { Push } from "./providers/push-sender.js";

/** How long providers keep trying to reach an offline device: a day-old chat push is still worth showing. */
export const PUSH_TTL_SECONDS = 24 * 3600;
/** The app's name, the title when nothing else may be shown. */
export const APP_TITLE = "Parley";

export interface RenderInput {
  privacy: Privacy;
  kind: ConversationKind;
  /** Groups: the group's name ("" when it has none). */
  conversationName: string;
  /** The newest message's sender; undefined when the name could not be looked up. */
  senderName: string | undefined;
  /** The newest message's text, already cut to a preview ("" for a message without text). */
  preview: string;
  /** Messages this push stands for (1 or more). */
  count: number;
  conversationId: string;
  seq: number;
  messageId: string;
  pushId: string;
}

function countText(count: number): string {
  return count > 1 ? `${count} new messages` : "New message";
}

/** The title with names: "Ann" (direct) or "Team · Ann" (group). */
function namedTitle(i: RenderInput): string {
  const group = i.kind === "group" ? i.conversationName : "";
  if (group && i.senderName) return `${group} · ${i.senderName}`;
  return group || i.senderName || APP_TITLE;
}

/**
 * The push a user sees, by their privacy setting:
 * - full: title "Ann" / "Team · Ann", body the newest message's preview ("… (+2 more)" for a burst);
 * - sender-only: the same title, body "New message" / "3 new messages";
 * - none: title "Parley", body "New message" / "3 new messages".
 * The data (for the app) carries ids and the count only, never names or text, whatever the setting.
 * One push per user and conversation on the device: the collapse key is the conversation id.
 */
export function renderPush(i: RenderInput): Push {
  let title: string;
  let body: string;
  switch (i.privacy) {
    case "full":
      title = namedTitle(i);
      body = i.preview === "" ? countText(i.count) : i.count > 1 ? `${i.preview} (+${i.count - 1} more)` : i.preview;
      break;
    case "sender-only":
      title = namedTitle(i);
      body = countText(i.count);
      break;
    case "none":
      title = APP_TITLE;
      body = countText(i.count);
      break;
  }
  return {
    title,
    body,
    collapseKey: i.conversationId,
    pushId: i.pushId,
    data: {
      conversation_id: i.conversationId,
      seq: String(i.seq),
      message_id: i.messageId,
      count: String(i.count),
      push_id: i.pushId,
    },
    ttlSeconds: PUSH_TTL_SECONDS,
  };
}
