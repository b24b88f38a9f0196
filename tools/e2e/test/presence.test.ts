import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ErrorCode, PresenceState } from "../../../gen/parley/client/v1/frames_pb.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { FrameClient } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();

/** Short timings so the test sees the TTL run out: entries live 2 s, gateways report every 500 ms. */
const TTL_SECONDS = 2;

/** The presence frames `c` received about `userId`: [state, last seen ms, ref]. */
function presenceOf(c: FrameClient, userId: string) {
  return c.frames.flatMap((f) =>
    f.kind.case === "presence" && f.kind.value.userId === userId
      ? [{ state: f.kind.value.state, lastSeenMs: f.kind.value.lastSeenAt ? timestampMs(f.kind.value.lastSeenAt) : 0, ref: f.ref }]
      : [],
  );
}

if (backends) {
  describe("presence on the cluster (real backends, 2 gateways, short TTL)", () => {
    let cluster: Cluster;
    let a: Account, b: Account, c: Account, d: Account, e: Account;
    let wsUrls: Map<string, string>;
    const clients: FrameClient[] = [];
    let watcher: FrameClient; // A, on gateway-1, follows B
    let jsonWatcher: FrameClient; // E, on gateway-1, JSON, follows B
    let bystander: FrameClient; // C, on gateway-1, follows nobody
    let farBystander: FrameClient; // D, on gateway-2, follows someone else
    let bOnGw2: FrameClient | undefined;

    const connect = async (acct: Account, gw: string, encoding: "binary" | "json" = "binary") => {
      const client = await FrameClient.connect(wsUrls.get(gw)!, acct.token, { encoding });
      clients.push(client);
      return client;
    };
    const states = (client: FrameClient) => presenceOf(client, b.userId).map((p) => PresenceState[p.state]);
    const waitState = (client: FrameClient, n: number, state: PresenceState, what: string) =>
      client.signal.until(what, () => {
        const got = presenceOf(client, b.userId);
        return got.length >= n && got[n - 1]!.state === state ? got[n - 1]! : undefined;
      }, 15_000);

    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: {
          ...CHEAP_PASSWORD_HASHING,
          PARLEY_PRESENCE_TTL_SECONDS: String(TTL_SECONDS),
          PARLEY_PRESENCE_REPORT_MS: "500",
          PARLEY_PRESENCE_DAMP_MS: "200",
          PARLEY_PRESENCE_SWEEP_MS: "50",
        },
      });
      wsUrls = new Map(cluster.discovery.list("gateway").map((g) => [g.id, `${g.publicUrl!.replace(/^http/, "ws")}/ws`]));
      assert.deepEqual([...wsUrls.keys()].sort(), ["gateway-1", "gateway-2"]);
      [a, b, c, d, e] = (await signUpMany(cluster.gatewayUrls()[0]!, 5, "presence")) as [Account, Account, Account, Account, Account];
      watcher = await connect(a, "gateway-1");
      jsonWatcher = await connect(e, "gateway-1", "json");
      bystander = await connect(c, "gateway-1");
      farBystander = await connect(d, "gateway-2");
    });
    after(async () => {
      for (const client of clients) await client.close();
      await cluster?.stop();
    });

    it("subscribing answers with the current state at once (B never seen: OFFLINE, no last seen)", async () => {
      watcher.send({ ref: 41, kind: { case: "subscribePresence", value: { addUserIds: [b.userId] } } });
      jsonWatcher.send({ ref: 42, kind: { case: "subscribePresence", value: { addUserIds: [b.userId] } } });
      farBystander.send({ ref: 43, kind: { case: "subscribePresence", value: { addUserIds: [a.userId] } } });
      const first = await waitState(watcher, 1, PresenceState.OFFLINE, "A: B's current state");
      assert.deepEqual(first, { state: PresenceState.OFFLINE, lastSeenMs: 0, ref: 41 });
      assert.equal((await waitState(jsonWatcher, 1, PresenceState.OFFLINE, "E: B's current state")).ref, 42);
      await farBystander.waitFor("D: A's current state", (f) => f.ref === 43 && f.kind.case === "presence");
    });

    it("B connects on the other gateway → followers get ONLINE; B sets AWAY → AWAY; B disconnects → OFFLINE with last seen", async () => {
      bOnGw2 = await connect(b, "gateway-2");
      await waitState(watcher, 2, PresenceState.ONLINE, "A: B online");
      await waitState(jsonWatcher, 2, PresenceState.ONLINE, "E (JSON): B online");

      bOnGw2.send({ ref: 1, kind: { case: "setPresence", value: { state: PresenceState.AWAY } } });
      await waitState(watcher, 3, PresenceState.AWAY, "A: B away");

      const before = Date.now();
      await bOnGw2.close();
      const off = await waitState(watcher, 4, PresenceState.OFFLINE, "A: B offline");
      assert.ok(off.lastSeenMs >= before - 1000 && off.lastSeenMs <= Date.now(), `last seen ${off.lastSeenMs} is when B left`);
      await waitState(jsonWatcher, 4, PresenceState.OFFLINE, "E: B offline");
      assert.deepEqual(bOnGw2.frames.filter((f) => f.kind.case === "error"), [], "SetPresence accepted");
    });

    it("B's gateway dies: B goes OFFLINE once the TTL runs out, last seen = its last report", async () => {
      const b2 = await connect(b, "gateway-2");
      await waitState(watcher, 5, PresenceState.ONLINE, "A: B online again");
      assert.equal(b2.closeCode, undefined);
      const killedAt = Date.now();
      await cluster.processes.find((p) => p.name === "gateway-2")!.kill();
      const off = await waitState(watcher, 6, PresenceState.OFFLINE, "A: B offline after the TTL");
      const tookMs = Date.now() - killedAt;
      assert.ok(tookMs >= TTL_SECONDS * 1000 - 600, `offline only once the TTL ran out (after ${tookMs} ms)`);
      assert.ok(off.lastSeenMs > 0 && off.lastSeenMs <= killedAt, "last seen: the last report before the gateway died");
      await waitState(jsonWatcher, 6, PresenceState.OFFLINE, "E: B offline after the TTL");
    });

    it("only followers were told: each change once, nothing to the others", () => {
      const expected = ["OFFLINE", "ONLINE", "AWAY", "OFFLINE", "ONLINE", "OFFLINE"];
      assert.deepEqual(states(watcher), expected, "A: every change exactly once");
      assert.deepEqual(states(jsonWatcher), expected, "E: the same, in JSON");
      assert.equal(bystander.frames.filter((f) => f.kind.case === "presence").length, 0, "C (same gateway, follows nobody): nothing");
      assert.deepEqual(presenceOf(farBystander, b.userId), [], "D: nothing about B");
    });

    it("a subscription over the cap (500 per connection) is refused with LIMIT_EXCEEDED and changes nothing", async () => {
      const subscribe = (ref: number, addUserIds: string[], removeUserIds: string[] = []) =>
        watcher.send({ ref, kind: { case: "subscribePresence", value: { addUserIds, removeUserIds } } });
      const answers = (ref: number) => watcher.frames.filter((f) => f.ref === ref && f.kind.case === "presence").length;
      // A follows B; 300 more fit (one frame stays under the 16 KiB frame limit).
      const first = Array.from({ length: 300 }, () => randomUUID());
      subscribe(77, first);
      await watcher.signal.until("300 states", () => answers(77) === 300);
      const more = Array.from({ length: 200 }, () => randomUUID());
      subscribe(78, more); // 1 + 300 + 200 = 501
      const err = await watcher.waitFor("limit error", (f) => f.ref === 78 && f.kind.case === "error");
      assert.equal(err.kind.case === "error" && err.kind.value.code, ErrorCode.LIMIT_EXCEEDED);
      subscribe(79, ["not-a-user-id"]);
      const bad = await watcher.waitFor("invalid error", (f) => f.ref === 79 && f.kind.case === "error");
      assert.equal(bad.kind.case === "error" && bad.kind.value.code, ErrorCode.INVALID_ARGUMENT);
      // Nothing changed: swapping B for the 200 in one frame makes exactly 500, which fits.
      subscribe(80, more, [b.userId]);
      await watcher.signal.until("200 states", () => answers(80) === 200);
      assert.equal(answers(78), 0, "the refused subscription sent no states");
      assert.deepEqual(watcher.frames.filter((f) => f.kind.case === "error").map((f) => f.ref), [78, 79]);
      assert.equal(watcher.closeCode, undefined);
    });
  });
}
