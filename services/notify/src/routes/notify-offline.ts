import { Code, ConnectError } from "@connectrpc/connect";
import type { NotifyOfflineRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";

export const MAX_RECIPIENTS = 10_000;
const PREVIEW_CHARS = 120;

export function notifyOffline(ctx: NotifyContext) {
  return async (req: NotifyOfflineRequest) => {
    if (req.userIds.length > MAX_RECIPIENTS) throw invalid("user_ids", `at most ${MAX_RECIPIENTS} per call`);
    for (const id of req.userIds) requireUuid("user_ids", id);
    requireUuid("conversation_id", req.conversationId);
    requireUuid("message_id", req.messageId);
    requireUuid("sender_id", req.senderId);
    if (req.seq < 1n) throw invalid("seq", "must be at least 1");
    const preview = [...req.preview].slice(0, PREVIEW_CHARS).join("");
    try {
      await ctx.provider.send(
        req.userIds.map((userId) => ({
          userId,
          conversationId: req.conversationId,
          seq: Number(req.seq),
          messageId: req.messageId,
          senderId: req.senderId,
          preview,
        })),
      );
    } catch (err) {
      ctx.logger.warn({ err, provider: ctx.provider.name }, "push provider failed");
      throw new ConnectError(`push provider ${ctx.provider.name} failed`, Code.Unavailable);
    }
    return { queued: req.userIds.length };
  };
}
