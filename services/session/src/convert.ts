import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  ContactSchema,
  PrincipalSchema,
  TokensSchema,
  UserSchema,
  type Contact as ContactMsg,
  type Principal,
  type Tokens,
  type User as UserMsg,
} from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Contact, User } from "./account-store.js";
import type { IssuedTokens } from "./accounts.js";
import type { AccessClaims } from "./tokens.js";

/** Domain types to wire messages. */
export function userMsg(u: User): UserMsg {
  return create(UserSchema, {
    userId: u.userId,
    username: u.username,
    displayName: u.displayName,
    createdAt: timestampFromMs(u.createdAt),
  });
}

export function tokensMsg(t: IssuedTokens): Tokens {
  return create(TokensSchema, {
    accessToken: t.accessToken,
    accessExpiresAt: timestampFromMs(t.accessExpiresAt),
    refreshToken: t.refreshToken,
    refreshExpiresAt: timestampFromMs(t.refreshExpiresAt),
    sessionId: t.sessionId,
    deviceId: t.deviceId,
  });
}

export function principalMsg(c: AccessClaims): Principal {
  return create(PrincipalSchema, {
    userId: c.userId,
    deviceId: c.deviceId,
    sessionId: c.sessionId,
    expiresAt: timestampFromMs(c.expiresAt),
  });
}

export function contactMsg(c: Contact): ContactMsg {
  return create(ContactSchema, { user: userMsg(c.user), nickname: c.nickname, addedAt: timestampFromMs(c.addedAt) });
}
