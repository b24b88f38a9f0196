/**
 * Benchmark: time for one device to catch up on 10,000 missed messages spread over 20
 * conversations (10 direct, 10 groups) on the cluster (real backends, 2 gateways), with
 * the Resume frame, against a baseline in the same run: the same messages read the way a
 * client without Resume would, ListConversations then ChatService.GetHistory pages of 200
 * (newest first, back to its cursor), `--concurrency` conversations at a time.
 *
 *   node --import tsx tools/bench/resume.ts [--messages 10000] [--conversations 20] [--runs 3] [--concurrency 4]
 *
 * PARLEY_RESUME_* variables in the environment are passed to the gateways.
 * Prints one JSON line: median times of each, messages/s, and baseline/resume.
 */
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { realBackend } from "../../lib/testing/backends.js";
import { ensureInfra, startCluster, type Backends } from "../cluster/cluster.js";
import { api, FrameClient } from "../e2e/harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../e2e/population.js";
import { percentile } from "./cpu.js";

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "10000" },
    conversations: { type: "string", default: "20" },
    runs: { type: "string", default: "3" },
    concurrency: { type: "string", default: "4" },
  },
});
const MESSAGES = Number(values.messages);
const CONVERSATIONS = Number(values.conversations);
const RUNS = Number(values.runs);
const CONCURRENCY = Number(values.concurrency);
const PER_CONVERSATION = Math.ceil(MESSAGES / CONVERSATIONS);
/** Sends in flight per sender connection (below the gateway's 256). */
const WINDOW = 100;

const wsUrl = (publicUrl: string) => `${publicUrl.replace(/^http/, "ws")}/ws`;

function backends(): Backends {
  const [postgresUrl, redisUrl, etcdUrl, cassandra] = [realBackend("postgres"), realBackend("redis"), realBackend("etcd"), realBackend("cassandra")];
  if (postgresUrl && redisUrl && etcdUrl && cassandra) return { postgresUrl, redisUrl, etcdUrl, cassandra };
  return ensureInfra();
}

const cluster = await startCluster({
  backends: backends(),
  logLevel: "warn",
  extraEnv: {
    ...CHEAP_PASSWORD_HASHING,
    // The senders fill the conversations as fast as the platform takes it.
    PARLEY_FRAMES_PER_SECOND: "1000000",
    PARLEY_FRAME_BURST: "1000000",
    // Resume settings of the gateways can be tried from the environment (PARLEY_RESUME_PAGE_SIZE, ...).
    ...Object.fromEntries(Object.entries(process.env).filter(([k, v]) => k.startsWith("PARLEY_RESUME_") && v !== undefined)),
  },
});

