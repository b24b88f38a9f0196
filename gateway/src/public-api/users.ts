import type { User } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { PublicApiDeps } from "./deps.js";

/** The session service answers at most this many ids per GetUsers call. */
const SESSION_GET_USERS_MAX = 500;

/** The users among `ids` that exist, by id (several GetUsers calls when there are many). */
export async function existingUsers(deps: PublicApiDeps, ids: readonly string[]): Promise<Map<string, User>> {
  const unique = [...new Set(ids)];
  const chunks: string[][] = [];
  for (let i = 0; i < unique.length; i += SESSION_GET_USERS_MAX) chunks.push(unique.slice(i, i + SESSION_GET_USERS_MAX));
  const answers = await Promise.all(chunks.map((userIds) => deps.session.getUsers({ userIds })));
  return new Map(answers.flatMap((a) => a.users.map((u) => [u.userId, u] as const)));
}
