import { Code, ConnectError } from "@connectrpc/connect";
import type { GetReceiptsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, pageLimit, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { LIMITS } from "../rules.js";

/**
 * Receipts of one message over the active members, counted in the database; readers
 * paged by user id when asked. Takes no actor: the gateway checks the asker is a member.
 */
export function getReceipts(ctx: GroupsContext) {
  return async (req: GetReceiptsRequest) => {
    const id = requireUuid("conversation_id", req.conversationId);
    const seq = Number(req.seq);
    if (seq === 0) throw invalid("seq", "must be a message's sequence number (> 0)");
    if (!Number.isSafeInteger(seq)) throw invalid("seq", "is too large");
    const after = req.afterUserId === "" ? "" : requireUuid("after_user_id", req.afterUserId);
    const limit = pageLimit("limit", req.limit, LIMITS.readersDefault, LIMITS.readersMax);
    const receipts = await ctx.store.getReceipts(
      id,
      seq,
      req.includeReaders ? { afterUserId: after, limit: limit + 1 } : undefined,
    );
    if (!receipts) throw new ConnectError("conversation not found", Code.NotFound);
    const more = receipts.readerIds.length > limit;
    const readerIds = more ? receipts.readerIds.slice(0, limit) : receipts.readerIds;
    return {
      memberCount: receipts.memberCount,
      deliveredCount: receipts.deliveredCount,
      readCount: receipts.readCount,
      readerIds,
      nextAfterUserId: more ? readerIds[readerIds.length - 1]! : "",
    };
  };
}
