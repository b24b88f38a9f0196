import { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import type { MessageStoreContext } from "./context.js";
import { append, appendBatch } from "./routes/append.js";
import { getHeads } from "./routes/get-heads.js";
import { getHistory } from "./routes/get-history.js";
import { getRange } from "./routes/get-range.js";

export function messageStoreRoutes(ctx: MessageStoreContext): Routes {
  return (router) =>
    router.service(MessageStoreService, {
      append: append(ctx),
      appendBatch: appendBatch(ctx),
      getHistory: getHistory(ctx),
      getHeads: getHeads(ctx),
      getRange: getRange(ctx),
    });
}
