import { Code, ConnectError } from "@connectrpc/connect";
import type { CreateGroupRequest } from "../../../../gen/parley/groups/v1/groups_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import { changeRecord } from "../changes.js";
import type { GroupsContext } from "../context.js";
import { conversationToProto } from "../convert.js";
import { LIMITS, requireName, requireTopic, requireUuidList } from "../rules.js";

/** The creator becomes OWNER; the other members join as MEMBER. Event: GroupCreated. */
export function createGroup(ctx: GroupsContext) {
  return async (req: CreateGroupRequest) => {
    const actor = requireUuid("actor_id", req.actorId);
    const name = requireName(req.name);
    const topic = requireTopic(req.topic);
    const members = requireUuidList("member_ids", req.memberIds, 0, LIMITS.initialMembers);
    if (members.includes(actor)) throw invalid("member_ids", "must not include the creator (who is added as owner)");
    if (members.length + 1 > ctx.memberCap) {
      throw new ConnectError(`a group has at most ${ctx.memberCap} members`, Code.ResourceExhausted);
    }
    const conversationId = ctx.ids.next();
    const atMs = ctx.clock();
    const all = [actor, ...members];
    const change = changeRecord(conversationId, actor, atMs, { kind: { case: "groupCreated", value: { name, topic, memberIds: all } } }, { joined: all });
    const conversation = await ctx.store.createGroup({ conversationId, name, topic, createdBy: actor, memberIds: members, atMs }, change);
    await ctx.publisher.publish(conversationId);
    return { conversation: conversationToProto(conversation) };
  };
}
