import { create } from "@bufbuild/protobuf";
import {
  GetRangeResponseSchema,
  type GetRangeRequest,
  type GetRangeResponse,
} from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { invalid, pageLimit, requireUuid } from "../../../../lib/validate.js";
import type { MessageStoreContext } from "../context.js";
import { toConnectError } from "./errors.js";
import { toProtoMessage } from "./message.js";

export const DEFAULT_RANGE_LIMIT = 200;
export const MAX_RANGE_LIMIT = 1000;

/** Messages with seq > after_seq, oldest first (resuming devices). */
export function getRange(ctx: MessageStoreContext) {
  return async (req: GetRangeRequest): Promise<GetRangeResponse> => {
    const conversationId = requireUuid("conversation_id", req.conversationId);
    // uint64 (a bigint in the generated code); seqs stay far below 2^53.
    if (req.afterSeq < 0n || req.afterSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid("after_seq", "out of range");
    const afterSeq = Number(req.afterSeq);
    const limit = pageLimit("limit", req.limit, DEFAULT_RANGE_LIMIT, MAX_RANGE_LIMIT);
    try {
      const messages = await ctx.repository.range(conversationId, afterSeq, limit);
      return create(GetRangeResponseSchema, { messages: messages.map(toProtoMessage) });
    } catch (err) {
      throw toConnectError(err, ctx.logger);
    }
  };
}
