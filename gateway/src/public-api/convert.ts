import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { TokensSchema } from "../../../gen/parley/client/v1/auth_service_pb.js";
import {
  ConversationKind,
  Role,
  type ContactSchema,
  type ConversationSchema,
  type MemberSchema,
  type UserSchema,
} from "../../../gen/parley/client/v1/types_pb.js";
import {
  ConversationKind as InternalKind,
  MemberState,
  Role as InternalRole,
  type Conversation as InternalConversation,
  type Member as InternalMember,
} from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { Head } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { Contact, Tokens, User } from "../../../gen/parley/session/v1/session_service_pb.js";
import { clientMessage } from "../../../lib/client-message.js";

/** Internal (session.v1) user → public (client.v1) user. */
export function publicUser(u: User | undefined): MessageInitShape<typeof UserSchema> | undefined {
  return u && { userId: u.userId, username: u.username, displayName: u.displayName, createdAt: u.createdAt };
}

export function publicTokens(t: Tokens | undefined): MessageInitShape<typeof TokensSchema> | undefined {
  return (
    t && {
      accessToken: t.accessToken,
      accessExpiresAt: t.accessExpiresAt,
      refreshToken: t.refreshToken,
      refreshExpiresAt: t.refreshExpiresAt,
      sessionId: t.sessionId,
      deviceId: t.deviceId,
    }
  );
}

export function publicContact(c: Contact | undefined): MessageInitShape<typeof ContactSchema> | undefined {
  return c && { user: publicUser(c.user), nickname: c.nickname, addedAt: c.addedAt };
}

const ROLES: Record<InternalRole, Role> = {
  [InternalRole.UNSPECIFIED]: Role.UNSPECIFIED,
  [InternalRole.MEMBER]: Role.MEMBER,
  [InternalRole.ADMIN]: Role.ADMIN,
  [InternalRole.OWNER]: Role.OWNER,
};

export function publicRole(r: InternalRole): Role {
  return ROLES[r] ?? Role.UNSPECIFIED;
}

/** A public role → the internal one; undefined for UNSPECIFIED and unknown values. */
export function internalRole(r: Role): InternalRole | undefined {
  switch (r) {
    case Role.MEMBER:
      return InternalRole.MEMBER;
    case Role.ADMIN:
      return InternalRole.ADMIN;
    case Role.OWNER:
      return InternalRole.OWNER;
    default:
      return undefined;
  }
}

export function publicMember(m: InternalMember): MessageInitShape<typeof MemberSchema> {
  return { userId: m.userId, role: publicRole(m.role), joinedAt: m.joinedAt };
}

export function isActive(m: InternalMember | undefined): boolean {
  return m?.state === MemberState.ACTIVE;
}

/**
 * The newest sequence number `m` may read: everything for active members, up to
 * `left_seq` for those who left (0 while their leave event is not stored yet).
 */
export function readableLastSeq(m: InternalMember | undefined, lastSeq: bigint): bigint {
  if (!m || isActive(m)) return lastSeq;
  return m.leftSeq < lastSeq ? m.leftSeq : lastSeq;
}

/**
 * An internal conversation with the caller's membership and the conversation's head →
 * the public Conversation. `head` is what the caller may see (already capped at left_seq
 * for members who left: see chat-service.ts).
 */
export function publicConversation(
  c: InternalConversation,
  m: InternalMember | undefined,
  head: Pick<Head, "lastSeq" | "lastSentAt" | "lastMessage"> | undefined,
): MessageInitShape<typeof ConversationSchema> {
  const direct = c.kind === InternalKind.DIRECT;
  const lastSeq = readableLastSeq(m, head?.lastSeq ?? 0n);
  const readSeq = m?.readSeq ?? 0n;
  return {
    conversationId: c.conversationId,
    kind: direct ? ConversationKind.DIRECT : ConversationKind.GROUP,
    memberIds: direct ? c.memberIds : [],
    lastSeq,
    createdAt: c.createdAt,
    lastActivityAt: head?.lastSentAt ?? c.createdAt,
    name: c.name,
    topic: c.topic,
    memberCount: direct ? c.memberIds.length : c.memberCount,
    role: publicRole(m?.role ?? InternalRole.UNSPECIFIED),
    active: isActive(m),
    leftSeq: m && !isActive(m) ? m.leftSeq : 0n,
    muted: m?.muted ?? false,
    readSeq,
    unreadCount: lastSeq > readSeq ? lastSeq - readSeq : 0n,
    lastMessage: head?.lastMessage ? clientMessage(head.lastMessage) : undefined,
    blocked: direct && c.blockedUserIds.length > 0,
  };
}

/** Milliseconds of a timestamp, 0 when unset. */
export function ms(t: Parameters<typeof timestampMs>[0] | undefined): number {
  return t ? timestampMs(t) : 0;
}
