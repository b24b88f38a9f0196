import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { ConversationEventSchema, type MessageSchema } from "../gen/parley/client/v1/types_pb.js";
import type { Message as StoredMessage } from "../gen/parley/messagestore/v1/messagestore_service_pb.js";

/**
 * A stored message as clients see it (frames and history share this shape). Event
 * messages carry an encoded ConversationEvent, opaque to the store: decoded here.
 */
export function clientMessage(m: StoredMessage): MessageInitShape<typeof MessageSchema> {
  return {
    conversationId: m.conversationId,
    seq: m.seq,
    messageId: m.messageId,
    senderId: m.senderId,
    senderDeviceId: m.senderDeviceId,
    clientMsgId: m.clientMsgId,
    body: m.body,
    sentAt: m.sentAt,
    event: m.event.length > 0 ? fromBinary(ConversationEventSchema, m.event) : undefined,
  };
}
