import { Code, ConnectError } from "@connectrpc/connect";
import { invalid, requireText, requireUuid } from "../../../lib/validate.js";
import type { GroupTransaction } from "./conversation-store.js";
import type { Conversation, Member, Role } from "./model.js";

/** Limits of the API (see the proto and the issue). */
export const LIMITS = {
  name: 100,
  topic: 500,
  /** Users per AddMembers call. */
  addMembers: 1000,
  /**
   * Other initial members per CreateGroup: with the creator, 1,000 users join in one
   * change, the most the router takes in one ApplyConversationChange.
   */
  initialMembers: 999,
  /** Users per CheckMembers call. */
  checkMembers: 1000,
  /** Users per ListUserGroupIds call. */
  userGroupIds: 10_000,
  /** Cursors per AdvanceReadCursors call. */
  readCursors: 1000,
  /** Device cursors per AdvanceCursors call. */
  deviceCursors: 1000,
  readersDefault: 100,
  readersMax: 1000,
  /** Conversations per ListUserConversations answer. */
  userConversations: 1000,
  listMembersDefault: 100,
  listMembersMax: 1000,
  /** Push candidates per page, and users per filtered ListPushCandidates call. */
  pushCandidates: 1000,
  /** Excluded users per ListPushCandidates call. */
  pushExcluded: 100,
} as const;

/** The one answer for unknown, deleted and not-a-member: ids are no oracle. */
export function notAMember(): ConnectError {
  return new ConnectError("not a member of this conversation", Code.PermissionDenied);
}

const RANK: Record<Role, number> = { member: 1, admin: 2, owner: 3 };

export function atLeast(role: Role, min: Role): boolean {
  return RANK[role] >= RANK[min];
}

/**
 * The actor may manage the locked group with at least role `min`: PERMISSION_DENIED
 * (the same for unknown, deleted, not a member) when not an active member,
 * FAILED_PRECONDITION for a direct conversation, PERMISSION_DENIED "requires <min>"
 * for a lower role.
 */
export async function requireRole(
  tx: GroupTransaction,
  actorId: string,
  min: Role,
): Promise<{ conversation: Conversation; actor: Member }> {
  const conversation = tx.conversation;
  if (!conversation) throw notAMember();
  const [actor] = await tx.members([actorId]);
  if (!actor || actor.state !== "active") throw notAMember();
  if (conversation.kind !== "group") {
    throw new ConnectError("direct conversations cannot be managed", Code.FailedPrecondition);
  }
  if (!atLeast(actor.role, min)) throw new ConnectError(`requires ${min}`, Code.PermissionDenied);
  return { conversation, actor };
}

/** Between `min` and `max` distinct UUIDs. */
export function requireUuidList(field: string, values: readonly string[], min: number, max: number): string[] {
  if (values.length < min) throw invalid(field, min === 1 ? "must not be empty" : `must have at least ${min} entries`);
  if (values.length > max) throw invalid(field, `must have at most ${max} entries`);
  const seen = new Set<string>();
  for (const [i, v] of values.entries()) {
    requireUuid(`${field}[${i}]`, v);
    if (seen.has(v)) throw invalid(field, `duplicate user ${v}`);
    seen.add(v);
  }
  return [...values];
}

export function requireName(value: string): string {
  requireText("name", value, 1, LIMITS.name);
  if (value.trim() === "") throw invalid("name", "must not be blank");
  return value;
}

export function requireTopic(value: string): string {
  return requireText("topic", value, 0, LIMITS.topic);
}
