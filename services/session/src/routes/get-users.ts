import { create } from "@bufbuild/protobuf";
import { GetUsersResponseSchema, type GetUsersRequest, type GetUsersResponse } from "../../../../gen/parley/session/v1/session_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { SessionContext } from "../context.js";
import { userMsg } from "../convert.js";
import { isValidUsername, normalizeUsername } from "../inputs.js";

/** Most ids plus usernames one call may ask for. */
export const GET_USERS_MAX = 500;

export async function getUsers(ctx: SessionContext, req: GetUsersRequest): Promise<GetUsersResponse> {
  if (req.userIds.length + req.usernames.length > GET_USERS_MAX) {
    throw invalid("user_ids", `at most ${GET_USERS_MAX} user ids and usernames in one call`);
  }
  const userIds = req.userIds.map((id, i) => requireUuid(`user_ids[${i}]`, id));
  // A name that is not a valid username cannot belong to anyone: it is simply not found.
  const usernames = req.usernames.map(normalizeUsername).filter(isValidUsername);
  const users = await ctx.accounts.getUsers(userIds, usernames);
  return create(GetUsersResponseSchema, { users: users.map(userMsg) });
}
