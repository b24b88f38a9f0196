/**
 * Resume end to end on the cluster (real backends, 2 gateways): a user is offline while
 * 500 messages arrive in 20 conversations (10 direct, 10 groups), reconnects to the
 * OTHER gateway, resumes with its cursors, and gets every missed message exactly once,
 * in order per conversation, most recently active conversation first, then
 * resume_done{complete}, then live messages. Also once on the one-process platform.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient, startPlatformProcess, tempDir, type RunningPlatform } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();

const wsUrl = (publicUrl: string) => `${publicUrl.replace(/^http/, "ws")}/ws`;

/** The user who goes offline and resumes, with 20 conversations and a sender for each. */
interface Scenario {
  me: Account;
  conversations: { id: string; sender: Account }[];
}

/** `directs` 1:1 conversations with as many peers, and `groups` groups of 3 (me, a peer, another), each with a sender. */
async function scenario(publicUrl: string, directs: number, groups: number): Promise<Scenario> {
  const [me, ...peers] = await signUpMany(publicUrl, 1 + Math.max(directs, groups), "resume");
  const conversations: Scenario["conversations"] = [];
  await mapLimit(peers.slice(0, directs), 8, async (p) => {
    const { conversation } = await api(publicUrl, p.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: me!.userId } });
    conversations.push({ id: conversation!.conversationId, sender: p });
  });
  await mapLimit(peers.slice(0, groups), 8, async (p, i) => {
    const id = await createGroup(publicUrl, p, [me!, peers[(i + 1) % peers.length]!], `resume group ${i}`);
    conversations.push({ id, sender: p });
  });
  return { me: me!, conversations };
}

/** The newest seq of each conversation as `me` sees it (the cursors of a device that is up to date). */
async function cursors(publicUrl: string, me: Account, ids: readonly string[]) {
  const chat = api(publicUrl, me.token).chat;
  return Promise.all(
    ids.map(async (conversationId) => {
      const { messages } = await chat.getHistory({ conversationId, limit: 1 });
      return { conversationId, seq: messages[0]?.seq ?? 0n };
    }),
  );
}

/**
 * Sends `perConversation` messages to every conversation, round by round (every
 * conversation once per round), each sender over its own connection; returns the acks
 * by conversation (seq and sent time).
 */
async function sendRounds(urls: readonly string[], s: Scenario, perConversation: number) {
  const senders = new Map<string, FrameClient>();
  let i = 0;
  for (const c of s.conversations) {
    if (!senders.has(c.sender.userId)) senders.set(c.sender.userId, await FrameClient.connect(wsUrl(urls[i++ % urls.length]!), c.sender.token));
  }
  const acks = new Map<string, { seq: bigint; sentAtMs: number }[]>();
  let ref = 0;
  try {
    for (let round = 0; round < perConversation; round++) {
      const waits: Promise<unknown>[] = [];
      for (const c of s.conversations) {
        const client = senders.get(c.sender.userId)!;
        const r = ++ref;
        client.send({ ref: r, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: c.id, body: `r${round} ${c.id}` } } });
        waits.push(
          client.waitFor(`ack ${r}`, (f) => f.ref === r && (f.kind.case === "ack" || f.kind.case === "error")).then((f) => {
            if (f.kind.case !== "ack") assert.fail(`send refused: ${f.kind.case === "error" ? f.kind.value.message : f.kind.case}`);
            const list = acks.get(c.id) ?? [];
            list.push({ seq: f.kind.value.seq, sentAtMs: timestampMs(f.kind.value.sentAt!) });
            acks.set(c.id, list);
          }),
        );
      }
      await Promise.all(waits);
    }
  } finally {
    await Promise.all([...senders.values()].map((c) => c.close()));
  }
  return acks;
}

/** Checks a resumed stream: each missed message once, ascending per conversation, conversations in blocks by last activity. */
function checkResumed(frames: readonly ServerFrame[], acks: Map<string, { seq: bigint; sentAtMs: number }[]>, total: number) {
  const doneAt = frames.findIndex((f) => f.kind.case === "resumeDone");
  assert.ok(doneAt > 0);
  const done = frames[doneAt]!;
  assert.ok(done.kind.case === "resumeDone");
  assert.deepEqual(
    { complete: done.kind.value.complete, messages: done.kind.value.messages, conversations: done.kind.value.conversations },
    { complete: true, messages: total, conversations: acks.size },
  );
  const resumed = frames.slice(0, doneAt).flatMap((f) => (f.kind.case === "message" ? [f.kind.value] : []));
  assert.equal(resumed.length, total, "every missed message, nothing else");
  const keys = new Set(resumed.map((m) => `${m.conversationId}/${m.seq}`));
  assert.equal(keys.size, total, "each once");
  for (const [id, list] of acks) for (const a of list) assert.ok(keys.has(`${id}/${a.seq}`), `missing ${id}/${a.seq}`);
  // Blocks: a conversation's messages are contiguous and ascending.
  const blocks: string[] = [];
  let last = -1n;
  for (const m of resumed) {
    if (blocks.at(-1) !== m.conversationId) {
      assert.ok(!blocks.includes(m.conversationId), `conversation ${m.conversationId} comes in one block`);
      blocks.push(m.conversationId);
      last = -1n;
    }
    assert.ok(m.seq > last, "ascending within a conversation");
    last = m.seq;
  }
  const expected = [...acks]
    .map(([id, list]) => ({ id, at: Math.max(...list.map((a) => a.sentAtMs)) }))
    .sort((a, b) => b.at - a.at || (a.id < b.id ? -1 : 1))
    .map((x) => x.id);
  assert.deepEqual(blocks, expected, "most recently active conversation first");
}

