import { create } from "@bufbuild/protobuf";
import {
  AppendResponseSchema,
  type AppendRequest,
  type AppendResponse,
} from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { requireText, requireUuid } from "../../../../lib/validate.js";
import type { MessageStoreContext } from "../context.js";
import { toConnectError } from "./errors.js";
import { toProtoMessage } from "./message.js";

/** Most characters (code points) of a message body. */
export const MAX_BODY_CHARS = 4000;

/** Authorization (is the sender a member?) is the router's job, not the message store's. */
export function append(ctx: MessageStoreContext) {
  return async (req: AppendRequest): Promise<AppendResponse> => {
    const input = {
      conversationId: requireUuid("conversation_id", req.conversationId),
      senderId: requireUuid("sender_id", req.senderId),
      senderDeviceId: requireUuid("sender_device_id", req.senderDeviceId),
      clientMsgId: requireUuid("client_msg_id", req.clientMsgId),
      body: requireText("body", req.body, 1, MAX_BODY_CHARS),
    };
    try {
      const { message, duplicate } = await ctx.sequencer.append(input);
      return create(AppendResponseSchema, { message: toProtoMessage(message), duplicate });
    } catch (err) {
      throw toConnectError(err, ctx.logger);
    }
  };
}
