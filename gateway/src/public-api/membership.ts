import { Code, ConnectError } from "@connectrpc/connect";
import type { GetMembershipResponse, Member } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { isActive } from "./convert.js";
import type { PublicApiDeps } from "./deps.js";

/**
 * The one answer for unknown, deleted and foreign conversations alike, here and on the
 * WebSocket: conversation ids are no oracle.
 */
export const NOT_A_MEMBER = "not a member of this conversation";

export function notAMember(): ConnectError {
  return new ConnectError(NOT_A_MEMBER, Code.PermissionDenied);
}

export type Membership = GetMembershipResponse & { member: Member };

/**
 * The caller's membership of one conversation (one indexed read in the groups service,
 * whatever the group's size). `active`: only an active member passes; otherwise a past
 * member (state LEFT) passes too. Anything else is PERMISSION_DENIED.
 */
export async function requireMembership(
  deps: PublicApiDeps,
  conversationId: string,
  userId: string,
  opts: { active: boolean },
): Promise<Membership> {
  let res: GetMembershipResponse;
  try {
    res = await deps.groups.getMembership({ conversationId, userId });
  } catch (err) {
    if (ConnectError.from(err).code === Code.NotFound) throw notAMember();
    throw err;
  }
  const { member, conversation } = res;
  if (!member || !conversation) throw notAMember();
  if (opts.active && !isActive(member)) throw notAMember();
  return res as Membership;
}

/** `user_id` of a per-user list: empty or the caller's own id; anything else is PERMISSION_DENIED. */
export function requireSelf(field: string, userId: string, callerId: string): string {
  if (userId !== "" && userId !== callerId) {
    throw new ConnectError(`${field}: only your own list`, Code.PermissionDenied);
  }
  return callerId;
}
