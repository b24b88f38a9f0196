import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { errorBoundary } from "../../../lib/handler-errors.js";
import type { GroupsContext } from "./context.js";
import { addMembers } from "./routes/add-members.js";
import { advanceCursors } from "./routes/advance-cursors.js";
import { advanceReadCursors } from "./routes/advance-read-cursors.js";
import { blockUser } from "./routes/block-user.js";
import { checkMembers } from "./routes/check-members.js";
import { createGroup } from "./routes/create-group.js";
import { deleteGroup } from "./routes/delete-group.js";
import { getConversation } from "./routes/get-conversation.js";
import { getMembership } from "./routes/get-membership.js";
import { getOrCreateDirectConversation } from "./routes/get-or-create-direct-conversation.js";
import { getReceipts } from "./routes/get-receipts.js";
import { listBlockedUsers } from "./routes/list-blocked-users.js";
import { listMembers } from "./routes/list-members.js";
import { listPushCandidates } from "./routes/list-push-candidates.js";
import { listUserConversations } from "./routes/list-user-conversations.js";
import { listUserGroupIds } from "./routes/list-user-group-ids.js";
import { removeMember } from "./routes/remove-member.js";
import { setMemberRole } from "./routes/set-member-role.js";
import { setMuted } from "./routes/set-muted.js";
import { unblockUser } from "./routes/unblock-user.js";
import { updateGroup } from "./routes/update-group.js";

export function groupsRoutes(ctx: GroupsContext): Routes {
  const h = errorBoundary(ctx.logger);
  return (router) =>
    router.service(GroupsService, {
      getOrCreateDirectConversation: h(getOrCreateDirectConversation(ctx)),
      getConversation: h(getConversation(ctx)),
      checkMembers: h(checkMembers(ctx)),
      getMembership: h(getMembership(ctx)),
      listUserConversations: h(listUserConversations(ctx)),
      listUserGroupIds: h(listUserGroupIds(ctx)),
      createGroup: h(createGroup(ctx)),
      updateGroup: h(updateGroup(ctx)),
      deleteGroup: h(deleteGroup(ctx)),
      listMembers: h(listMembers(ctx)),
      addMembers: h(addMembers(ctx)),
      removeMember: h(removeMember(ctx)),
      setMemberRole: h(setMemberRole(ctx)),
      setMuted: h(setMuted(ctx)),
      advanceReadCursors: h(advanceReadCursors(ctx)),
      advanceCursors: h(advanceCursors(ctx)),
      getReceipts: h(getReceipts(ctx)),
      listPushCandidates: h(listPushCandidates(ctx)),
      blockUser: h(blockUser(ctx)),
      unblockUser: h(unblockUser(ctx)),
      listBlockedUsers: h(listBlockedUsers(ctx)),
    });
}
