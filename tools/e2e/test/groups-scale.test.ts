import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { DeliveryService } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import { dialGrpc, type OwnedTransport } from "../../../lib/rpc.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../population.js";

const MEMBERS = 5000;
const CONNECTED = 300;
const MESSAGES = 5;

const backends = realClusterBackends();

if (backends) {
  describe(`a ${MEMBERS}-member group on the cluster (real backends, 2 gateways)`, () => {
    let cluster: Cluster;
    let accounts: Account[];
    let conversationId: string;
    let clients: FrameClient[] = [];
    const transports: OwnedTransport[] = [];

    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: {
          ...CHEAP_PASSWORD_HASHING,
        },
      });
    });
    after(async () => {
      await Promise.all(clients.map((c) => c.close()));
      for (const t of transports) t.close();
      await cluster?.stop();
    });

    /** Deliver calls each gateway has served so far, by gateway id. */
    async function deliverCalls(): Promise<Map<string, bigint>> {
      const out = new Map<string, bigint>();
      for (const g of cluster.discovery.list("gateway")) {
        const t = dialGrpc(g.url);
        transports.push(t);
        out.set(g.id, (await createClient(DeliveryService, t).getStats({})).deliverCalls);
      }
      return out;
    }

    it(`signs up ${MEMBERS} accounts and puts them in one group`, async () => {
      const publicUrl = cluster.gatewayUrls()[0]!;
      accounts = await signUpMany(publicUrl, MEMBERS, "scale");
      conversationId = await createGroup(publicUrl, accounts[0]!, accounts);
      const { conversation } = await api(publicUrl, accounts[MEMBERS - 1]!.token).groups.getGroup({ conversationId });
      assert.equal(conversation?.memberCount, MEMBERS);
    });

    it(`delivers each message to all ${CONNECTED - 1} other connected members with one Deliver per gateway`, async () => {
      const gateways = cluster.discovery.list("gateway");
      assert.equal(gateways.length, 2);
      clients = await mapLimit(accounts.slice(0, CONNECTED), 20, (a, i) =>
        FrameClient.connect(`${gateways[i % 2]!.publicUrl!.replace(/^http/, "ws")}/ws`, a.token),
      );
      const sender = clients[0]!;
      const before = await deliverCalls();
      for (let n = 0; n < MESSAGES; n++) {
        const body = `to everyone ${n} ${randomUUID()}`;
        sender.send({ ref: n + 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } });
        await sender.waitFor(`ack ${n}`, (f) => f.ref === n + 1 && f.kind.case === "ack");
        await Promise.all(
          clients.slice(1).map((c) => c.waitFor(`message ${n}`, (f) => f.kind.case === "message" && f.kind.value.body === body)),
        );
      }
      const afterCalls = await deliverCalls();
      for (const g of gateways) {
        assert.equal(afterCalls.get(g.id)! - before.get(g.id)!, BigInt(MESSAGES), `${g.id}: one Deliver per message`);
      }
      for (const c of clients.slice(1)) {
        const bodies = c.frames.flatMap((f) => (f.kind.case === "message" && f.kind.value.body.startsWith("to everyone") ? [f.kind.value.body] : []));
        assert.equal(bodies.length, MESSAGES, "each message once, nothing twice");
      }
      const errors = sender.frames.filter((f) => f.kind.case === "error");
      assert.deepEqual(errors, []);
      // The sender's own device got acks, not copies.
      assert.equal(sender.frames.filter((f) => f.kind.case === "message" && f.kind.value.body.startsWith("to everyone")).length, 0);
    });
  });
}
