import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import type { Instance } from "../../../lib/discovery/discovery.js";
import { StaticDiscovery } from "../../../lib/discovery/discovery-static.js";
import { assignGateway, pickGateway } from "../src/routes/assign-gateway.js";

const gw = (id: string, load: number): Instance => ({ kind: "gateway", id, url: `http://i/${id}`, publicUrl: `http://p/${id}`, load });

describe("gateway assignment", () => {
  it("picks the least loaded gateway", () => {
    assert.equal(pickGateway([gw("a", 10), gw("b", 3), gw("c", 7)], randomUUID())?.id, "b");
  });

  it("spreads users over gateways within 10% of the least load, stably per user", () => {
    const gws = [gw("a", 1000), gw("b", 1050), gw("c", 2000)];
    const picks = new Map<string, number>();
    for (let i = 0; i < 200; i++) {
      const user = randomUUID();
      const first = pickGateway(gws, user)!.id;
      assert.equal(pickGateway(gws, user)!.id, first, "the same user gets the same answer");
      picks.set(first, (picks.get(first) ?? 0) + 1);
    }
    assert.equal(picks.get("c"), undefined, "never the overloaded one");
    assert.ok((picks.get("a") ?? 0) > 50 && (picks.get("b") ?? 0) > 50, `both near-least gateways are used: ${[...picks]}`);
  });

  it("says nothing without gateways or discovery, and rejects malformed user ids", async () => {
    assert.equal(pickGateway([], randomUUID()), undefined);
    assert.deepEqual(await assignGateway(undefined)({ userId: randomUUID() } as never), { gatewayId: "", publicUrl: "" });
    const d = new StaticDiscovery([gw("only", 5)]);
    assert.deepEqual(await assignGateway(d)({ userId: randomUUID() } as never), { gatewayId: "only", publicUrl: "http://p/only" });
    await assert.rejects(assignGateway(d)({ userId: "nope" } as never));
  });
});
