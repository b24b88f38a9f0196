import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { directConversationId, isUuid, randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import type { Sql } from "../../../lib/sql.js";
import { openPostgresInNewSchema } from "../../../lib/sql-pg.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import { realBackend } from "../../../lib/testing/backends.js";
import { until } from "../../../lib/testing/wait.js";
import { fullJitterBackoff, nextAttemptDelay } from "../src/backoff.js";
import { DEFAULT_WEBPUSH_ALLOWED_HOSTS } from "../src/config.js";
import type { ConversationKind, Platform, StoredBatch } from "../src/model.js";
import { PushPipeline, type PipelineOptions } from "../src/pipeline.js";
import { WebhookSender } from "../src/providers/webhook.js";
import type { PushSender } from "../src/providers/push-sender.js";
import { SqlPushStore } from "../src/push-store-sql.js";
import { renderPush, type RenderInput } from "../src/render.js";
import { FakeClock, FakeDirectory, FakeGroups, scriptedSenders, type ScriptedSender } from "./fakes.js";
import { FakeWebhookReceiver } from "./providers/webhook-fake.js";

const T0 = 1_700_000_000_000;
const DELAY = 2000;
const LEASE = 30_000;
const logger = createLogger("notify-test", "silent");

const OPTIONS: PipelineOptions = {
  delayMs: DELAY,
  maxAttempts: 4,
  retryBaseMs: 1000,
  retryMaxMs: 60_000,
  leaseMs: LEASE,
  pollMs: 1000,
  webPushAllowedHosts: [...DEFAULT_WEBPUSH_ALLOWED_HOSTS],
};

describe("backoff", () => {
  it("waits a uniformly random time below min(max, base · 2^(attempt−1)) (full jitter)", () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      const cap = Math.min(60_000, 1000 * 2 ** (attempt - 1));
      assert.equal(fullJitterBackoff(1000, 60_000, attempt, () => 0), 0);
      const top = fullJitterBackoff(1000, 60_000, attempt, () => 0.999_999);
      assert.ok(top < cap && top >= cap * 0.99, `attempt ${attempt}: ${top} vs cap ${cap}`);
      for (let i = 0; i < 200; i++) {
        const d = fullJitterBackoff(1000, 60_000, attempt, Math.random);
        assert.ok(Number.isInteger(d) && d >= 0 && d < cap, `attempt ${attempt}: ${d} outside [0, ${cap})`);
      }
    }
    assert.equal(fullJitterBackoff(1000, 60_000, 5000, () => 0.5), 30_000, "no overflow for large attempts");
  });

  it("never retries before the provider's Retry-After", () => {
    assert.equal(nextAttemptDelay({ baseMs: 1000, maxMs: 60_000, attempt: 1, retryAfterMs: 10_000 }, () => 0.5), 10_000);
    assert.equal(nextAttemptDelay({ baseMs: 1000, maxMs: 60_000, attempt: 6, retryAfterMs: 10 }, () => 0.5), 16_000);
    assert.equal(nextAttemptDelay({ baseMs: 1000, maxMs: 60_000, attempt: 1, retryAfterMs: undefined }, () => 0.5), 500);
  });
});

