/** What a host (the standalone main.ts or the one-process platform) needs to run the message store. */
export { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
export { loadConfig, type MessageStoreConfig } from "./config.js";
export { MessageStoreContext, type MessageStoreOverrides } from "./context.js";
export { messageStoreRoutes } from "./routes.js";
export type { MessageRepository, StoredMessage } from "./message-repository.js";
