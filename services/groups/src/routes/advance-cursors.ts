import type { AdvanceCursorsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { cursorMoveToProto } from "../convert.js";
import { LIMITS } from "../rules.js";

/**
 * Receipts: devices' delivered and users' read cursors forward only (cut to max_seq and,
 * for past members, left_seq), one transaction for the batch; cursors of non-members and
 * of deleted conversations are ignored. Answers the moves; publishes nothing (the
 * gateway tells the devices concerned).
 */
export function advanceCursors(ctx: GroupsContext) {
  return async (req: AdvanceCursorsRequest) => {
    if (req.cursors.length > LIMITS.deviceCursors) throw invalid("cursors", `must have at most ${LIMITS.deviceCursors} entries`);
    const cursors = req.cursors.map((c, i) => ({
      userId: requireUuid(`cursors[${i}].user_id`, c.userId),
      deviceId: requireUuid(`cursors[${i}].device_id`, c.deviceId),
      conversationId: requireUuid(`cursors[${i}].conversation_id`, c.conversationId),
      deliveredSeq: safeSeq(`cursors[${i}].delivered_seq`, c.deliveredSeq),
      readSeq: safeSeq(`cursors[${i}].read_seq`, c.readSeq),
      maxSeq: safeSeq(`cursors[${i}].max_seq`, c.maxSeq),
    }));
    const moves = await ctx.store.advanceCursors(cursors);
    return { moves: moves.map(cursorMoveToProto) };
  };
}

function safeSeq(field: string, value: bigint): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw invalid(field, "is too large");
  return n;
}
