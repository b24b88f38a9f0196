/** Fake backends of a GatewayCore for the gateway's tests over real uWS sockets. */
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { SessionService } from "../../gen/parley/session/v1/session_service_pb.js";
import type { Logger } from "../../lib/logger.js";
import type { ConnectionRegistry } from "../../lib/registry/connection-registry.js";
import { fakeTokenSubject } from "../../lib/testing/tokens.js";
import type { GatewayConfig } from "../src/config.js";
import { GatewayCore } from "../src/core/gateway-core.js";

/** A groups service that lists each user's groups (none by default) and takes read cursors. */
export function fakeGroups(groupsOf: (userId: string) => string[] = () => []) {
  return createClient(
    GroupsService,
    createRouterTransport((r) =>
      r.service(GroupsService, {
        listUserGroupIds: (req) => ({ users: req.userIds.map((userId) => ({ userId, conversationIds: groupsOf(userId) })) }),
        advanceReadCursors: () => ({}),
      }),
    ),
  );
}

/**
 * A session service that accepts `fakeAccessToken`s (lib/testing/tokens.ts) and refuses
 * anything else; `before` runs first on every call (to hold or fail it).
 */
export function fakeSession(before?: (token: string) => Promise<void> | void) {
  return createClient(
    SessionService,
    createRouterTransport((r) =>
      r.service(SessionService, {
        authenticate: async (req) => {
          await before?.(req.accessToken);
          const subject = fakeTokenSubject(req.accessToken);
          if (!subject) throw new ConnectError("invalid token signature", Code.Unauthenticated);
          return { principal: { ...subject, sessionId: `s-${subject.deviceId}` } };
        },
      }),
    ),
  );
}

/** A core with fake session and groups services and no router (sends fail with UNAVAILABLE). */
export function routerlessCore(
  cfg: GatewayConfig,
  deps: { registry: ConnectionRegistry; logger: Logger; session?: ReturnType<typeof fakeSession>; groups?: ReturnType<typeof fakeGroups> },
): GatewayCore {
  return new GatewayCore(cfg, {
    session: deps.session ?? fakeSession(),
    send: async () => {
      throw new ConnectError("no router here", Code.Unavailable);
    },
    presence: undefined,
    groups: deps.groups ?? fakeGroups(),
    registry: deps.registry,
    clock: Date.now,
    logger: deps.logger,
  });
}
