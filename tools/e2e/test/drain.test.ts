/**
 * Graceful drain end to end on the cluster (real backends, 2 gateways): 200 clients on
 * gateway A, 60 of them sending without pause (one send in flight in 50 direct
 * conversations, four in 10 groups); gateway A's process gets SIGTERM. Every client is closed
 * with 4012 (DRAINING), over the drain period; it asks AssignGateway through a gateway
 * that is ready (as a load balancer would), lands on gateway B, resumes from its cursors
 * and goes on (a send that was not acked is sent again with the same client_msg_id).
 * Then: every acked message is in history exactly once and reached every recipient
 * (live or through resume), and gateway A's process exited with code 0 in time.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ErrorCode, type ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startCluster, type Cluster, type ClusterProcess } from "../../cluster/cluster.js";
import { api, FrameClient, Signal } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, mapLimit, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();

const CLIENTS = 200;
const DIRECT_PAIRS = CLIENTS / 2;
/** Pairs whose first user sends without pause (the others only receive). */
const DIRECT_SENDERS = 50;
const GROUP_SIZE = 20;
/** Sends a group's sender keeps in flight (direct senders keep one). */
const GROUP_WINDOW = 4;
/** The gateways' drain period (PARLEY_GATEWAY_DRAIN_MS) in this test. */
const DRAIN_MS = 3000;
/** Gateway A must have exited this long after SIGTERM (the drain's own deadline is DRAIN_MS + 10 s). */
const EXIT_DEADLINE_MS = DRAIN_MS + 15_000;
const DRAINING = 4012;

interface Conversation {
  id: string;
  members: Account[];
  /** Who sends into it (undefined: nobody). */
  sender: Account | undefined;
}

interface Acked {
  conversationId: string;
  clientMsgId: string;
  seq: bigint;
}

/** What the whole test observed (for the assertions and the failure messages). */
class Observed {
  /** Acks, connections and closes. */
  readonly signal = new Signal();
  /** Message frames reaching any device (watched only at the end, when few still come). */
  readonly messages = new Signal();
  readonly acks: Acked[] = [];
  readonly ackCount = new Map<string, number>();
  /** Sends refused with UNAVAILABLE because their connection was closing (sent again after reconnecting): race-dependent, reported. */
  refused = 0;
  /**
   * Sends whose connection closed before their answer (sent again after reconnecting): a
   * sender's next send, written as the ack before the close arrived, crosses the close.
   */
  unanswered = 0;
  /** Acks with duplicate=true (a resend of a message that had been stored). */
  duplicates = 0;
  /** AssignGateway answers that named the draining gateway. */
  assignedDraining = 0;
  /** /readyz of the draining gateway answered 503 (seen by a client looking for a gateway). */
  sawDrainingReadyz = false;
  readonly problems: string[] = [];

  problem(p: string): void {
    this.problems.push(p);
    this.signal.changed();
  }
}

/**
 * One device: a FrameClient at a time; when it is closed it finds a ready gateway, asks
 * AssignGateway, connects there and resumes from the highest seq it holds without a gap.
 */
class Device {
  readonly connections: FrameClient[] = [];
  readonly closes: { code: number; reason: string; atMs: number }[] = [];
  /** The current connection, once it is open and its resume is done. */
  private ready: Promise<FrameClient>;
  private ref = 0;
  stopped = false;

  constructor(
    readonly account: Account,
    readonly conversations: readonly string[],
    private readonly gatewayUrls: () => string[],
    private readonly drainingUrl: string,
    private readonly obs: Observed,
    firstWsUrl: string,
  ) {
    this.ready = this.open(firstWsUrl);
  }

  nextRef(): number {
    return ++this.ref;
  }

  current(): Promise<FrameClient> {
    return this.ready;
  }

  get gatewayId(): string {
    const hello = this.connections.at(-1)?.frames[0];
    return hello?.kind.case === "hello" ? hello.kind.value.gatewayId : "";
  }

  /** Every message frame this device got, on any connection. */
  messages(): { conversationId: string; seq: bigint }[] {
    return this.connections.flatMap((c) => c.frames.flatMap((f) => (f.kind.case === "message" ? [f.kind.value] : [])));
  }

