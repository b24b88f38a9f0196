import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  GetHeadsResponseSchema,
  HeadSchema,
  type GetHeadsRequest,
  type GetHeadsResponse,
} from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { MessageStoreContext } from "../context.js";
import type { ConversationHead } from "../message-repository.js";
import { toConnectError } from "./errors.js";
import { toProtoMessage } from "./message.js";

export const MAX_HEADS = 500;

/**
 * One head per requested conversation (duplicates once), in request order; a
 * conversation without messages has last_seq 0 and no last_sent_at. With
 * include_last_message, each head also carries its newest message (the repository reads
 * them together with the heads: one probe per conversation, concurrently).
 */
export function getHeads(ctx: MessageStoreContext) {
  return async (req: GetHeadsRequest): Promise<GetHeadsResponse> => {
    if (req.conversationIds.length > MAX_HEADS) throw invalid("conversation_ids", `must have at most ${MAX_HEADS} ids`);
    const ids = [...new Set(req.conversationIds.map((id, i) => requireUuid(`conversation_ids[${i}]`, id)))];
    let found: ConversationHead[];
    try {
      found = ids.length > 0 ? await ctx.repository.heads(ids, req.includeLastMessage) : [];
    } catch (err) {
      throw toConnectError(err, ctx.logger);
    }
    const byId = new Map(found.map((h) => [h.conversationId, h]));
    return create(GetHeadsResponseSchema, {
      heads: ids.map((conversationId) => {
        const h = byId.get(conversationId);
        return create(HeadSchema, {
          conversationId,
          lastSeq: BigInt(h?.lastSeq ?? 0),
          lastSentAt: h ? timestampFromMs(h.lastSentAtMs) : undefined,
          lastMessage: h?.lastMessage ? toProtoMessage(h.lastMessage) : undefined,
        });
      }),
    });
  };
}
