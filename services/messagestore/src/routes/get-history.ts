import { create } from "@bufbuild/protobuf";
import {
  GetHistoryResponseSchema,
  type GetHistoryRequest,
  type GetHistoryResponse,
} from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { invalid, pageLimit, requireUuid } from "../../../../lib/validate.js";
import type { MessageStoreContext } from "../context.js";
import { toConnectError } from "./errors.js";
import { toProtoMessage } from "./message.js";

export const DEFAULT_HISTORY_LIMIT = 50;
export const MAX_HISTORY_LIMIT = 200;

export function getHistory(ctx: MessageStoreContext) {
  return async (req: GetHistoryRequest): Promise<GetHistoryResponse> => {
    const conversationId = requireUuid("conversation_id", req.conversationId);
    // uint64 (a bigint in the generated code); seqs stay far below 2^53.
    if (req.beforeSeq < 0n || req.beforeSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid("before_seq", "out of range");
    const beforeSeq = Number(req.beforeSeq);
    const limit = pageLimit("limit", req.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT);
    try {
      const messages = await ctx.repository.history(conversationId, beforeSeq, limit);
      return create(GetHistoryResponseSchema, { messages: messages.map(toProtoMessage) });
    } catch (err) {
      throw toConnectError(err, ctx.logger);
    }
  };
}