if (backends) {
  describe("resume on the cluster (real backends, 2 gateways)", () => {
    let cluster: Cluster;
    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: { ...CHEAP_PASSWORD_HASHING },
      });
    });
    after(async () => {
      await cluster?.stop();
    });

    it("a device offline during 500 messages in 20 conversations resumes on the other gateway: each once, in order, then live", async () => {
      const gateways = cluster.discovery.list("gateway");
      assert.equal(gateways.length, 2);
      const [first, second] = gateways.map((g) => g.publicUrl!);
      const s = await scenario(first!, 10, 10);
      assert.equal(s.conversations.length, 20);

      // Online on the first gateway, up to date; then offline.
      const before = await FrameClient.connect(wsUrl(first!), s.me.token);
      const firstGateway = before.frames[0]!.kind.case === "hello" ? before.frames[0]!.kind.value.gatewayId : "";
      const held = await cursors(first!, s.me, s.conversations.map((c) => c.id));
      await before.close();

      const acks = await sendRounds([first!, second!], s, 25);
      assert.equal([...acks.values()].reduce((n, l) => n + l.length, 0), 500);

      // Back, on the other gateway.
      const device = await FrameClient.connect(wsUrl(second!), s.me.token);
      try {
        const hello = device.frames[0]!;
        assert.ok(hello.kind.case === "hello" && hello.kind.value.gatewayId !== firstGateway, "a different gateway");
        device.send({ ref: 77, kind: { case: "resume", value: { cursors: held } } });
        const done = await device.waitFor("resume_done", (f) => f.kind.case === "resumeDone", 30_000);
        assert.equal(done.ref, 77);
        checkResumed(device.frames.slice(1), acks, 500);

        // Live messages after the resume: a direct one and a group one.
        const live = await sendRounds([first!], { me: s.me, conversations: [s.conversations[0]!, s.conversations[19]!] }, 1);
        for (const [id, [a]] of live) {
          await device.waitFor(`live ${id}/${a!.seq}`, (f) => f.kind.case === "message" && f.kind.value.conversationId === id && f.kind.value.seq === a!.seq);
        }
        const doneAt = device.frames.indexOf(done);
        const after = device.frames.slice(doneAt + 1).filter((f) => f.kind.case === "message");
        assert.equal(after.length, 2, "the live messages once, nothing repeated");
        assert.deepEqual(device.frames.filter((f) => f.kind.case === "error"), []);
      } finally {
        await device.close();
      }
    });

    it("after the device's gateway died (kill -9) it resumes on the surviving one: each missed message once", async () => {
      const dying = cluster.discovery.list("gateway").find((g) => g.id === "gateway-1")!;
      const surviving = cluster.discovery.list("gateway").find((g) => g.id !== "gateway-1")!;
      const s = await scenario(surviving.publicUrl!, 2, 2);
      const device = await FrameClient.connect(wsUrl(dying.publicUrl!), s.me.token);
      const held = await cursors(surviving.publicUrl!, s.me, s.conversations.map((c) => c.id));
      await cluster.processes.find((p) => p.name === "gateway-1")!.kill();
      await device.signal.until("the dead gateway's socket closes", () => device.closeCode !== undefined, 10_000);
      const acks = await sendRounds([surviving.publicUrl!], s, 5);
      const again = await FrameClient.connect(wsUrl(surviving.publicUrl!), s.me.token);
      try {
        again.send({ ref: 9, kind: { case: "resume", value: { cursors: held } } });
        await again.waitFor("resume_done", (f) => f.kind.case === "resumeDone", 30_000);
        checkResumed(again.frames.slice(1), acks, 20);
      } finally {
        await again.close();
      }
    });
  });
}

describe("resume on the one-process platform", () => {
  let platform: RunningPlatform;
  const dir = tempDir("parley-resume-");
  before(async () => {
    platform = await startPlatformProcess(dir.path, { ...CHEAP_PASSWORD_HASHING });
  });
  after(async () => {
    await platform?.stop();
    dir.remove();
  });

  it("a device offline during 60 messages in 4 conversations resumes: each once, in order", async () => {
    const s = await scenario(platform.publicUrl, 2, 2);
    const held = await cursors(platform.publicUrl, s.me, s.conversations.map((c) => c.id));
    const acks = await sendRounds([platform.publicUrl], s, 15);
    const device = await FrameClient.connect(platform.wsUrl, s.me.token);
    try {
      device.send({ ref: 1, kind: { case: "resume", value: { cursors: held } } });
      await device.waitFor("resume_done", (f) => f.kind.case === "resumeDone", 30_000);
      checkResumed(device.frames.slice(1), acks, 60);
    } finally {
      await device.close();
    }
  });
});
