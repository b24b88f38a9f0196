import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { MessageSchema, type Message } from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { StoredMessage } from "../message-repository.js";

export function toProtoMessage(m: StoredMessage): Message {
  return create(MessageSchema, {
    conversationId: m.conversationId,
    seq: BigInt(m.seq),
    messageId: m.messageId,
    senderId: m.senderId,
    senderDeviceId: m.senderDeviceId,
    clientMsgId: m.clientMsgId,
    body: m.body,
    sentAt: timestampFromMs(m.sentAtMs),
    event: m.event,
  });
}
