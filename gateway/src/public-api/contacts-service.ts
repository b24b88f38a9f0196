import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ContactsService } from "../../../gen/parley/client/v1/contacts_service_pb.js";
import { invalid, requireUuid } from "../../../lib/validate.js";
import { publicContact, publicUser } from "./convert.js";
import { caller, type PublicApiDeps } from "./deps.js";
import { requireSelf } from "./membership.js";
import { existingUsers } from "./users.js";

/**
 * The public contacts and blocking API. A user only ever reads or changes their own
 * contact list and blocks: `user_id` may be empty or the caller's id, nothing else.
 */
export function contactsService(deps: PublicApiDeps): ServiceImpl<typeof ContactsService> {
  async function blockTarget(field: string, raw: string, me: string): Promise<string> {
    const id = requireUuid(field, raw);
    if (id === me) throw invalid(field, "you cannot block yourself");
    return id;
  }

  return {
    async listContacts(req, ctx) {
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const { contacts } = await deps.session.listContacts({ userId });
      return { contacts: contacts.map(publicContact).filter((c) => c !== undefined) };
    },

    async getContact(req, ctx) {
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const contactUserId = requireUuid("contact_user_id", req.contactUserId);
      const { contact } = await deps.session.getContact({ userId, contactUserId });
      return { contact: publicContact(contact) };
    },

    async putContact(req, ctx) {
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const contactUserId = requireUuid("contact_user_id", req.contactUserId);
      // The session service checks the nickname, that the user exists and the cap.
      const res = await deps.session.putContact({ userId, contactUserId, nickname: req.nickname });
      return { contact: publicContact(res.contact), created: res.created };
    },

    async deleteContact(req, ctx) {
      const me = await caller(deps, ctx);
      const userId = requireSelf("user_id", req.userId, me.userId);
      const contactUserId = requireUuid("contact_user_id", req.contactUserId);
      await deps.session.deleteContact({ userId, contactUserId });
      return {};
    },

    async blockUser(req, ctx) {
      const me = await caller(deps, ctx);
      const blockedUserId = await blockTarget("blocked_user_id", req.blockedUserId, me.userId);
      if (!(await existingUsers(deps, [blockedUserId])).has(blockedUserId)) {
        throw new ConnectError("no such user", Code.NotFound);
      }
      await deps.groups.blockUser({ userId: me.userId, blockedUserId });
      return {};
    },

    async unblockUser(req, ctx) {
      const me = await caller(deps, ctx);
      const blockedUserId = await blockTarget("blocked_user_id", req.blockedUserId, me.userId);
      await deps.groups.unblockUser({ userId: me.userId, blockedUserId });
      return {};
    },

    async listBlockedUsers(_req, ctx) {
      const me = await caller(deps, ctx);
      const { userIds } = await deps.groups.listBlockedUsers({ userId: me.userId });
      const users = await existingUsers(deps, userIds);
      return { users: userIds.flatMap((id) => publicUser(users.get(id)) ?? []) };
    },
  };
}
