import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  ConversationKind,
  ConversationSchema,
  CursorMoveSchema,
  MemberSchema,
  MemberState,
  Role as RolePb,
  type Conversation as ConversationPb,
  type CursorMove as CursorMovePb,
  type Member as MemberPb,
} from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { Role as ClientRolePb } from "../../../gen/parley/client/v1/types_pb.js";
import type { Conversation, ConversationKind as Kind, CursorMove, Member, Role } from "./model.js";

export function conversationToProto(c: Conversation): ConversationPb {
  return create(ConversationSchema, {
    conversationId: c.conversationId,
    kind: kindToProto(c.kind),
    memberIds: c.memberIds,
    createdAt: timestampFromMs(c.createdAtMs),
    version: BigInt(c.version),
    name: c.name,
    topic: c.topic,
    createdBy: c.createdBy,
    memberCount: c.memberCount,
    blockedUserIds: c.blockedUserIds,
  });
}

export function kindToProto(k: Kind): ConversationKind {
  return k === "direct" ? ConversationKind.DIRECT : ConversationKind.GROUP;
}

export function cursorMoveToProto(m: CursorMove): CursorMovePb {
  return create(CursorMoveSchema, {
    userId: m.userId,
    deviceId: m.deviceId,
    conversationId: m.conversationId,
    kind: kindToProto(m.kind),
    memberIds: m.memberIds,
    memberCount: m.memberCount,
    deliveredFrom: BigInt(m.deliveredFrom),
    deliveredTo: BigInt(m.deliveredTo),
    readFrom: BigInt(m.readFrom),
    readTo: BigInt(m.readTo),
  });
}

export function memberToProto(m: Member): MemberPb {
  return create(MemberSchema, {
    userId: m.userId,
    role: roleToProto(m.role),
    state: m.state === "active" ? MemberState.ACTIVE : MemberState.LEFT,
    joinedAt: timestampFromMs(m.joinedAtMs),
    leftSeq: BigInt(m.leftSeq),
    readSeq: BigInt(m.readSeq),
    muted: m.muted,
  });
}

export function roleToProto(r: Role): RolePb {
  return r === "owner" ? RolePb.OWNER : r === "admin" ? RolePb.ADMIN : RolePb.MEMBER;
}

/** The same role in the public API's enum (events carry it). */
export function roleToClientProto(r: Role): ClientRolePb {
  return r === "owner" ? ClientRolePb.OWNER : r === "admin" ? ClientRolePb.ADMIN : ClientRolePb.MEMBER;
}

/** Undefined for ROLE_UNSPECIFIED and unknown values. */
export function roleFromProto(r: RolePb): Role | undefined {
  switch (r) {
    case RolePb.OWNER:
      return "owner";
    case RolePb.ADMIN:
      return "admin";
    case RolePb.MEMBER:
      return "member";
    default:
      return undefined;
  }
}