try {
  const [first, second] = cluster.discovery.list("gateway").map((g) => g.publicUrl!);
  const directs = Math.ceil(CONVERSATIONS / 2);
  const groups = CONVERSATIONS - directs;
  const [me, ...peers] = await signUpMany(first!, 1 + Math.max(directs, groups), "bench-resume");
  const conversations: { id: string; sender: Account }[] = [];
  await mapLimit(peers.slice(0, directs), 8, async (p) => {
    const { conversation } = await api(first!, p.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: me!.userId } });
    conversations.push({ id: conversation!.conversationId, sender: p });
  });
  await mapLimit(peers.slice(0, groups), 8, async (p, i) => {
    conversations.push({ id: await createGroup(first!, p, [me!, peers[(i + 1) % peers.length]!], `bench ${i}`), sender: p });
  });

  // The device is up to date here: its cursors.
  const chat = api(second!, me!.token).chat;
  const cursors = await Promise.all(
    conversations.map(async (c) => ({ conversationId: c.id, seq: (await chat.getHistory({ conversationId: c.id, limit: 1 })).messages[0]?.seq ?? 0n })),
  );

  // The missed messages: every sender fills its conversations, WINDOW sends in flight.
  const fillStart = performance.now();
  const bySender = new Map<string, { sender: Account; ids: string[] }>();
  for (const c of conversations) {
    const e = bySender.get(c.sender.userId) ?? { sender: c.sender, ids: [] };
    e.ids.push(c.id);
    bySender.set(c.sender.userId, e);
  }
  let sent = 0;
  await Promise.all(
    [...bySender.values()].map(async ({ sender, ids }, i) => {
      const client = await FrameClient.connect(wsUrl(i % 2 ? second! : first!), sender.token);
      const queue = ids.flatMap((id) => Array.from({ length: PER_CONVERSATION }, () => id));
      let ref = 0;
      let acked = 0;
      try {
        while (acked < queue.length) {
          const upTo = Math.min(queue.length, acked + WINDOW);
          for (; ref < upTo; ref++) {
            client.send({ ref: ref + 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: queue[ref]!, body: `bench message ${ref}` } } });
          }
          const last = ref;
          await client.waitFor(`ack ${last}`, (f) => f.ref === last && f.kind.case === "ack", 60_000);
          acked = last;
        }
        const errors = client.frames.filter((f) => f.kind.case === "error");
        if (errors.length > 0) throw new Error(`sends refused: ${errors.length}`);
        sent += queue.length;
      } finally {
        await client.close();
      }
    }),
  );
  const fillSeconds = (performance.now() - fillStart) / 1000;

  async function resumeOnce(): Promise<number> {
    const device = await FrameClient.connect(wsUrl(second!), me!.token);
    try {
      const t0 = performance.now();
      device.send({ ref: 1, kind: { case: "resume", value: { cursors } } });
      const done = await device.waitFor("resume_done", (f) => f.kind.case === "resumeDone", 120_000);
      const ms = performance.now() - t0;
      if (done.kind.case !== "resumeDone" || !done.kind.value.complete || done.kind.value.messages !== sent) {
        throw new Error(`resume incomplete: ${JSON.stringify({ ...done.kind.value })}`);
      }
      const got = device.frames.filter((f) => f.kind.case === "message").length;
      if (got !== sent) throw new Error(`resume sent ${got} messages, not ${sent}`);
      return ms;
    } finally {
      await device.close();
    }
  }

  async function historyOnce(): Promise<number> {
    const t0 = performance.now();
    const client = api(second!, me!.token).chat;
    const { conversations: list } = await client.listConversations({ limit: 200 });
    const cursorOf = new Map(cursors.map((c) => [c.conversationId, c.seq]));
    let got = 0;
    await mapLimit(list, CONCURRENCY, async (c) => {
      const cursor = cursorOf.get(c.conversationId) ?? 0n;
      for (let before = 0n; ; ) {
        const page = await client.getHistory({ conversationId: c.conversationId, beforeSeq: before, limit: 200 });
        const fresh = page.messages.filter((m) => m.seq > cursor);
        got += fresh.length;
        if (fresh.length < page.messages.length || page.nextBeforeSeq === 0n) break;
        before = page.nextBeforeSeq;
      }
    });
    const ms = performance.now() - t0;
    if (got !== sent) throw new Error(`history read ${got} messages, not ${sent}`);
    return ms;
  }

  const resumeMs: number[] = [];
  const historyMs: number[] = [];
  await resumeOnce(); // warm-up (connections, prepared statements, JIT)
  await historyOnce();
  for (let r = 0; r < RUNS; r++) {
    resumeMs.push(await resumeOnce());
    historyMs.push(await historyOnce());
  }
  const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);
  const resume = median(resumeMs);
  const history = median(historyMs);
  console.log(
    JSON.stringify({
      bench: "resume",
      messages: sent,
      conversations: conversations.length,
      runs: RUNS,
      fillSeconds: +fillSeconds.toFixed(2),
      resumeMs: +resume.toFixed(1),
      resumeMsgsPerSecond: Math.round(sent / (resume / 1000)),
      historyMs: +history.toFixed(1),
      historyMsgsPerSecond: Math.round(sent / (history / 1000)),
      historyConcurrency: CONCURRENCY,
      historyOverResume: +(history / resume).toFixed(2),
      resumeRunsMs: resumeMs.map((x) => +x.toFixed(1)),
      historyRunsMs: historyMs.map((x) => +x.toFixed(1)),
    }),
  );
} finally {
  await cluster.stop();
}
