import { create } from "@bufbuild/protobuf";
import { RefreshResponseSchema, type RefreshRequest, type RefreshResponse } from "../../../../gen/parley/session/v1/session_service_pb.js";
import { invalid } from "../../../../lib/validate.js";
import type { SessionContext } from "../context.js";
import { tokensMsg } from "../convert.js";

export async function refresh(ctx: SessionContext, req: RefreshRequest): Promise<RefreshResponse> {
  if (req.refreshToken === "") throw invalid("refresh_token", "must not be empty");
  const tokens = await ctx.accounts.refresh(req.refreshToken);
  return create(RefreshResponseSchema, { tokens: tokensMsg(tokens) });
}
