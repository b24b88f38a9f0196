import { Code, ConnectError } from "@connectrpc/connect";
import type { RemoveMemberRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { requireRole } from "../rules.js";

/**
 * Removing oneself is leaving (anyone but the owner: FAILED_PRECONDITION, transfer
 * ownership or delete the group). Removing others: owners remove anyone, admins remove
 * plain members. Events: MemberLeft / MemberRemoved.
 */
export function removeMember(ctx: GroupsContext) {
  return async (req: RemoveMemberRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    const user = requireUuid("user_id", req.userId);
    await ctx.store.mutateGroup(id, async (tx) => {
      const atMs = ctx.clock();
      if (user === actor) {
        const { actor: me } = await requireRole(tx, actor, "member");
        if (me.role === "owner") {
          throw new ConnectError("the owner cannot leave: transfer ownership or delete the group", Code.FailedPrecondition);
        }
        await tx.leave([user]);
        await tx.recordChange(changeRecord(id, actor, atMs, { kind: { case: "memberLeft", value: { userId: user } } }, { left: [user] }));
        return;
      }
      const { actor: me } = await requireRole(tx, actor, "admin");
      const [target] = await tx.members([user]);
      if (!target || target.state !== "active") throw new ConnectError("not a member of this group", Code.NotFound);
      if (me.role !== "owner" && target.role !== "member") throw new ConnectError("requires owner", Code.PermissionDenied);
      await tx.leave([user]);
      await tx.recordChange(changeRecord(id, actor, atMs, { kind: { case: "memberRemoved", value: { userId: user } } }, { left: [user] }));
    });
    await ctx.publisher.publish(id);
    return {};
  };
}