  /** Per conversation: the highest seq held without a gap. */
  cursors(): { conversationId: string; seq: bigint }[] {
    const held = new Map<string, Set<bigint>>(this.conversations.map((id) => [id, new Set()]));
    for (const m of this.messages()) held.get(m.conversationId)?.add(m.seq);
    return [...held].map(([conversationId, seqs]) => {
      let seq = 0n;
      while (seqs.has(seq + 1n)) seq++;
      return { conversationId, seq };
    });
  }

  private async open(wsUrl: string): Promise<FrameClient> {
    const c = await FrameClient.connect(wsUrl, this.account.token);
    this.connections.push(c);
    c.ws.on("message", () => this.obs.messages.changed());
    c.ws.once("close", (code: number, reason: Buffer) => {
      this.closes.push({ code, reason: reason.toString(), atMs: performance.now() });
      if (this.stopped) return;
      this.ready = this.reconnect();
      this.ready.catch((err: unknown) => this.obs.problem(`${this.account.username}: reconnect failed: ${String(err)}`));
      this.obs.signal.changed();
    });
    const ref = this.nextRef();
    c.send({ ref, kind: { case: "resume", value: { cursors: this.cursors() } } });
    const done = await c.signal.until(
      "resume_done",
      () => c.frames.find((f) => f.ref === ref && (f.kind.case === "resumeDone" || f.kind.case === "error")) ?? (c.closeCode !== undefined ? "closed" : undefined),
      60_000,
    );
    // Closed while resuming: the close handler is already reconnecting (and resumes again there).
    if (done !== "closed" && (done.kind.case !== "resumeDone" || !done.kind.value.complete)) {
      this.obs.problem(`${this.account.username}: resume failed: ${JSON.stringify(done.kind)}`);
    }
    this.obs.signal.changed();
    return c;
  }

  /** What a client does on 4012: a ready gateway's AssignGateway, then connect there and resume. */
  private async reconnect(): Promise<FrameClient> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const entry = await this.readyGateway();
      const assigned = await api(entry, this.account.token).auth.assignGateway({});
      if (assigned.publicUrl === this.drainingUrl) {
        this.obs.assignedDraining++;
        continue;
      }
      return await this.open(assigned.wsUrl);
    }
    throw new Error("AssignGateway kept naming the draining gateway");
  }

  /** The first gateway whose /readyz answers 200 (a load balancer's view). */
  private async readyGateway(): Promise<string> {
    for (const url of this.gatewayUrls()) {
      try {
        const res = await fetch(`${url}/readyz`);
        await res.arrayBuffer();
        if (res.status === 200) return url;
        if (url === this.drainingUrl && res.status === 503) this.obs.sawDrainingReadyz = true;
      } catch {
        // not listening any more
      }
    }
    throw new Error("no gateway is ready");
  }

  async close(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.connections.map((c) => c.close()));
  }
}

/**
 * Sends into `conversationId` without pause, one send in flight, until `stop()` (run it
 * several times at once for a window of sends in flight). A send
 * whose connection closes first, or that is refused as UNAVAILABLE (the connection is
 * being closed), is sent again, same client_msg_id, on the next connection.
 */
async function sendLoop(d: Device, conversationId: string, obs: Observed, stop: () => boolean): Promise<void> {
  let n = 0;
  while (!stop()) {
    const clientMsgId = randomUUID();
    const body = `${d.account.username} ${n++}`;
    for (;;) {
      const c = await d.current();
      const ref = d.nextRef();
      c.send({ ref, kind: { case: "send", value: { clientMsgId, conversationId, body } } });
      const answer = await c.signal.until(
        `${d.account.username}: answer to ${ref}`,
        (): ServerFrame | "closed" | undefined =>
          c.frames.find((f) => f.ref === ref && (f.kind.case === "ack" || f.kind.case === "error")) ?? (c.closeCode !== undefined ? "closed" : undefined),
        60_000,
      );
      if (answer === "closed") {
        obs.unanswered++;
        continue;
      }
      if (answer.kind.case === "ack") {
        obs.acks.push({ conversationId, clientMsgId, seq: answer.kind.value.seq });
        obs.ackCount.set(conversationId, (obs.ackCount.get(conversationId) ?? 0) + 1);
        if (answer.kind.value.duplicate) obs.duplicates++;
        obs.signal.changed();
        break;
      }
      if (answer.kind.case === "error" && answer.kind.value.code === ErrorCode.UNAVAILABLE && answer.kind.value.clientMsgId === clientMsgId) {
        obs.refused++;
        await c.waitForClose(30_000);
        continue;
      }
      obs.problem(`${d.account.username}: send refused: ${JSON.stringify(answer.kind)}`);
      return;
    }
  }
}

