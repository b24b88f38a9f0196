import type { AdvanceReadCursorsRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { LIMITS } from "../rules.js";

/** Forward only, one statement for the batch; cursors of non-members are ignored. Publishes nothing. */
export function advanceReadCursors(ctx: GroupsContext) {
  return async (req: AdvanceReadCursorsRequest) => {
    if (req.cursors.length > LIMITS.readCursors) throw invalid("cursors", `must have at most ${LIMITS.readCursors} entries`);
    const cursors = req.cursors.map((c, i) => {
      const seq = Number(c.seq);
      if (!Number.isSafeInteger(seq)) throw invalid(`cursors[${i}].seq`, "is too large");
      return {
        userId: requireUuid(`cursors[${i}].user_id`, c.userId),
        conversationId: requireUuid(`cursors[${i}].conversation_id`, c.conversationId),
        seq,
      };
    });
    await ctx.store.advanceReadCursors(cursors);
    return {};
  };
}