describe("renderPush (privacy)", () => {
  const base: RenderInput = {
    privacy: "full",
    kind: "direct",
    conversationName: "",
    senderName: "Ann",
    preview: "see you at 8",
    count: 1,
    conversationId: randomUuid(),
    seq: 42,
    messageId: randomUuid(),
    pushId: randomUuid(),
  };
  const data = {
    conversation_id: base.conversationId,
    seq: "42",
    message_id: base.messageId,
    count: "1",
    push_id: base.pushId,
  };

  it("full: the sender (and group) and the newest text, '+N more' for a burst", () => {
    const p = renderPush(base);
    assert.deepEqual(p, { title: "Ann", body: "see you at 8", collapseKey: base.conversationId, pushId: base.pushId, data, ttlSeconds: 86_400 });
    const g = renderPush({ ...base, kind: "group", conversationName: "Team", count: 3 });
    assert.equal(g.title, "Team · Ann");
    assert.equal(g.body, "see you at 8 (+2 more)");
    assert.equal(g.data.count, "3");
    assert.equal(renderPush({ ...base, preview: "" }).body, "New message");
    assert.equal(renderPush({ ...base, preview: "", count: 2 }).body, "2 new messages");
  });

  it("full without a known sender name: the group's name, else the app's", () => {
    assert.equal(renderPush({ ...base, senderName: undefined }).title, "Parley");
    assert.equal(renderPush({ ...base, kind: "group", conversationName: "Team", senderName: undefined }).title, "Team");
    assert.equal(renderPush({ ...base, kind: "group", conversationName: "" }).title, "Ann");
  });

  it("sender-only: names, a count, no text", () => {
    const one = renderPush({ ...base, privacy: "sender-only" });
    assert.deepEqual([one.title, one.body], ["Ann", "New message"]);
    const many = renderPush({ ...base, privacy: "sender-only", kind: "group", conversationName: "Team", count: 5 });
    assert.deepEqual([many.title, many.body], ["Team · Ann", "5 new messages"]);
  });

  it("none: no names, no text, anywhere", () => {
    const p = renderPush({ ...base, privacy: "none", kind: "group", conversationName: "Team", count: 2 });
    assert.deepEqual([p.title, p.body], ["Parley", "2 new messages"]);
    const text = JSON.stringify(p);
    for (const secret of ["Ann", "Team", "see you"]) assert.ok(!text.includes(secret), `"${secret}" leaked into ${text}`);
  });
});

