import { create } from "@bufbuild/protobuf";
import { LogInResponseSchema, type LogInRequest, type LogInResponse } from "../../../../gen/parley/session/v1/session_service_pb.js";
import type { SessionContext } from "../context.js";
import { tokensMsg, userMsg } from "../convert.js";
import { optionalDeviceId, requirePassword, requireUsername } from "../inputs.js";

export async function logIn(ctx: SessionContext, req: LogInRequest): Promise<LogInResponse> {
  // Malformed input is InvalidArgument: it says nothing about which accounts exist.
  const username = requireUsername("username", req.username);
  const password = requirePassword("password", req.password);
  const deviceId = optionalDeviceId("device_id", req.deviceId);
  const { user, tokens } = await ctx.accounts.logIn({ username, password, deviceId });
  return create(LogInResponseSchema, { user: userMsg(user), tokens: tokensMsg(tokens) });
}
