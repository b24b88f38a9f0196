import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { PresenceService, PresenceState } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { inProcess } from "../../../lib/rpc.js";
import { loadConfig } from "../src/config.js";
import { PresenceContext } from "../src/context.js";
import { MemoryPresenceStore } from "../src/presence-store-memory.js";
import { presenceRoutes } from "../src/routes.js";
import { describePresenceStore } from "./presence-store.contract.js";

describePresenceStore("memory (embedded)", 60_000, async () => new MemoryPresenceStore(60_000));

describe("PresenceService", () => {
  let now = 1_800_000_000_000;
  let ctx: PresenceContext;
  let client: Client<typeof PresenceService>;
  before(async () => {
    ctx = await PresenceContext.fromConfig(loadConfig({ PARLEY_PRESENCE_TTL_SECONDS: "30" }), {
      clock: () => now,
      logger: createLogger("presence", "silent"),
    });
    client = createClient(PresenceService, inProcess(presenceRoutes(ctx)));
  });
  after(() => ctx.close());

  it("reports and reads presence through the API", async () => {
    const [a, b] = [randomUuid(), randomUuid()];
    await client.reportConnections({ gatewayId: "gw-1", onlineUserIds: [a, b] });
    now += 1000;
    await client.reportConnections({ gatewayId: "gw-1", offlineUserIds: [b] });
    const res = await client.getPresence({ userIds: [a, b] });
    assert.deepEqual(
      res.presences.map((p) => [p.userId, p.state]),
      [
        [a, PresenceState.ONLINE],
        [b, PresenceState.OFFLINE],
      ],
    );
    now += 31_000;
    assert.equal((await client.getPresence({ userIds: [a] })).presences[0]?.state, PresenceState.OFFLINE);
  });

  it("rejects malformed ids and empty gateway ids", async () => {
    const bad = async (p: Promise<unknown>) =>
      assert.rejects(p, (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
    await bad(client.reportConnections({ gatewayId: "", onlineUserIds: [] }));
    await bad(client.reportConnections({ gatewayId: "gw", onlineUserIds: ["not-a-uuid"] }));
    await bad(client.getPresence({ userIds: ["x"] }));
  });
});