/** The pipeline suite, over one store (one database per backend, shared by its tests). */
function describePipeline(backend: string, openSql: () => Promise<Sql>) {
  describe(`PushPipeline on ${backend}`, () => {
    let sql: Sql;
    let store: SqlPushStore;
    const opened: PushPipeline[] = [];
    before(async () => {
      sql = await openSql();
      store = await SqlPushStore.open(sql);
    });
    after(async () => {
      await store.close();
      await sql.close();
    });
    afterEach(async () => {
      // Pipelines that "crashed" (hung rounds) are just dropped; the others close.
      await Promise.all(opened.splice(0).map((p) => (hung.has(p) ? undefined : p.close())));
      // Each test starts with no pending jobs or pushes (devices belong to random users).
      await sql.exec("DELETE FROM push_jobs; DELETE FROM push_tasks");
    });
    const hung = new Set<PushPipeline>();

    interface World {
      clock: FakeClock;
      groups: FakeGroups;
      directory: FakeDirectory;
      senders: Record<Platform, ScriptedSender>;
      make(o?: { senders?: Partial<Record<Platform, PushSender>>; directory?: FakeDirectory; opts?: Partial<PipelineOptions>; random?: () => number }): PushPipeline;
    }

    function world(random: () => number = () => 0.5): World {
      const clock = new FakeClock(T0);
      const groups = new FakeGroups();
      const directory = new FakeDirectory();
      const senders = scriptedSenders();
      return {
        clock,
        groups,
        directory,
        senders,
        make(o = {}) {
          const p = new PushPipeline(
            {
              store,
              candidates: groups,
              users: o.directory ?? directory,
              senders: { ...senders, ...o.senders },
              logger,
              clock: clock.now,
              random: o.random ?? random,
            },
            { ...OPTIONS, ...o.opts },
          );
          opened.push(p);
          return p;
        },
      };
    }

    let tokens = 0;
    async function device(userId: string, platform: Platform = "fcm", token = `${platform}-token-${++tokens}-${randomUuid()}`) {
      const r = await store.registerDevice(
        { userId, platform, appId: "com.example.chat", tokenKey: token, p256dh: "", auth: "", label: "" },
        { deviceId: randomUuid(), maxPerUser: 20, nowMs: T0 },
      );
      assert.ok("device" in r, "registered");
      return r.device;
    }

    function msg(conversationId: string, seq: number, senderId: string, extra: Partial<StoredBatch> = {}): StoredBatch {
      return {
        conversationId,
        kind: "group",
        seq,
        messageId: randomUuid(),
        senderId,
        preview: `message ${seq}`,
        count: 1,
        recipientIds: [],
        firstStoredAtMs: T0,
        ...extra,
      };
    }

    /** A direct conversation of two users, the recipient with one FCM device. */
    async function directPair(w: World) {
      const [ann, bob] = [randomUuid(), randomUuid()];
      const conversationId = directConversationId(ann, bob);
      w.groups.add(conversationId, "direct", [ann, bob]);
      w.directory.names.set(ann, "Ann");
      const phone = await device(bob);
      const send = (p: PushPipeline, seq: number, extra: Partial<StoredBatch> = {}) =>
        p.messagesStored([msg(conversationId, seq, ann, { kind: "direct", recipientIds: [bob], ...extra })]);
      return { ann, bob, conversationId, phone, send };
    }

    async function group(w: World, size: number, name = "Team", kind: ConversationKind = "group") {
      const members = Array.from({ length: size }, () => randomUuid());
      const conversationId = randomUuid();
      w.groups.add(conversationId, kind, members, name);
      return { members, conversationId };
    }

    it("pushes nothing before the delay, then exactly one push", async () => {
      const w = world();
      const p = w.make();
      const { conversationId, phone, send } = await directPair(w);
      await send(p, 1, { preview: "hello" });
      w.clock.nowMs = T0 + DELAY - 1;
      assert.deepEqual(await p.tick(), { jobs: 0, tasks: 0, more: false });
      assert.equal(w.senders.fcm.sent.length, 0);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
      const { target, push } = w.senders.fcm.sent[0]!;
      assert.deepEqual(target, { platform: "fcm", token: phone.tokenKey, appId: "com.example.chat" });
      assert.equal(push.title, "Ann");
      assert.equal(push.body, "hello");
      assert.equal(push.collapseKey, conversationId);
      assert.equal(push.data.conversation_id, conversationId);
      assert.equal(push.data.seq, "1");
      assert.equal(push.data.count, "1");
      assert.ok(isUuid(push.data.push_id!), "a push id");
      assert.equal(push.pushId, push.data.push_id);
      w.clock.advance(10 * LEASE);
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1, "once");
      assert.deepEqual(p.stats, {
        messagesReceived: 1,
        jobsDue: 1,
        pushesCreated: 1,
        pushesCancelled: 0,
        sendsOk: 1,
        sendsRetried: 0,
        devicesRemoved: 0,
        deadLettered: 0,
      });
    });

    it("does not push when the recipient read the message within the delay", async () => {
      const w = world();
      const p = w.make();
      const { bob, conversationId, send } = await directPair(w);
      await send(p, 1);
      w.groups.read(conversationId, bob, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      assert.equal(p.stats.jobsDue, 1);
      assert.equal(p.stats.pushesCreated, 0);
    });

    it("cancels a push when the messages are received between the job and the send", async () => {
      const w = world();
      const p = w.make();
      const { bob, conversationId, send } = await directPair(w);
      await send(p, 1);
      // The re-check right before sending (no excluded sender) sees another device received it.
      w.groups.onCall = (q) => {
        if (q.excludeUserIds.length === 0) w.groups.deliver(conversationId, bob, 1);
      };
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      assert.equal(p.stats.pushesCreated, 1);
      assert.equal(p.stats.pushesCancelled, 1);
      w.clock.advance(10 * LEASE);
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0, "the push is gone");
    });

    it("does not push to a member who muted the conversation", async () => {
      const w = world();
      const p = w.make();
      const { bob, conversationId, send } = await directPair(w);
      w.groups.member(conversationId, bob).muted = true;
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
    });

    it("does not push while the user is in 'do not disturb', before or after the job", async () => {
      const w = world();
      const p = w.make();
      const { bob, send } = await directPair(w);
      await store.updateSettings(bob, { mutedUntilMs: T0 + 3_600_000 }, T0);
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      assert.equal(p.stats.pushesCreated, 0);

      // Muted after the push was decided, before it was sent.
      await store.updateSettings(bob, { mutedUntilMs: null }, T0);
      const second = await directPair(w);
      await second.send(p, 1);
      w.groups.onCall = async (q) => {
        if (q.excludeUserIds.length === 0) await store.updateSettings(second.bob, { mutedUntilMs: T0 + 3_600_000 }, T0);
      };
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      assert.equal(p.stats.pushesCancelled, 1);

      // A mute that has ended does not hold pushes back.
      w.groups.onCall = undefined;
      await store.updateSettings(second.bob, { mutedUntilMs: T0 + 1 }, T0);
      await second.send(p, 2, { firstStoredAtMs: T0 + DELAY });
      w.clock.nowMs = T0 + 2 * DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
    });

    it("collapses a burst of 10 messages into one push with count 10", async () => {
      const w = world();
      const p = w.make();
      const { members, conversationId } = await group(w, 2, "Team");
      const [ann, bob] = members as [string, string];
      w.directory.names.set(ann, "Ann");
      await device(bob);
      for (let seq = 1; seq <= 10; seq++) {
        await p.messagesStored([msg(conversationId, seq, ann, { firstStoredAtMs: T0 + seq * 100, preview: `m${seq}` })]);
      }
      w.clock.nowMs = T0 + 100 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
      const { push } = w.senders.fcm.sent[0]!;
      assert.equal(push.title, "Team · Ann");
      assert.equal(push.body, "m10 (+9 more)");
      assert.equal(push.data.count, "10");
      assert.equal(push.data.seq, "10");
      assert.equal(p.stats.messagesReceived, 10);
      assert.equal(p.stats.jobsDue, 1);
    });

    it("counts only what the user has not received of a burst", async () => {
      const w = world();
      const p = w.make();
      const { members, conversationId } = await group(w, 2);
      const [ann, bob] = members as [string, string];
      await device(bob);
      for (let seq = 1; seq <= 5; seq++) await p.messagesStored([msg(conversationId, seq, ann)]);
      w.groups.deliver(conversationId, bob, 3);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent[0]?.push.data.count, "2");
    });

    it("neither loses nor repeats messages stored while their job is being handled", async () => {
      const w = world();
      const p = w.make();
      const { members, conversationId } = await group(w, 2);
      const [ann, bob] = members as [string, string];
      await device(bob);
      await p.messagesStored([msg(conversationId, 1, ann)]);
      let injected = false;
      w.groups.onCall = async (q) => {
        if (!injected && q.excludeUserIds.length > 0) {
          injected = true;
          await p.messagesStored([msg(conversationId, 2, ann, { firstStoredAtMs: T0 + DELAY })]);
        }
      };
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.deepEqual(
        w.senders.fcm.sent.map((s) => s.push.data.seq),
        ["1"],
      );
      w.clock.nowMs = T0 + 2 * DELAY - 1;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1, "the second message's job is due a delay after it");
      w.clock.nowMs = T0 + 2 * DELAY;
      await p.tick();
      assert.deepEqual(
        w.senders.fcm.sent.map((s) => [s.push.data.seq, s.push.data.count]),
        [
          ["1", "1"],
          ["2", "1"],
        ],
      );
      w.clock.advance(10 * LEASE);
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 2);
      assert.equal(p.stats.messagesReceived, 2);
      assert.equal(p.stats.jobsDue, 2);
    });

    it("retries with jittered exponential backoff, never before Retry-After, with the same push id", async () => {
      const w = world(() => 0.5);
      const p = w.make();
      const { phone, send } = await directPair(w);
      w.senders.fcm.script(
        phone.tokenKey,
        { status: "retry", reason: "HTTP 503" },
        { status: "retry", reason: "HTTP 429", retryAfterMs: 10_000 },
      );
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
      // Attempt 1 failed: 0.5 × min(60 s, 1 s · 2⁰) = 500 ms.
      w.clock.nowMs = T0 + DELAY + 499;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
      w.clock.nowMs = T0 + DELAY + 500;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 2);
      // Attempt 2 failed with Retry-After 10 s (the backoff would be 1 s).
      w.clock.nowMs = T0 + DELAY + 500 + 9_999;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 2);
      w.clock.nowMs = T0 + DELAY + 500 + 10_000;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 3);
      assert.equal(new Set(w.senders.fcm.sent.map((s) => s.push.data.push_id)).size, 1, "one push id");
      assert.equal(p.stats.sendsRetried, 2);
      assert.equal(p.stats.sendsOk, 1);
      w.clock.advance(10 * LEASE);
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 3);
    });

    it("dead-letters a push after maxAttempts, and a permanent failure at once", async () => {
      const w = world(() => 0);
      const p = w.make();
      const { bob, conversationId, phone, send } = await directPair(w);
      const tablet = await device(bob, "webhook");
      w.senders.fcm.fallback = { status: "retry", reason: "HTTP 503" };
      w.senders.webhook.script(tablet.tokenKey, { status: "failed", reason: "HTTP 400: bad request" });
      await send(p, 7, { seq: 7 });
      w.clock.nowMs = T0 + DELAY;
      for (let i = 0; i < OPTIONS.maxAttempts + 2; i++) await p.tick(); // jitter 0: due again at once
      assert.equal(w.senders.fcm.sentTo(phone.tokenKey).length, OPTIONS.maxAttempts);
      assert.equal(w.senders.webhook.sentTo(tablet.tokenKey).length, 1);
      const letters = (await store.listDeadLetters(1000)).filter((l) => l.conversationId === conversationId);
      assert.deepEqual(
        letters.map(({ failedAtMs: _, ...l }) => l),
        [
          { userId: bob, conversationId, deviceId: phone.deviceId, platform: "fcm", seq: 7, attempts: 4, reason: "gave up after 4 attempts: HTTP 503" },
          { userId: bob, conversationId, deviceId: tablet.deviceId, platform: "webhook", seq: 7, attempts: 1, reason: "HTTP 400: bad request" },
        ],
      );
      assert.equal(p.stats.deadLettered, 2);
      assert.equal(p.stats.sendsRetried, OPTIONS.maxAttempts - 1);
      w.clock.advance(10 * LEASE);
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, OPTIONS.maxAttempts, "given up");
    });

    it("removes a device the provider reports invalid and does not retry it", async () => {
      const w = world(() => 0);
      const p = w.make();
      const { bob, phone, send } = await directPair(w);
      const other = await device(bob);
      w.senders.fcm.script(phone.tokenKey, { status: "invalid-token", reason: "UNREGISTERED" });
      w.senders.fcm.script(other.tokenKey, { status: "retry", reason: "HTTP 500" });
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      await p.tick();
      assert.equal(w.senders.fcm.sentTo(phone.tokenKey).length, 1);
      assert.equal(w.senders.fcm.sentTo(other.tokenKey).length, 2);
      assert.deepEqual((await store.listDevices(bob)).map((d) => d.deviceId), [other.deviceId]);
      assert.equal(p.stats.devicesRemoved, 1);
      assert.equal(p.stats.sendsOk, 1);
    });

    it("does not send to a Web Push endpoint that is no longer on the allow-list, and removes it", async () => {
      const w = world();
      const p = w.make();
      const { bob, send } = await directPair(w);
      const allowed = await device(bob, "webpush", "https://fcm.googleapis.com/fcm/send/abc");
      await device(bob, "webpush", "https://push.example.internal/send/abc");
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.deepEqual(
        w.senders.webpush.sent.map((s) => s.target.subscription?.endpoint),
        [allowed.tokenKey],
      );
      assert.deepEqual((await store.listDevices(bob)).filter((d) => d.platform === "webpush").map((d) => d.deviceId), [allowed.deviceId]);
    });

    it("sends to a device's new owner only: a device that moved does not get the old user's push", async () => {
      const w = world();
      const p = w.make();
      const { phone, send } = await directPair(w);
      await send(p, 1);
      w.clock.nowMs = T0 + DELAY;
      // The job runs; before the send the phone is registered by someone else.
      w.groups.onCall = async (q) => {
        if (q.excludeUserIds.length === 0) {
          await store.registerDevice({ ...phone, userId: randomUuid() }, { deviceId: randomUuid(), maxPerUser: 20, nowMs: T0 + 1 });
        }
      };
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
    });

    it("after a crash after the send, sends once more with the same push id", async () => {
      const w = world();
      const { phone, send } = await directPair(w);
      const crashing = scriptedSenders();
      crashing.fcm.fallback = "hang";
      const a = w.make({ senders: crashing });
      hung.add(a);
      await send(a, 1);
      w.clock.nowMs = T0 + DELAY;
      void a.tick(); // never finishes: the process "dies" with the push handed to the provider
      await until("the crashing instance sent", () => crashing.fcm.sent.length === 1);
      const b = w.make();
      await b.tick();
      assert.equal(w.senders.fcm.sent.length, 0, "leased to the dead instance");
      w.clock.advance(LEASE);
      await b.tick();
      assert.equal(w.senders.fcm.sentTo(phone.tokenKey).length, 1);
      assert.equal(w.senders.fcm.sent[0]!.push.data.push_id, crashing.fcm.sent[0]!.push.data.push_id, "the same push id");
      w.clock.advance(10 * LEASE);
      await b.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
    });

    it("after a crash before the send, sends exactly once", async () => {
      const w = world();
      const { send } = await directPair(w);
      const stuck = new FakeDirectory();
      stuck.hang = true;
      const a = w.make({ directory: stuck });
      hung.add(a);
      await send(a, 1);
      w.clock.nowMs = T0 + DELAY;
      const hungCall = stuck.nextHungCall();
      void a.tick(); // dies after claiming the push, before sending it
      await hungCall;
      const b = w.make();
      await b.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      w.clock.advance(LEASE);
      await b.tick();
      w.clock.advance(10 * LEASE);
      await b.tick();
      assert.equal(w.senders.fcm.sent.length, 1, "exactly once");
    });

    it("two instances over one database never send the same push twice", async () => {
      const w = world();
      const { members, conversationId } = await group(w, 61);
      const [sender, ...rest] = members as [string, ...string[]];
      const phones = new Map<string, string>();
      for (const u of rest) phones.set((await device(u)).tokenKey, u);
      const opts = { taskBatch: 7, jobBatch: 1, batchesPerRound: 1 };
      const a = w.make({ opts });
      const b = w.make({ opts });
      await a.messagesStored([msg(conversationId, 1, sender)]);
      w.clock.nowMs = T0 + DELAY;
      for (let i = 0; i < 20 && w.senders.fcm.sent.length < rest.length; i++) await Promise.all([a.tick(), b.tick()]);
      await Promise.all([a.tick(), b.tick()]);
      const tokens = w.senders.fcm.sent.map((s) => s.target.token);
      assert.equal(tokens.length, rest.length);
      assert.equal(new Set(tokens).size, rest.length, "each device once");
      assert.ok(a.stats.sendsOk > 0 && b.stats.sendsOk > 0, `both worked: ${a.stats.sendsOk} + ${b.stats.sendsOk}`);
      assert.equal(a.stats.jobsDue + b.stats.jobsDue, 1);
    });

    it("pages the candidates of a 5,000-member group and pushes to those with devices", async () => {
      const w = world();
      const { members, conversationId } = await group(w, 5000, "Everyone");
      const sender = members[0]!;
      const withDevices = members.filter((_, i) => i % 50 === 25);
      for (const u of withDevices) await device(u);
      await w.make().messagesStored([msg(conversationId, 1, sender)]);
      const p = w.make();
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      const calls = w.groups.callsFor(conversationId);
      const pages = calls.filter((c) => c.excludeUserIds.length > 0);
      assert.equal(pages.length, 5, "1,000 per page");
      assert.deepEqual(pages[0]!.excludeUserIds, [sender]);
      assert.equal(pages[0]!.afterUserId, "");
      for (let i = 1; i < pages.length; i++) assert.ok(pages[i]!.afterUserId > pages[i - 1]!.afterUserId, "pages move on");
      const rechecks = calls.filter((c) => c.excludeUserIds.length === 0);
      assert.equal(rechecks.length, 1, "one re-check for the batch");
      assert.equal(rechecks[0]!.userIds?.length, withDevices.length);
      assert.equal(w.senders.fcm.sent.length, withDevices.length);
      assert.equal(p.stats.pushesCreated, withDevices.length);
      assert.equal(w.senders.fcm.sent[0]!.push.title, "Everyone");
    });

    it("pushes nothing for an unknown or deleted conversation", async () => {
      const w = world();
      const p = w.make();
      const user = randomUuid();
      await device(user);
      await p.messagesStored([msg(randomUuid(), 1, randomUuid())]);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      assert.equal(p.stats.jobsDue, 1);
      assert.equal((await store.nextDueAtMs()) ?? Infinity, Infinity, "nothing left");
    });

    it("retries a job when groups cannot be reached", async () => {
      const w = world();
      const p = w.make();
      const { send } = await directPair(w);
      await send(p, 1);
      w.groups.failWith = new Error("groups unavailable");
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      w.groups.failWith = undefined;
      w.clock.nowMs = T0 + DELAY + OPTIONS.retryBaseMs - 1;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 0);
      w.clock.nowMs = T0 + DELAY + OPTIONS.retryBaseMs;
      await p.tick();
      assert.equal(w.senders.fcm.sent.length, 1);
    });

    it("renders by the recipient's privacy setting, without names when the directory fails", async () => {
      const w = world();
      const p = w.make();
      const { members, conversationId } = await group(w, 4, "Team");
      const [ann, full, senderOnly, none] = members as [string, string, string, string];
      w.directory.names.set(ann, "Ann");
      for (const u of [full, senderOnly, none]) await device(u, "fcm", `tok-${u}`);
      await store.updateSettings(senderOnly, { privacy: "sender-only" }, T0);
      await store.updateSettings(none, { privacy: "none" }, T0);
      await p.messagesStored([msg(conversationId, 1, ann, { preview: "lunch?" }), msg(conversationId, 2, ann, { preview: "at 12" })]);
      w.clock.nowMs = T0 + DELAY;
      await p.tick();
      const by = (u: string) => w.senders.fcm.sentTo(`tok-${u}`)[0]?.push;
      assert.deepEqual([by(full)?.title, by(full)?.body], ["Team · Ann", "at 12 (+1 more)"]);
      assert.deepEqual([by(senderOnly)?.title, by(senderOnly)?.body], ["Team · Ann", "2 new messages"]);
      assert.deepEqual([by(none)?.title, by(none)?.body], ["Parley", "2 new messages"]);

      w.directory.failWith = new Error("session down");
      await p.messagesStored([msg(conversationId, 3, ann, { preview: "ok", firstStoredAtMs: T0 + DELAY })]);
      w.clock.nowMs = T0 + 2 * DELAY;
      await p.tick();
      assert.deepEqual([w.senders.fcm.sentTo(`tok-${full}`)[1]?.push.title, w.senders.fcm.sentTo(`tok-${full}`)[1]?.push.body], ["Team", "ok"]);
    });

    it("signs real webhook pushes with the push id, and removes a device the receiver does not know", async () => {
      const secret = "s".repeat(40);
      const receiver = await FakeWebhookReceiver.start({ secret, devices: ["device-1"] });
      const webhook = new WebhookSender({ url: receiver.url, secret, timeoutMs: 5000 });
      try {
        const w = world();
        const p = w.make({ senders: { webhook } });
        const { bob, send } = await directPair(w);
        await device(bob, "webhook", "device-1");
        const gone = await device(bob, "webhook", "device-gone");
        await send(p, 1, { preview: "hi" });
        w.clock.nowMs = T0 + DELAY;
        await p.tick();
        // Both requests pass the receiver's checks (signature, shape); it knows one device.
        assert.deepEqual(receiver.rejected, []);
        assert.deepEqual(receiver.accepted.map((a) => a.payload.device).sort(), ["device-1", "device-gone"]);
        const got = receiver.accepted.find((a) => a.payload.device === "device-1")!;
        assert.equal(got.payload.device, "device-1");
        assert.equal(got.payload.title, "Ann");
        assert.equal(got.payload.body, "hi");
        assert.equal(got.payload.id, got.payload.data.push_id, "the push id is the webhook id");
        assert.equal(w.senders.fcm.sent[0]!.push.data.push_id, got.payload.id, "the same push on every device");
        assert.ok(!(await store.listDevices(bob)).some((d) => d.deviceId === gone.deviceId), "unknown device removed");
        assert.equal(p.stats.devicesRemoved, 1);
      } finally {
        await webhook.close();
        await receiver.close();
      }
    });

    it("runs by itself once started: one timer, woken by new messages", async () => {
      const w = world();
      const p = new PushPipeline(
        { store, candidates: w.groups, users: w.directory, senders: w.senders, logger },
        { ...OPTIONS, delayMs: 20, pollMs: 50 },
      );
      opened.push(p);
      const { members, conversationId } = await group(w, 2);
      await device(members[1]!);
      p.start();
      await p.messagesStored([msg(conversationId, 1, members[0]!, { firstStoredAtMs: Date.now() })]);
      await until("the push was sent by the loop", () => w.senders.fcm.sent.length === 1);
      await p.close();
      assert.equal(w.senders.fcm.sent.length, 1);
    });
  });
}

describePipeline("PGlite", () => openPglite());
const postgresUrl = realBackend("postgres");
if (postgresUrl) describePipeline("Postgres", () => openPostgresInNewSchema(postgresUrl, "parley_test_notify_pipeline"));
