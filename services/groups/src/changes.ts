import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { ConversationEventSchema } from "../../../gen/parley/client/v1/types_pb.js";
import { ApplyConversationChangeRequestSchema } from "../../../gen/parley/router/v1/router_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import type { ChangeRecord } from "./model.js";

export type EventInit = MessageInitShape<typeof ConversationEventSchema>;

/**
 * The outbox row of one change: an encoded ApplyConversationChangeRequest with a new
 * change id, carrying `event` (an encoded ConversationEvent; none for blocks).
 */
export function changeRecord(
  conversationId: string,
  actorId: string,
  atMs: number,
  event: EventInit | undefined,
  opts: { joined?: readonly string[]; left?: readonly string[]; deleted?: boolean } = {},
): ChangeRecord {
  const changeId = randomUuid();
  const request = create(ApplyConversationChangeRequestSchema, {
    conversationId,
    changeId,
    actorId,
    event: event ? toBinary(ConversationEventSchema, create(ConversationEventSchema, event)) : new Uint8Array(0),
    joinedUserIds: [...(opts.joined ?? [])],
    leftUserIds: [...(opts.left ?? [])],
    deleted: opts.deleted ?? false,
  });
  return { changeId, payload: toBinary(ApplyConversationChangeRequestSchema, request), atMs };
}
