import type { UpdateGroupRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";
import { requireName, requireRole, requireTopic } from "../rules.js";

/** Owners and admins change the name and/or topic. Event: GroupUpdated (the new name and topic). */
export function updateGroup(ctx: GroupsContext) {
  return async (req: UpdateGroupRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    const name = req.name === undefined ? undefined : requireName(req.name);
    const topic = req.topic === undefined ? undefined : requireTopic(req.topic);
    if (name === undefined && topic === undefined) throw invalid("name", "name or topic must be set");
    const conversation = await ctx.store.mutateGroup(id, async (tx) => {
      await requireRole(tx, actor, "admin");
      await tx.update({ name, topic });
      const now = await tx.current();
      await tx.recordChange(
        changeRecord(id, actor, ctx.clock(), { kind: { case: "groupUpdated", value: { name: now.name, topic: now.topic } } }),
      );
      return tx.current();
    });
    await ctx.publisher.publish(id);
    return { conversation: conversationToProto(conversation) };
  };
}
