import { Code, ConnectError, type Client, type HandlerContext } from "@connectrpc/connect";
import type { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import type { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Principal } from "../core/connection.js";

/** What the public API handlers call: the internal services, through generated clients. */
export interface PublicApiDeps {
  session: Client<typeof SessionService>;
  groups: Client<typeof GroupsService>;
  messagestore: Client<typeof MessageStoreService>;
  notify: Client<typeof NotifyService>;
  authenticate(token: string): Promise<Principal>;
  /** The session was revoked: close its connections on this gateway. */
  sessionRevoked(sessionId: string): void;
  /** This gateway, for clients when there is no discovery to choose from. */
  self(): { gatewayId: string; publicUrl: string };
}

/** The bearer token of a Connect call, or Unauthenticated. */
export function bearerToken(ctx: HandlerContext): string {
  const header = ctx.requestHeader.get("authorization") ?? "";
  const m = /^Bearer\s+(\S+)$/i.exec(header);
  if (!m) throw new ConnectError("missing Authorization: Bearer <access token>", Code.Unauthenticated);
  return m[1]!;
}

export function caller(deps: PublicApiDeps, ctx: HandlerContext): Promise<Principal> {
  return deps.authenticate(bearerToken(ctx));
}
