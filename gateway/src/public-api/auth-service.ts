import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "../../../gen/parley/client/v1/auth_service_pb.js";
import { publicTokens, publicUser } from "./convert.js";
import { bearerToken, caller, type PublicApiDeps } from "./deps.js";

/** The public account API: a thin edge over the session service. */
export function authService(deps: PublicApiDeps): ServiceImpl<typeof AuthService> {
  return {
    async signUp(req) {
      const res = await deps.session.signUp({
        username: req.username,
        password: req.password,
        displayName: req.displayName,
        deviceId: req.deviceId,
      });
      return { user: publicUser(res.user), tokens: publicTokens(res.tokens) };
    },
    async logIn(req) {
      const res = await deps.session.logIn({ username: req.username, password: req.password, deviceId: req.deviceId });
      return { user: publicUser(res.user), tokens: publicTokens(res.tokens) };
    },
    async refresh(req) {
      const res = await deps.session.refresh({ refreshToken: req.refreshToken });
      return { tokens: publicTokens(res.tokens) };
    },
    async logOut(_req, ctx) {
      const token = bearerToken(ctx);
      await deps.session.logOut({ accessToken: token });
      // The session service verified the token's signature before revoking it.
      const sid = sessionIdOf(token);
      if (sid) deps.sessionRevoked(sid);
      return {};
    },
    async assignGateway(_req, ctx) {
      const me = await caller(deps, ctx);
      const assigned = await deps.session.assignGateway({ userId: me.userId });
      const gw = assigned.gatewayId ? assigned : deps.self();
      return { gatewayId: gw.gatewayId, publicUrl: gw.publicUrl, wsUrl: `${gw.publicUrl.replace(/^http/, "ws")}/ws` };
    },
    async me(_req, ctx) {
      const me = await caller(deps, ctx);
      const { users } = await deps.session.getUsers({ userIds: [me.userId] });
      return { user: publicUser(users[0]), deviceId: me.deviceId, sessionId: me.sessionId };
    },
  };
}

/** The `sid` claim of a JWT already verified elsewhere. */
function sessionIdOf(token: string): string | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8")) as { sid?: unknown };
    return typeof payload.sid === "string" ? payload.sid : undefined;
  } catch {
    return undefined;
  }
}
