import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import type { ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { DeliveryService } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import { dialGrpc, type OwnedTransport } from "../../../lib/rpc.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();

function typingOf(c: FrameClient, conversationId: string) {
  return c.frames.flatMap((f) => (f.kind.case === "typing" && f.kind.value.conversationId === conversationId ? [f.kind.value] : []));
}

if (backends) {
  describe("typing indicators on the cluster (real backends, 2 gateways)", () => {
    let cluster: Cluster;
    let people: Account[];
    const clients = new Map<string, FrameClient>();
    const transports: OwnedTransport[] = [];

    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: { ...CHEAP_PASSWORD_HASHING },
      });
      people = await signUpMany(cluster.gatewayUrls()[0]!, 4, "typing");
      const gateways = cluster.discovery.list("gateway");
      for (const [i, p] of people.entries()) {
        clients.set(p.userId, await FrameClient.connect(`${gateways[i % 2]!.publicUrl!.replace(/^http/, "ws")}/ws`, p.token));
      }
    });
    after(async () => {
      for (const c of clients.values()) await c.close();
      for (const t of transports) t.close();
      await cluster?.stop();
    });

    const typing = (c: FrameClient, conversationId: string, stopped = false, ref = 0) =>
      c.send({ ref, kind: { case: "typing", value: { conversationId, stopped } } });

    async function typingStats(): Promise<{ forwarded: bigint; dropped: bigint }> {
      let forwarded = 0n;
      let dropped = 0n;
      for (const g of cluster.discovery.list("gateway")) {
        const t = dialGrpc(g.url);
        transports.push(t);
        const s = await createClient(DeliveryService, t).getStats({});
        forwarded += s.typingForwarded;
        dropped += s.typingDropped;
      }
      return { forwarded, dropped };
    }

    it("1:1: the peer sees typing and its stop; a flood is cut to one event per 3 s and counted", async () => {
      const [alice, bob] = people as [Account, Account];
      const a = clients.get(alice.userId)!;
      const b = clients.get(bob.userId)!;
      const { conversation } = await api(cluster.gatewayUrls()[0]!, alice.token).chat.openDirectConversation({
        peer: { case: "peerUserId", value: bob.userId },
      });
      const id = conversation!.conversationId;
      const before = await typingStats();
      for (let i = 0; i < 50; i++) typing(a, id);
      typing(a, id, true);
      const stop = await b.waitFor("the stop", (f: ServerFrame) => f.kind.case === "typing" && f.kind.value.stopped);
      assert.equal(stop.kind.case === "typing" && stop.kind.value.userId, alice.userId);
      const seen = typingOf(b, id);
      assert.deepEqual(
        seen.map((t) => t.stopped),
        [false, true],
        "one typing event, then the stop: the other 49 were dropped",
      );
      assert.equal(seen[0]!.expiresInMs, 5000);
      assert.equal(typingOf(a, id).length, 0, "the typing device gets nothing back");
      const after = await typingStats();
      assert.equal(after.dropped - before.dropped, 49n);
      assert.equal(after.forwarded - before.forwarded, 2n);
    });

    it("group: members see it, a non-member gets nothing and cannot type there", async () => {
      const [alice, bob, carol, dave] = people as [Account, Account, Account, Account];
      const { conversation } = await api(cluster.gatewayUrls()[0]!, alice.token).groups.createGroup({
        name: "typists",
        memberIds: [bob.userId, carol.userId],
      });
      const id = conversation!.conversationId;
      // Dave types into the group he is not in: dropped by the router, nobody sees it.
      typing(clients.get(dave.userId)!, id);
      // The members' devices were subscribed when the group was created (they were connected).
      typing(clients.get(alice.userId)!, id);
      for (const p of [bob, carol]) {
        const f = await clients.get(p.userId)!.waitFor(`typing at ${p.username}`, (x: ServerFrame) => x.kind.case === "typing" && x.kind.value.conversationId === id);
        assert.equal(f.kind.case === "typing" && f.kind.value.userId, alice.userId);
      }
      // A message after it (same router) proves nothing else is on its way to Dave.
      const ref = 777;
      clients.get(alice.userId)!.send({ ref, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: id, body: "after typing" } } });
      await clients.get(bob.userId)!.waitFor("the message", (x: ServerFrame) => x.kind.case === "message" && x.kind.value.body === "after typing");
      assert.equal(typingOf(clients.get(dave.userId)!, id).length, 0);
      assert.deepEqual(typingOf(clients.get(bob.userId)!, id).map((t) => t.userId), [alice.userId], "Dave's event was not forwarded");
    });

    it("a typing frame with a bad conversation id gets INVALID_ARGUMENT; the connection survives", async () => {
      const c = clients.get(people[0]!.userId)!;
      typing(c, "not-a-uuid", false, 42);
      const err = await c.waitFor("the error", (f: ServerFrame) => f.ref === 42);
      assert.equal(err.kind.case, "error");
      c.send({ ref: 43, kind: { case: "ping", value: { nonce: 1n } } });
      await c.waitFor("pong", (f: ServerFrame) => f.ref === 43 && f.kind.case === "pong");
    });
  });
}
