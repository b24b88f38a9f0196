import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { UserDirectory } from "./user-directory.js";

/** Users per GetUsers call (the session service's maximum). */
const GET_USERS_MAX = 500;

/** UserDirectory over the session service's GetUsers: the display name, else the username. */
export class GrpcUserDirectory implements UserDirectory {
  private readonly client: Client<typeof SessionService>;

  constructor(
    transport: Transport,
    private readonly timeoutMs = 10_000,
  ) {
    this.client = createClient(SessionService, transport);
  }

  async displayNames(userIds: readonly string[], signal?: AbortSignal): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const ids = [...new Set(userIds)];
    for (let i = 0; i < ids.length; i += GET_USERS_MAX) {
      const res = await this.client.getUsers(
        { userIds: ids.slice(i, i + GET_USERS_MAX) },
        { timeoutMs: this.timeoutMs, ...(signal ? { signal } : {}) },
      );
      for (const u of res.users) out.set(u.userId, u.displayName || u.username);
    }
    return out;
  }
}
