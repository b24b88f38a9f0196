import type { ListDeadLettersRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { pageLimit } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import { deadLetterToProto } from "../convert.js";

export function listDeadLetters(ctx: NotifyContext) {
  return async (req: ListDeadLettersRequest) => {
    const limit = pageLimit("limit", req.limit, 100, 1000);
    return { deadLetters: (await ctx.store.listDeadLetters(limit)).map(deadLetterToProto) };
  };
}
