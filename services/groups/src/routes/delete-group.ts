import type { DeleteGroupRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { requireRole } from "../rules.js";

/**
 * Owner only. Every active member leaves; the change says `deleted` (no left_user_ids:
 * a group may have 100,000 members) and the event is GroupDeleted.
 */
export function deleteGroup(ctx: GroupsContext) {
  return async (req: DeleteGroupRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    await ctx.store.mutateGroup(id, async (tx) => {
      await requireRole(tx, actor, "owner");
      const atMs = ctx.clock();
      await tx.markDeleted(atMs);
      await tx.recordChange(changeRecord(id, actor, atMs, { kind: { case: "groupDeleted", value: {} } }, { deleted: true }));
    });
    await ctx.publisher.publish(id);
    return {};
  };
}
