import { create } from "@bufbuild/protobuf";
import { LogOutResponseSchema, type LogOutRequest, type LogOutResponse } from "../../../../gen/parley/session/v1/session_service_pb.js";
import { invalid } from "../../../../lib/validate.js";
import type { SessionContext } from "../context.js";

export async function logOut(ctx: SessionContext, req: LogOutRequest): Promise<LogOutResponse> {
  if (req.accessToken === "") throw invalid("access_token", "must not be empty");
  await ctx.accounts.logOut(req.accessToken);
  return create(LogOutResponseSchema, {});
}
