import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  ConversationKind,
  type MessagesStoredRequest,
} from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import type { StoredBatch } from "../model.js";

/** Most items per call. */
export const MESSAGES_STORED_MAX = 1000;
/** Most recipients of one item (a direct conversation has one or two). */
const RECIPIENTS_MAX = 100;
/** The preview is cut to this many characters (code points). */
export const PREVIEW_CHARS = 200;

export function messagesStored(ctx: NotifyContext) {
  return async (req: MessagesStoredRequest) => {
    if (req.messages.length > MESSAGES_STORED_MAX) throw invalid("messages", `at most ${MESSAGES_STORED_MAX} per call`);
    const now = ctx.clock();
    const batches: StoredBatch[] = req.messages.map((m, i) => {
      const f = (name: string) => `messages[${i}].${name}`;
      const kind = m.kind === ConversationKind.DIRECT ? "direct" : m.kind === ConversationKind.GROUP ? "group" : undefined;
      if (!kind) throw invalid(f("kind"), "must be DIRECT or GROUP");
      if (m.seq < 1n) throw invalid(f("seq"), "must be at least 1");
      if (m.seq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(f("seq"), "is too large");
      if (m.count < 1) throw invalid(f("count"), "must be at least 1");
      if (m.recipientIds.length > RECIPIENTS_MAX) throw invalid(f("recipient_ids"), `at most ${RECIPIENTS_MAX}`);
      const firstStoredAtMs = m.firstStoredAt ? timestampMs(m.firstStoredAt) : now;
      if (!Number.isFinite(firstStoredAtMs) || firstStoredAtMs < 0) throw invalid(f("first_stored_at"), "is not a valid time");
      return {
        conversationId: requireUuid(f("conversation_id"), m.conversationId),
        kind,
        seq: Number(m.seq),
        messageId: requireUuid(f("message_id"), m.messageId),
        senderId: requireUuid(f("sender_id"), m.senderId),
        preview: cutPreview(m.preview),
        count: m.count,
        recipientIds: m.recipientIds.map((r, j) => requireUuid(`${f("recipient_ids")}[${j}]`, r)),
        // Never later than now: a clock ahead of ours must not hold pushes back.
        firstStoredAtMs: Math.min(firstStoredAtMs, now),
      };
    });
    await ctx.pipeline.messagesStored(batches);
    return {};
  };
}

function cutPreview(text: string): string {
  const oneLine = text.replace(/\s+/g, " ").trim();
  if (oneLine.length <= PREVIEW_CHARS) return oneLine;
  const points = Array.from(oneLine);
  return points.length <= PREVIEW_CHARS ? oneLine : `${points.slice(0, PREVIEW_CHARS - 1).join("")}…`;
}
