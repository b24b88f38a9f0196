import { create } from "@bufbuild/protobuf";
import { SignUpResponseSchema, type SignUpRequest, type SignUpResponse } from "../../../../gen/parley/session/v1/session_service_pb.js";
import type { SessionContext } from "../context.js";
import { tokensMsg, userMsg } from "../convert.js";
import { displayNameOrDefault, optionalDeviceId, requirePassword, requireUsername } from "../inputs.js";

export async function signUp(ctx: SessionContext, req: SignUpRequest): Promise<SignUpResponse> {
  const username = requireUsername("username", req.username);
  const password = requirePassword("password", req.password);
  const displayName = displayNameOrDefault("display_name", req.displayName, username);
  const deviceId = optionalDeviceId("device_id", req.deviceId);
  const { user, tokens } = await ctx.accounts.signUp({ username, password, displayName, deviceId });
  return create(SignUpResponseSchema, { user: userMsg(user), tokens: tokensMsg(tokens) });
}
