/**
 * End-to-end checks against a RUNNING cluster of two or more gateways (the Tiltfile's
 * `cluster-smoke` resource in both modes, or by hand against `npm run cluster`):
 *
 *   node --import tsx tools/e2e/cluster-smoke.ts http://127.0.0.1:17000,http://127.0.0.1:17001
 *
 * (or PARLEY_SMOKE_GATEWAYS=url,url). Fresh users, one per run, so it can run again and
 * again on the same cluster. Each check waits for events with a deadline, never sleeps:
 *   1. the gateways are distinct live instances; AssignGateway names one of them;
 *   2. a 1:1 message each way between users on different gateways;
 *   3. a group message fans out across both gateways;
 *   4. presence: a follower on gateway 1 sees a user on gateway 2 online, then offline;
 *   5. resume: that user comes back on the OTHER gateway and gets exactly the messages it
 *      missed (1:1 and group), then resume_done, then live messages again.
 * Exits 0 when all pass, 1 with the failing check otherwise.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { PresenceState, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";
import { api, FrameClient } from "./harness.js";

const DEADLINE_MS = 15_000;

const urls = (process.argv[2] ?? process.env.PARLEY_SMOKE_GATEWAYS ?? "")
  .split(",")
  .map((s) => s.trim().replace(/\/$/, ""))
  .filter(Boolean);
if (urls.length < 2 || new Set(urls).size !== urls.length) {
  console.error("usage: cluster-smoke.ts URL,URL[,...]  (two or more distinct gateway base URLs)");
  process.exit(2);
}
const [gw1, gw2] = urls as [string, string];
const wsUrl = (publicUrl: string) => `${publicUrl.replace(/^http/, "ws")}/ws`;

const started = Date.now();
let passed = 0;
async function check(name: string, fn: () => Promise<void>): Promise<void> {
  const t0 = Date.now();
  try {
    await fn();
  } catch (err) {
    console.error(`not ok - ${name}`);
    throw err;
  }
  passed++;
  console.log(`ok ${passed} - ${name} (${Date.now() - t0} ms)`);
}

const open: FrameClient[] = [];
async function connect(publicUrl: string, token: string): Promise<FrameClient> {
  const c = await FrameClient.connect(wsUrl(publicUrl), token);
  open.push(c);
  return c;
}

function gatewayOf(c: FrameClient): string {
  const hello = c.frames[0];
  assert.ok(hello?.kind.case === "hello", "the first frame is hello");
  return hello.kind.value.gatewayId;
}

let ref = 0;
/** Sends `body` and resolves with the acknowledged seq. */
async function send(c: FrameClient, conversationId: string, body: string): Promise<bigint> {
  const r = ++ref;
  c.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body } } });
  const answer = await c.waitFor(`the answer to send ${r} (${body})`, (f) => f.ref === r && (f.kind.case === "ack" || f.kind.case === "error"), DEADLINE_MS);
  if (answer.kind.case !== "ack") assert.fail(`send "${body}" refused: ${answer.kind.case === "error" ? answer.kind.value.message : answer.kind.case}`);
  return answer.kind.value.seq;
}

/** The messages of `conversationId` among `frames`. */
function received(frames: readonly ServerFrame[], conversationId: string): { seq: bigint; body: string }[] {
  return frames.flatMap((f) => (f.kind.case === "message" && f.kind.value.conversationId === conversationId ? [{ seq: f.kind.value.seq, body: f.kind.value.body }] : []));
}

function waitMessage(c: FrameClient, conversationId: string, body: string): Promise<ServerFrame> {
  return c.waitFor(`"${body}"`, (f) => f.kind.case === "message" && f.kind.value.conversationId === conversationId && f.kind.value.body === body, DEADLINE_MS);
}

function latestPresence(c: FrameClient, userId: string): PresenceState | undefined {
  let state: PresenceState | undefined;
  for (const f of c.frames) if (f.kind.case === "presence" && f.kind.value.userId === userId) state = f.kind.value.state;
  return state;
}