/** Every message of a conversation, from its history (pages of 200, newest first). */
async function history(publicUrl: string, token: string, conversationId: string) {
  const chat = api(publicUrl, token).chat;
  const all: { seq: bigint; clientMsgId: string }[] = [];
  let before = 0n;
  for (;;) {
    const { messages } = await chat.getHistory({ conversationId, beforeSeq: before, limit: 200 });
    all.push(...messages.map((m) => ({ seq: m.seq, clientMsgId: m.clientMsgId })));
    if (messages.length < 200) return all;
    before = messages.at(-1)!.seq;
  }
}

if (backends) {
  describe("gateway drain on the cluster (real backends, 2 gateways)", { timeout: 600_000 }, () => {
    let cluster: Cluster;
    before(async () => {
      cluster = await startCluster({
        backends,
        extraEnv: { ...CHEAP_PASSWORD_HASHING, PARLEY_GATEWAY_DRAIN_MS: String(DRAIN_MS) },
      });
    });
    after(async () => {
      await cluster?.stop();
    });

    it(`SIGTERM to a gateway with ${CLIENTS} clients: all get 4012, move to the other gateway, resume, and nothing acked is lost`, async () => {
      const gateways = cluster.discovery.list("gateway");
      assert.equal(gateways.length, 2);
      const a = gateways.find((g) => g.id === "gateway-1")!;
      const b = gateways.find((g) => g.id === "gateway-2")!;
      const aUrl = a.publicUrl!;
      const bUrl = b.publicUrl!;
      const aProcess: ClusterProcess = cluster.processes.find((p) => p.name === "gateway-1")!;

      // Accounts and conversations, made through gateway B.
      const users = await signUpMany(bUrl, CLIENTS, "drain");
      const conversations: Conversation[] = [];
      await mapLimit(Array.from({ length: DIRECT_PAIRS }, (_, i) => i), 16, async (i) => {
        const [x, y] = [users[2 * i]!, users[2 * i + 1]!];
        const { conversation } = await api(bUrl, x.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: y.userId } });
        conversations.push({ id: conversation!.conversationId, members: [x, y], sender: i < DIRECT_SENDERS ? x : undefined });
      });
      await mapLimit(Array.from({ length: CLIENTS / GROUP_SIZE }, (_, g) => g), 4, async (g) => {
        const members = users.slice(g * GROUP_SIZE, (g + 1) * GROUP_SIZE);
        const id = await createGroup(bUrl, members[0]!, members, `drain group ${g}`);
        // The second member sends: a user who only receives in their direct pair.
        conversations.push({ id, members, sender: members[1]! });
      });
      const byUser = new Map<string, string[]>();
      for (const c of conversations) for (const m of c.members) byUser.set(m.userId, [...(byUser.get(m.userId) ?? []), c.id]);

      // Every device on gateway A, up to date.
      const obs = new Observed();
      const urls = () => [aUrl, bUrl];
      const devices = new Map<string, Device>();
      await mapLimit(users, 16, async (u) => {
        const d = new Device(u, byUser.get(u.userId)!, urls, aUrl, obs, `${aUrl.replace(/^http/, "ws")}/ws`);
        devices.set(u.userId, d);
        await d.current();
      });
      try {
        assert.ok([...devices.values()].every((d) => d.gatewayId === "gateway-1"), "all on gateway A");

        // Senders running; warmed up once each has two acks.
        let stopping = false;
        const senders = conversations.filter((c) => c.sender);
        const loops = senders.flatMap((c) =>
          Array.from({ length: c.members.length > 2 ? GROUP_WINDOW : 1 }, () => sendLoop(devices.get(c.sender!.userId)!, c.id, obs, () => stopping)),
        );
        const acksOf = (conversationId: string) => obs.ackCount.get(conversationId) ?? 0;
        await obs.signal.until("every sender acked twice", () => obs.problems.length > 0 || senders.every((c) => acksOf(c.id) >= 2), 60_000);
        assert.deepEqual(obs.problems, []);
        const acksBefore = new Map(senders.map((c) => [c.id, acksOf(c.id)]));

        // SIGTERM to gateway A.
        const termAt = performance.now();
        aProcess.child.kill("SIGTERM");
        const exited = aProcess.exited.then((code) => ({ code, afterMs: performance.now() - termAt }));

        // Every device moves to B and resumes; every sender is acked twice more there.
        await obs.signal.until(
          "every device on gateway B, every sender acked twice more",
          () =>
            obs.problems.length > 0 ||
            ([...devices.values()].every((d) => d.closes.length === 1 && d.connections.length === 2 && d.gatewayId === "gateway-2") &&
              senders.every((c) => acksOf(c.id) >= acksBefore.get(c.id)! + 2)),
          120_000,
        );
        assert.deepEqual(obs.problems, []);
        stopping = true;
        await Promise.all(loops);
        assert.deepEqual(obs.problems, []);

        const { code, afterMs } = await Promise.race([
          exited,
          new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`gateway A still running ${EXIT_DEADLINE_MS} ms after SIGTERM`)), EXIT_DEADLINE_MS)),
        ]);
        assert.equal(code, 0, `gateway A exited with ${code}\n${aProcess.lines.slice(-20).join("\n")}`);
        assert.ok(afterMs < EXIT_DEADLINE_MS, `gateway A exited ${Math.round(afterMs)} ms after SIGTERM`);

        // The close: 4012 for everyone, spread over the drain period, and a ready gateway's AssignGateway never named A.
        const closes = [...devices.values()].map((d) => d.closes[0]!);
        assert.deepEqual(new Set(closes.map((c) => c.code)), new Set([DRAINING]));
        assert.ok(closes.every((c) => /reconnect/.test(c.reason)), "the close reason says what to do");
        const times = closes.map((c) => c.atMs - termAt).sort((x, y) => x - y);
        const spread = times.at(-1)! - times[0]!;
        assert.ok(spread >= DRAIN_MS / 2, `closes spread over ${Math.round(spread)} ms (drain period ${DRAIN_MS} ms)`);
        assert.ok(times.at(-1)! < DRAIN_MS + 5000, `the last close came ${Math.round(times.at(-1)!)} ms after SIGTERM`);
        assert.equal(obs.assignedDraining, 0, "AssignGateway never sent a client back to the draining gateway");
        assert.ok(obs.sawDrainingReadyz, "the draining gateway's /readyz answered 503");

        // Nothing lost: each acked message once in history with its seq ...
        const owner = (c: Conversation) => c.members[0]!;
        await mapLimit(senders, 8, async (c) => {
          const h = await history(bUrl, owner(c).token, c.id);
          const seqs = h.map((m) => m.seq);
          assert.equal(new Set(seqs).size, seqs.length, `${c.id}: each seq once`);
          const byClientId = new Map<string, bigint[]>();
          for (const m of h) if (m.clientMsgId) byClientId.set(m.clientMsgId, [...(byClientId.get(m.clientMsgId) ?? []), m.seq]);
          for (const ack of obs.acks.filter((x) => x.conversationId === c.id)) {
            assert.deepEqual(byClientId.get(ack.clientMsgId), [ack.seq], `${c.id}: ${ack.clientMsgId} once, at its acked seq`);
          }
        });
        // ... and at every recipient, live or through resume.
        const missing = () => {
          const out: string[] = [];
          for (const c of senders) {
            const want = obs.acks.filter((x) => x.conversationId === c.id).map((x) => x.seq);
            for (const m of c.members) {
              if (m.userId === c.sender!.userId) continue;
              const got = new Set(devices.get(m.userId)!.messages().filter((x) => x.conversationId === c.id).map((x) => x.seq));
              for (const s of want) if (!got.has(s)) out.push(`${m.username} lacks ${c.id}/${s}`);
            }
          }
          return out;
        };
        await obs.messages.until("every recipient has every acked message", () => missing().length === 0, 30_000).catch((err: Error) => {
          const m = missing();
          assert.fail(`${err.message}: ${m.length} missing, e.g. ${m.slice(0, 5).join("; ")}`);
        });
        console.log(
          JSON.stringify({
            acked: obs.acks.length,
            refusedWhileClosing: obs.refused,
            unansweredAtClose: obs.unanswered,
            duplicateAcks: obs.duplicates,
            closeSpreadMs: Math.round(spread),
            exitAfterMs: Math.round(afterMs),
          }),
        );
      } finally {
        await Promise.all([...devices.values()].map((d) => d.close()));
      }
    });
  });
}
