import { create } from "@bufbuild/protobuf";
import {
  AuthenticateResponseSchema,
  type AuthenticateRequest,
  type AuthenticateResponse,
} from "../../../../gen/parley/session/v1/session_service_pb.js";
import { invalid } from "../../../../lib/validate.js";
import type { SessionContext } from "../context.js";
import { principalMsg } from "../convert.js";

/** Hot path: the gateway calls it on every WebSocket upgrade and public API call. */
export async function authenticate(ctx: SessionContext, req: AuthenticateRequest): Promise<AuthenticateResponse> {
  if (req.accessToken === "") throw invalid("access_token", "must not be empty");
  const claims = await ctx.accounts.authenticate(req.accessToken);
  return create(AuthenticateResponseSchema, { principal: principalMsg(claims) });
}