try {
  const tag = randomUUID().slice(0, 8);
  const password = `pw-${randomUUID()}`;
  const signUp = async (name: string) => {
    const res = await api(gw1).auth.signUp({ username: `smoke-${name}-${tag}`, password });
    return { userId: res.user!.userId, token: res.tokens!.accessToken };
  };
  const [alice, bob, carol] = await Promise.all([signUp("alice"), signUp("bob"), signUp("carol")]);

  let a!: FrameClient, b!: FrameClient, c!: FrameClient;
  await check(`two live gateways (${gw1}, ${gw2}), AssignGateway names one of them`, async () => {
    for (const url of [gw1, gw2]) {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(DEADLINE_MS) });
      assert.equal(res.status, 200, `${url}/healthz`);
    }
    a = await connect(gw1, alice.token);
    b = await connect(gw2, bob.token);
    c = await connect(gw2, carol.token);
    assert.notEqual(gatewayOf(a), gatewayOf(b), "alice and bob are on different gateways");
    const assigned = await api(gw2, alice.token).auth.assignGateway({});
    assert.ok(urls.includes(assigned.publicUrl.replace(/\/$/, "")), `AssignGateway gave ${assigned.publicUrl}, one of ${urls.join(", ")}`);
  });

  let direct = "";
  await check("1:1 across gateways: alice (gateway 1) ⇄ bob (gateway 2)", async () => {
    const { conversation } = await api(gw1, alice.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: bob.userId } });
    direct = conversation!.conversationId;
    await send(a, direct, "hello bob");
    await waitMessage(b, direct, "hello bob");
    await send(b, direct, "hello alice");
    await waitMessage(a, direct, "hello alice");
  });

  let group = "";
  await check("group across gateways: alice's message reaches bob and carol, carol's reaches alice and bob", async () => {
    const { conversation } = await api(gw1, alice.token).groups.createGroup({ name: `smoke ${tag}`, memberIds: [bob.userId, carol.userId] });
    group = conversation!.conversationId;
    await send(a, group, "hello group");
    await Promise.all([waitMessage(b, group, "hello group"), waitMessage(c, group, "hello group")]);
    await send(c, group, "carol here");
    await Promise.all([waitMessage(a, group, "carol here"), waitMessage(b, group, "carol here")]);
  });

  // Bob's cursors as an up-to-date device holds them, before he goes away.
  const cursors = await Promise.all(
    [direct, group].map(async (conversationId) => {
      const { messages } = await api(gw2, bob.token).chat.getHistory({ conversationId, limit: 1 });
      return { conversationId, seq: messages[0]?.seq ?? 0n };
    }),
  );

  await check("presence across gateways: alice sees bob online, then offline when he disconnects", async () => {
    a.send({ ref: ++ref, kind: { case: "subscribePresence", value: { addUserIds: [bob.userId] } } });
    await a.signal.until("bob ONLINE at alice", () => latestPresence(a, bob.userId) === PresenceState.ONLINE, DEADLINE_MS);
    await b.close();
    await a.signal.until("bob OFFLINE at alice", () => latestPresence(a, bob.userId) === PresenceState.OFFLINE, DEADLINE_MS);
  });

  await check("resume on the other gateway: bob, back on gateway 1, gets exactly what he missed, then live messages", async () => {
    const missed = new Map<string, bigint[]>([
      [direct, []],
      [group, []],
    ]);
    for (let i = 0; i < 3; i++) missed.get(direct)!.push(await send(a, direct, `while away ${i}`));
    for (let i = 0; i < 2; i++) missed.get(group)!.push(await send(c, group, `group while away ${i}`));

    const back = await connect(gw1, bob.token);
    assert.equal(gatewayOf(back), gatewayOf(a), "bob is back on the other gateway");
    const r = ++ref;
    back.send({ ref: r, kind: { case: "resume", value: { cursors } } });
    const done = await back.waitFor("resume_done", (f) => f.ref === r && f.kind.case === "resumeDone", DEADLINE_MS);
    assert.ok(done.kind.case === "resumeDone");
    assert.deepEqual(
      { complete: done.kind.value.complete, messages: done.kind.value.messages },
      { complete: true, messages: 5 },
      "resume_done: complete, 5 messages",
    );
    const doneAt = back.frames.indexOf(done);
    for (const [conversationId, seqs] of missed) {
      assert.deepEqual(
        received(back.frames.slice(0, doneAt), conversationId).map((m) => m.seq),
        seqs,
        `conversation ${conversationId}: each missed message once, in order`,
      );
    }
    await send(a, direct, "welcome back");
    await waitMessage(back, direct, "welcome back");
    assert.deepEqual(
      received(back.frames.slice(doneAt + 1), direct).map((m) => m.body),
      ["welcome back"],
      "after resume_done: only the live message",
    );
    await a.signal.until("bob ONLINE again at alice", () => latestPresence(a, bob.userId) === PresenceState.ONLINE, DEADLINE_MS);
  });

  for (const client of open) {
    const errors = client.frames.filter((f) => f.kind.case === "error");
    assert.deepEqual(errors, [], "no error frames");
  }
  console.log(`cluster-smoke: ${passed} passed, 0 failed in ${((Date.now() - started) / 1000).toFixed(1)} s (${urls.join(", ")})`);
} catch (err) {
  console.error(err);
  console.log(`cluster-smoke: ${passed} passed, 1 failed`);
  process.exitCode = 1;
} finally {
  await Promise.all(open.map((c) => c.close()));
}
