import { Code, ConnectError } from "@connectrpc/connect";
import type { SendRequest } from "../../../../gen/parley/router/v1/router_service_pb.js";
import { requireText, requireUuid } from "../../../../lib/validate.js";
import type { RouterContext } from "../context.js";

export const MAX_BODY_CHARS = 4000;

/**
 * The hot path: authorize (cached membership), have the message store assign the
 * sequence number and persist, answer, and hand the message to fan-out in the order
 * the store acknowledged it.
 */
export function send(ctx: RouterContext) {
  return async (req: SendRequest) => {
    requireUuid("sender_id", req.senderId);
    requireUuid("sender_device_id", req.senderDeviceId);
    requireUuid("conversation_id", req.conversationId);
    requireUuid("client_msg_id", req.clientMsgId);
    requireText("body", req.body, 1, MAX_BODY_CHARS);
    const membership = await ctx.membership.get(req.conversationId);
    // Unknown conversations get the same answer as foreign ones: ids are no oracle.
    if (!membership?.has(req.senderId)) {
      throw new ConnectError("not a member of this conversation", Code.PermissionDenied);
    }
    const { message, duplicate } = await ctx.messagestore.append({
      conversationId: req.conversationId,
      senderId: req.senderId,
      senderDeviceId: req.senderDeviceId,
      clientMsgId: req.clientMsgId,
      body: req.body,
    });
    if (!message) throw new ConnectError("message store answered without a message", Code.Internal);
    // A resend was fanned out the first time; doing it again would duplicate it on devices.
    if (!duplicate) ctx.fanOut.enqueue({ message, memberIds: membership.memberIds, senderDeviceId: req.senderDeviceId });
    return {
      conversationId: message.conversationId,
      seq: message.seq,
      messageId: message.messageId,
      sentAt: message.sentAt,
      duplicate,
    };
  };
}
