import { Code, ConnectError } from "@connectrpc/connect";
import type { SetMemberRoleRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { roleFromProto, roleToClientProto } from "../convert.js";
import { requireRole } from "../rules.js";

/**
 * Owner only. OWNER for another member transfers ownership (the old owner becomes
 * ADMIN; one RoleChanged event naming the new owner). The owner cannot change their own
 * role (FAILED_PRECONDITION: transfer instead). Setting the current role changes nothing.
 */
export function setMemberRole(ctx: GroupsContext) {
  return async (req: SetMemberRoleRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const id = requireUuid("conversation_id", req.conversationId);
    const user = requireUuid("user_id", req.userId);
    const role = roleFromProto(req.role);
    if (!role) throw invalid("role", "must be MEMBER, ADMIN or OWNER");
    const changed = await ctx.store.mutateGroup(id, async (tx) => {
      await requireRole(tx, actor, "owner");
      if (user === actor) {
        if (role === "owner") return false;
        throw new ConnectError("the owner cannot change their own role: transfer ownership", Code.FailedPrecondition);
      }
      const [target] = await tx.members([user]);
      if (!target || target.state !== "active") throw new ConnectError("not a member of this group", Code.NotFound);
      if (target.role === role) return false;
      await tx.setRole(user, role);
      if (role === "owner") await tx.setRole(actor, "admin");
      await tx.recordChange(
        changeRecord(id, actor, ctx.clock(), { kind: { case: "roleChanged", value: { userId: user, role: roleToClientProto(role) } } }),
      );
      return true;
    });
    if (changed) await ctx.publisher.publish(id);
    return {};
  };
}
