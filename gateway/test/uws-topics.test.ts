import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { ServerFrameSchema } from "../../gen/parley/client/v1/frames_pb.js";
import { DeliverRequestSchema } from "../../gen/parley/gateway/v1/delivery_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { fakeAccessToken } from "../../lib/testing/tokens.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { FrameClient } from "../../tools/e2e/harness.js";
import { loadConfig } from "../src/config.js";
import { startPublicServer, type PublicServer } from "../src/uws/server.js";
import { fakeGroups, routerlessCore } from "./fakes.js";

/** Group delivery through real uWebSockets.js topics and real WebSocket clients. */
describe("uWS topics: group frames through real sockets", () => {
  const group = randomUUID();
  const other = randomUUID();
  const logger = createLogger("test", "silent");
  const cfg = { ...loadConfig({ PARLEY_GATEWAY_PORT: "0" }), id: "gw-uws" };
  const registry = new MemoryConnectionRegistry();
  const [alice, bob, carol]: string[] = [randomUUID(), randomUUID(), randomUUID()];
  const groupsOf = new Map([
    [alice, [group]],
    [bob, [group]],
    [carol, [other]],
  ]);
  const core = routerlessCore(cfg, { registry, logger, groups: fakeGroups((userId) => groupsOf.get(userId) ?? []) });
  let server: PublicServer;
  let url: string;
  const clients: FrameClient[] = [];
  const open = async (user: string, device: string, encoding: "binary" | "json" = "binary") => {
    const c = await FrameClient.connect(url, fakeAccessToken(user, device), { encoding });
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startPublicServer(cfg, core, () => {}, logger);
    url = `ws://127.0.0.1:${server.port}/ws`;
  });
  after(async () => {
    server.stopListening();
    await core.drain();
    await Promise.all(clients.map((c) => c.waitForClose().catch(() => {})));
    await registry.close();
  });

  const frame = (body: string, conversationId = group) =>
    toBinary(ServerFrameSchema, create(ServerFrameSchema, { kind: { case: "message", value: { conversationId, seq: 1n, messageId: body, body } } }));
  const bodiesOf = (c: FrameClient) => c.frames.flatMap((f) => (f.kind.case === "message" ? [f.kind.value.body] : []));

  it("a publish reaches every subscribed device, JSON ones as JSON, except the sender's device, in order with direct frames", async () => {
    const phone = await open(alice, "alice-phone");
    const laptop = await open(alice, "alice-laptop", "json");
    const b = await open(bob, "bob-phone");
    const c = await open(carol, "carol-phone");
    const res = core.deliver(
      create(DeliverRequestSchema, {
        envelopes: [
          { topicConversationId: group, serverFrame: frame("to the group"), excludeDeviceId: "alice-phone" },
          // Marks the end: each user gets it directly, after the group frame if at all.
          { userIds: [alice, bob, carol], serverFrame: frame("direct", other) },
        ],
      }),
    );
    assert.deepEqual(res.absentTopics, []);
    for (const x of [phone, laptop, b, c]) await x.waitFor("direct frame", (f) => f.kind.case === "message" && f.kind.value.body === "direct");
    assert.deepEqual(bodiesOf(phone), ["direct"], "the sender's device is skipped");
    assert.deepEqual(bodiesOf(laptop), ["to the group", "direct"]);
    assert.deepEqual(bodiesOf(b), ["to the group", "direct"]);
    assert.deepEqual(bodiesOf(c), ["direct"], "not a member: nothing");
    assert.equal(laptop.encoding, "json");

    // Without an excluded device the sender's phone gets it too (e.g. the sender is on another gateway).
    core.deliver(create(DeliverRequestSchema, { envelopes: [{ topicConversationId: group, serverFrame: frame("again") }] }));
    for (const x of [phone, laptop, b]) await x.waitFor("again", (f) => f.kind.case === "message" && f.kind.value.body === "again");

    // A closed socket leaves its topics (uWS and the core agree).
    await b.close();
    await phone.close();
    await laptop.close();
    const last = core.deliver(create(DeliverRequestSchema, { envelopes: [{ topicConversationId: group, serverFrame: frame("nobody") }] }));
    assert.deepEqual(last.absentTopics, [group]);
  });
});
