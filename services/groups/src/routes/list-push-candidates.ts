import type { ListPushCandidatesRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, pageLimit, requireUuid } from "../../../../lib/validate.js";
import type { GroupsContext } from "../context.js";
import { kindToProto } from "../convert.js";
import { LIMITS } from "../rules.js";

/**
 * The members notify should push to for messages up to `seq` (no delivery or read on
 * any device, not muted), paged by user id. An unknown or deleted conversation has none.
 */
export function listPushCandidates(ctx: GroupsContext) {
  return async (req: ListPushCandidatesRequest) => {
    const id = requireUuid("conversation_id", req.conversationId);
    const seq = Number(req.seq);
    if (seq === 0) throw invalid("seq", "must be a message's sequence number (> 0)");
    if (!Number.isSafeInteger(seq)) throw invalid("seq", "is too large");
    if (req.userIds.length > LIMITS.pushCandidates) throw invalid("user_ids", `at most ${LIMITS.pushCandidates}`);
    if (req.excludeUserIds.length > LIMITS.pushExcluded) throw invalid("exclude_user_ids", `at most ${LIMITS.pushExcluded}`);
    const userIds = req.userIds.map((u) => requireUuid("user_ids", u));
    const excludeUserIds = req.excludeUserIds.map((u) => requireUuid("exclude_user_ids", u));
    const after = req.afterUserId === "" ? "" : requireUuid("after_user_id", req.afterUserId);
    const limit = pageLimit("limit", req.limit, LIMITS.pushCandidates, LIMITS.pushCandidates);
    const found = await ctx.store.listPushCandidates(id, seq, {
      userIds: userIds.length > 0 ? userIds : undefined,
      excludeUserIds,
      afterUserId: after,
      limit: limit + 1,
    });
    if (!found) return {};
    const more = found.candidates.length > limit;
    const candidates = more ? found.candidates.slice(0, limit) : found.candidates;
    return {
      kind: kindToProto(found.kind),
      name: found.name,
      candidates: candidates.map((c) => ({ userId: c.userId, deliveredSeq: BigInt(c.deliveredSeq), readSeq: BigInt(c.readSeq) })),
      nextAfterUserId: more ? candidates[candidates.length - 1]!.userId : "",
    };
  };
}
