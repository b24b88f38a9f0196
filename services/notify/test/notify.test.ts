import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { NotifyService } from "../../../gen/parley/notify/v1/notify_service_pb.js";
import { randomUuid, UuidV7Generator } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import { loadConfig } from "../src/config.js";
import { NotifyContext } from "../src/context.js";
import { LogPushProvider } from "../src/push-provider-log.js";
import { notifyRoutes } from "../src/routes.js";

describe("NotifyService (log provider)", () => {
  const logger = createLogger("notify", "silent");
  const provider = new LogPushProvider(logger);
  let ctx: NotifyContext;
  let client: Client<typeof NotifyService>;
  before(async () => {
    ctx = await NotifyContext.fromConfig(loadConfig({}), { provider, logger });
    client = createClient(NotifyService, inProcess(notifyRoutes(ctx)));
  });
  after(() => ctx.close());

  it("hands one push per offline recipient to the provider", async () => {
    const res = await client.notifyOffline({
      userIds: [randomUuid(), randomUuid()],
      conversationId: randomUuid(),
      seq: 3n,
      messageId: new UuidV7Generator().next(),
      senderId: randomUuid(),
      preview: "hello",
    });
    assert.equal(res.queued, 2);
    assert.equal(provider.sent, 2);
  });

  it("rejects malformed requests and pushes nothing", async () => {
    const before = provider.sent;
    await assert.rejects(
      client.notifyOffline({ userIds: ["x"], conversationId: randomUuid(), seq: 1n, messageId: randomUuid(), senderId: randomUuid() }),
      (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument,
    );
    assert.equal(provider.sent, before);
  });
});
