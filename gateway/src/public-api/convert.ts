import type { MessageInitShape } from "@bufbuild/protobuf";
import type { TokensSchema } from "../../../gen/parley/client/v1/auth_service_pb.js";
import type { UserSchema } from "../../../gen/parley/client/v1/types_pb.js";
import type { Tokens, User } from "../../../gen/parley/session/v1/session_service_pb.js";

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
