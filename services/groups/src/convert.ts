import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ConversationKind, ConversationSchema, type Conversation as ConversationPb } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Conversation } from "./model.js";

export function conversationToProto(c: Conversation): ConversationPb {
  return create(ConversationSchema, {
    conversationId: c.conversationId,
    kind: c.kind === "direct" ? ConversationKind.DIRECT : ConversationKind.GROUP,
    memberIds: c.memberIds,
    createdAt: timestampFromMs(c.createdAtMs),
    version: BigInt(c.version),
  });
}
