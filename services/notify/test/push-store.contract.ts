import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomUuid } from "../../../lib/ids.js";
import type { NewDevice, PushJob, PushTask, StoredBatch, TaskInput } from "../src/model.js";
import type { PushStore } from "../src/push-store.js";

type Disposable = PushStore & { dispose?(): Promise<void> };

const T0 = 1_700_000_000_000;
const DELAY = 2000;
const LEASE = 30_000;

function device(userId: string, extra: Partial<NewDevice> = {}): NewDevice {
  return {
    userId,
    platform: "fcm",
    appId: "com.example.chat",
    tokenKey: `tok-${randomUuid()}`,
    p256dh: "",
    auth: "",
    label: "phone",
    ...extra,
  };
}

function batch(conversationId: string, seq: number, extra: Partial<StoredBatch> = {}): StoredBatch {
  return {
    conversationId,
    kind: "group",
    seq,
    messageId: randomUuid(),
    senderId: randomUuid(),
    preview: `message ${seq}`,
    count: 1,
    recipientIds: [],
    firstStoredAtMs: T0,
    ...extra,
  };
}

const task = (userId: string, count = 1, unread = count): TaskInput => ({ userId, count, unread, pushId: randomUuid() });

/** The contract every PushStore adapter keeps. */
export function describePushStore(name: string, open: () => Promise<Disposable>) {
  describe(`PushStore contract: ${name}`, () => {
    let store: Disposable;
    before(async () => {
      store = await open();
    });
    after(async () => {
      await store.close();
      await store.dispose?.();
    });

    async function register(d: NewDevice, max = 20, nowMs = T0) {
      const r = await store.registerDevice(d, { deviceId: randomUuid(), maxPerUser: max, nowMs });
      assert.ok(!("overCap" in r), "unexpectedly over the cap");
      return r;
    }

    /** Claims exactly the one due job of `conversationId` (there may be others due in the shared store). */
    async function claimJob(conversationId: string, nowMs: number, claimId = randomUuid()): Promise<PushJob | undefined> {
      const jobs = await store.claimDueJobs(nowMs, LEASE, 1000, claimId);
      const mine = jobs.find((j) => j.conversationId === conversationId);
      // Give back the others (other tests' jobs) at once.
      for (const j of jobs) if (j !== mine) await store.releaseJob(j, 0);
      return mine;
    }

    async function claimTasks(nowMs: number, filter: (t: PushTask) => boolean, claimId = randomUuid()): Promise<PushTask[]> {
      const tasks = await store.claimDueTasks(nowMs, LEASE, 1000, claimId);
      const mine = tasks.filter(filter);
      const others = tasks.filter((t) => !filter(t));
      // Others go back (due at once).
      for (const t of others) await store.completeTask(t, { retry: t.deviceIds, nextAttemptAtMs: 0, lastError: "", deadLetters: [] }, 0);
      return mine;
    }

    describe("devices", () => {
      it("registers a device, and updates it when the same token is registered again", async () => {
        const user = randomUuid();
        const d = device(user);
        const first = await register(d, 20, T0);
        assert.equal(first.created, true);
        assert.equal(first.device.userId, user);
        assert.equal(first.device.tokenKey, d.tokenKey);
        assert.equal(first.device.createdAtMs, T0);
        const again = await register({ ...d, label: "new name", appId: "com.example.other" }, 20, T0 + 5);
        assert.equal(again.created, false);
        assert.equal(again.device.deviceId, first.device.deviceId);
        assert.equal(again.device.label, "new name");
        assert.equal(again.device.appId, "com.example.other");
        assert.equal(again.device.createdAtMs, T0);
        assert.equal(again.device.updatedAtMs, T0 + 5);
        assert.deepEqual(await store.listDevices(user), [again.device]);
      });

      it("moves a device to the user who registers its token now, under a new id", async () => {
        const [ann, bob] = [randomUuid(), randomUuid()];
        const d = device(ann);
        const old = await register(d);
        const moved = await register({ ...d, userId: bob });
        assert.equal(moved.created, true);
        assert.notEqual(moved.device.deviceId, old.device.deviceId);
        assert.deepEqual(await store.listDevices(ann), []);
        assert.deepEqual((await store.listDevices(bob)).map((x) => x.deviceId), [moved.device.deviceId]);
        assert.deepEqual(await store.devicesByIds([old.device.deviceId]), []);
      });

      it("tells platforms apart: the same token on two platforms is two devices", async () => {
        const user = randomUuid();
        const token = "abcdef".repeat(12);
        await register(device(user, { platform: "webhook", tokenKey: token }));
        await register(device(user, { platform: "fcm", tokenKey: token }));
        assert.equal((await store.listDevices(user)).length, 2);
      });

      it("keeps Web Push subscriptions and long tokens whole", async () => {
        const user = randomUuid();
        const endpoint = `https://fcm.googleapis.com/fcm/send/${"x".repeat(2000)}`;
        const r = await register(device(user, { platform: "webpush", tokenKey: endpoint, p256dh: "BPk", auth: "au" }));
        assert.equal(r.device.tokenKey, endpoint);
        assert.equal(r.device.p256dh, "BPk");
        assert.equal(r.device.auth, "au");
        const long = await register(device(user, { tokenKey: "t".repeat(4096) }));
        assert.equal(long.device.tokenKey.length, 4096);
      });

      it("caps the devices of a user, but lets a registered device update at the cap", async () => {
        const user = randomUuid();
        const a = device(user);
        await register(a, 2);
        await register(device(user), 2);
        const third = await store.registerDevice(device(user), { deviceId: randomUuid(), maxPerUser: 2, nowMs: T0 });
        assert.deepEqual(third, { overCap: true });
        assert.equal((await register({ ...a, label: "renamed" }, 2)).created, false);
        assert.equal((await store.listDevices(user)).length, 2);
        // Moving a device to a user at the cap is over the cap too; the old owner keeps it.
        const other = device(randomUuid());
        await register(other);
        assert.deepEqual(await store.registerDevice({ ...other, userId: user }, { deviceId: randomUuid(), maxPerUser: 2, nowMs: T0 }), {
          overCap: true,
        });
        assert.equal((await store.listDevices(other.userId)).length, 1);
      });

      it("keeps the cap under concurrent registrations", async () => {
        const user = randomUuid();
        const results = await Promise.all(
          Array.from({ length: 8 }, () => store.registerDevice(device(user), { deviceId: randomUuid(), maxPerUser: 3, nowMs: T0 })),
        );
        assert.equal(results.filter((r) => !("overCap" in r)).length, 3);
        assert.equal((await store.listDevices(user)).length, 3);
      });

      it("unregisters only the user's own device", async () => {
        const [ann, bob] = [randomUuid(), randomUuid()];
        const { device: d } = await register(device(ann));
        assert.equal(await store.unregisterDevice(bob, d.deviceId), false);
        assert.equal(await store.unregisterDevice(ann, randomUuid()), false);
        assert.equal(await store.unregisterDevice(ann, d.deviceId), true);
        assert.equal(await store.unregisterDevice(ann, d.deviceId), false);
        assert.deepEqual(await store.listDevices(ann), []);
      });

      it("lists a user's devices oldest first, finds devices by id and users with devices", async () => {
        const [ann, bob] = [randomUuid(), randomUuid()];
        const a = await register(device(ann), 20, T0 + 2);
        const b = await register(device(ann), 20, T0 + 1);
        assert.deepEqual((await store.listDevices(ann)).map((d) => d.deviceId), [b.device.deviceId, a.device.deviceId]);
        const found = await store.devicesByIds([a.device.deviceId, randomUuid()]);
        assert.deepEqual(found, [a.device]);
        assert.deepEqual(await store.usersWithDevices([ann, bob]), new Set([ann]));
        assert.deepEqual(await store.usersWithDevices([]), new Set());
      });

      it("removes invalid devices unless they were registered again since they were read", async () => {
        const user = randomUuid();
        const d = device(user);
        const { device: read } = await register(d, 20, T0);
        await register({ ...d, label: "again" }, 20, T0 + 10);
        assert.equal(await store.removeDevices([{ deviceId: read.deviceId, updatedAtMs: read.updatedAtMs }]), 0);
        assert.equal(await store.removeDevices([{ deviceId: read.deviceId, updatedAtMs: T0 + 10 }]), 1);
        assert.deepEqual(await store.listDevices(user), []);
      });
    });

    describe("settings", () => {
      it("defaults to full previews, unmuted, and updates each field on its own", async () => {
        const user = randomUuid();
        assert.deepEqual(await store.getSettings(user), { privacy: "full", mutedUntilMs: undefined });
        assert.deepEqual(await store.updateSettings(user, { privacy: "none" }, T0), { privacy: "none", mutedUntilMs: undefined });
        assert.deepEqual(await store.updateSettings(user, { mutedUntilMs: T0 + 60_000 }, T0), { privacy: "none", mutedUntilMs: T0 + 60_000 });
        assert.deepEqual(await store.updateSettings(user, { privacy: "sender-only" }, T0), {
          privacy: "sender-only",
          mutedUntilMs: T0 + 60_000,
        });
        assert.deepEqual(await store.updateSettings(user, { mutedUntilMs: null }, T0), { privacy: "sender-only", mutedUntilMs: undefined });
        assert.deepEqual(await store.getSettings(user), { privacy: "sender-only", mutedUntilMs: undefined });
        const fresh = randomUuid();
        assert.deepEqual(await store.updateSettings(fresh, { mutedUntilMs: T0 + 1 }, T0), { privacy: "full", mutedUntilMs: T0 + 1 });
      });

      it("reads the settings of many users at once, defaults included", async () => {
        const [a, b] = [randomUuid(), randomUuid()];
        await store.updateSettings(a, { privacy: "none" }, T0);
        const all = await store.settingsOf([a, b]);
        assert.deepEqual(all.get(a), { privacy: "none", mutedUntilMs: undefined });
        assert.deepEqual(all.get(b), { privacy: "full", mutedUntilMs: undefined });
      });
    });

    describe("jobs", () => {
      it("drops direct messages to users without push devices before writing a job", async () => {
        const [ann, bob] = [randomUuid(), randomUuid()];
        const conversationId = randomUuid();
        const kept = await store.addMessages([batch(conversationId, 1, { kind: "direct", senderId: ann, recipientIds: [bob] })], DELAY);
        assert.equal(kept, 0);
        assert.equal(await claimJob(conversationId, T0 + DELAY), undefined);
        await register(device(bob));
        assert.equal(await store.addMessages([batch(conversationId, 2, { kind: "direct", senderId: ann, recipientIds: [bob] })], DELAY), 1);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.equal(job?.lastSeq, 2);
        assert.deepEqual(job?.recipientIds, [bob]);
      });

      it("makes a job due a delay after the first message, and merges later ones without moving it", async () => {
        const conversationId = randomUuid();
        const sender = randomUuid();
        await store.addMessages([batch(conversationId, 5, { firstStoredAtMs: T0 })], DELAY);
        const newest = batch(conversationId, 7, { firstStoredAtMs: T0 + 1500, count: 2, senderId: sender, preview: "newest" });
        await store.addMessages([newest], DELAY);
        assert.equal(await claimJob(conversationId, T0 + DELAY - 1), undefined);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.ok(job, "job due");
        assert.equal(job.dueAtMs, T0 + DELAY);
        assert.equal(job.firstSeq, 5);
        assert.equal(job.lastSeq, 7);
        assert.equal(job.count, 3);
        assert.equal(job.messageId, newest.messageId);
        assert.equal(job.senderId, sender);
        assert.equal(job.preview, "newest");
      });

      it("merges several items of one conversation in one hand-over, and ignores a repeated one", async () => {
        const conversationId = randomUuid();
        const a = batch(conversationId, 1);
        const b = batch(conversationId, 2);
        const c = batch(conversationId, 3, { count: 1 });
        await store.addMessages([b, a, c], DELAY);
        await store.addMessages([b, c], DELAY); // a router's retry
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.equal(job?.count, 3);
        assert.equal(job?.lastSeq, 3);
        assert.equal(job?.messageId, c.messageId);
      });

      it("hides a claimed job until its lease ends (a crashed claimer's job comes back)", async () => {
        const conversationId = randomUuid();
        await store.addMessages([batch(conversationId, 1)], DELAY);
        const first = await claimJob(conversationId, T0 + DELAY);
        assert.ok(first, "claimed");
        assert.equal(await claimJob(conversationId, T0 + DELAY + LEASE - 1), undefined);
        const again = await claimJob(conversationId, T0 + DELAY + LEASE);
        assert.ok(again, "claimed again after the lease");
        assert.notEqual(again.claimId, first.claimId);
        // The first claimer lost the job: finishing does nothing.
        const user = randomUuid();
        await register(device(user));
        assert.deepEqual(await store.finishJob(first, { name: "" }, [task(user)], T0 + DELAY + LEASE), { finished: false, pushes: 0 });
        assert.deepEqual(await claimTasks(T0 + DELAY + LEASE, (t) => t.conversationId === conversationId), []);
        assert.deepEqual(await store.finishJob(again, { name: "" }, [task(user)], T0 + DELAY + LEASE), { finished: true, pushes: 1 });
      });

      it("finishes a job into tasks of the users who still have devices", async () => {
        const conversationId = randomUuid();
        const [ann, bob, cid] = [randomUuid(), randomUuid(), randomUuid()];
        const annPhone = (await register(device(ann))).device;
        const annTablet = (await register(device(ann))).device;
        await register(device(bob));
        const b = batch(conversationId, 9, { count: 4, preview: "hi all" });
        await store.addMessages([b], DELAY);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.ok(job, "due");
        await store.unregisterDevice(bob, (await store.listDevices(bob))[0]!.deviceId);
        const input = task(ann, 4, 6);
        const r = await store.finishJob(job, { name: "Team" }, [input, task(bob), task(cid)], T0 + DELAY);
        assert.deepEqual(r, { finished: true, pushes: 1 });
        assert.equal(await claimJob(conversationId, T0 + DELAY + LEASE), undefined, "the job is gone");
        const [t] = await claimTasks(T0 + DELAY, (x) => x.conversationId === conversationId);
        assert.ok(t, "task due");
        assert.equal(t.userId, ann);
        assert.equal(t.pushId, input.pushId);
        assert.equal(t.kind, "group");
        assert.equal(t.conversationName, "Team");
        assert.equal(t.upToSeq, 9);
        assert.equal(t.count, 4);
        assert.equal(t.messageId, b.messageId);
        assert.equal(t.senderId, b.senderId);
        assert.equal(t.preview, "hi all");
        assert.deepEqual([...t.deviceIds].sort(), [annPhone.deviceId, annTablet.deviceId].sort());
        assert.equal(t.attempts, 0);
        assert.equal(t.nextAttemptAtMs, T0 + DELAY + LEASE, "leased");
      });

      it("keeps messages merged while the job was claimed as its remainder, due with the first of them", async () => {
        const conversationId = randomUuid();
        await store.addMessages([batch(conversationId, 3, { count: 3 })], DELAY);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.ok(job, "due");
        await store.addMessages([batch(conversationId, 4, { firstStoredAtMs: T0 + 2500 })], DELAY);
        await store.addMessages([batch(conversationId, 6, { firstStoredAtMs: T0 + 2600, count: 2 })], DELAY);
        assert.deepEqual(await store.finishJob(job, { name: "" }, [], T0 + 2700), { finished: true, pushes: 0 });
        assert.equal(await claimJob(conversationId, T0 + 2500 + DELAY - 1), undefined);
        const rest = await claimJob(conversationId, T0 + 2500 + DELAY);
        assert.ok(rest, "the remainder is due");
        assert.equal(rest.firstSeq, 4);
        assert.equal(rest.lastSeq, 6);
        assert.equal(rest.count, 3);
        assert.equal(rest.dueAtMs, T0 + 2500 + DELAY);
      });

      it("gives a job back when it could not be handled", async () => {
        const conversationId = randomUuid();
        await store.addMessages([batch(conversationId, 1)], DELAY);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.ok(job, "due");
        await store.releaseJob(job, T0 + DELAY + 1000);
        assert.equal(await claimJob(conversationId, T0 + DELAY + 999), undefined);
        assert.ok(await claimJob(conversationId, T0 + DELAY + 1000), "due again");
      });

      it("finds the pushable users: with devices, not muted", async () => {
        const [a, b, c, d] = [randomUuid(), randomUuid(), randomUuid(), randomUuid()];
        for (const u of [a, b, c]) await register(device(u));
        await store.updateSettings(b, { mutedUntilMs: T0 + 10 }, T0);
        await store.updateSettings(c, { mutedUntilMs: T0 - 10 }, T0);
        assert.deepEqual(await store.pushableUsers([a, b, c, d], T0), new Set([a, c]));
        assert.deepEqual(await store.pushableUsers([a, b, c, d], T0 + 10), new Set([a, b, c]));
      });
    });

    describe("tasks", () => {
      async function newTask(conversationId: string, user: string, t: TaskInput, seq = 1, nowMs = T0 + DELAY) {
        await store.addMessages([batch(conversationId, seq, { firstStoredAtMs: nowMs - DELAY })], DELAY);
        const job = await claimJob(conversationId, nowMs);
        assert.ok(job, "job due");
        await store.finishJob(job, { name: "" }, [t], nowMs);
        const mine = (x: PushTask) => x.conversationId === conversationId && x.userId === user;
        return { job, mine };
      }

      it("hides a claimed task until its lease ends, with the same push id after it", async () => {
        const conversationId = randomUuid();
        const user = randomUuid();
        await register(device(user));
        const input = task(user);
        const { mine } = await newTask(conversationId, user, input);
        const [first] = await claimTasks(T0 + DELAY, mine);
        assert.ok(first, "claimed");
        assert.deepEqual(await claimTasks(T0 + DELAY + LEASE - 1, mine), []);
        const [again] = await claimTasks(T0 + DELAY + LEASE, mine);
        assert.ok(again, "claimed again");
        assert.equal(again.pushId, input.pushId);
        assert.notEqual(again.claimId, first.claimId);
        // The first claimer lost it: its outcome is not recorded.
        await store.completeTask(first, { retry: [], nextAttemptAtMs: 0, lastError: "", deadLetters: [] }, T0);
        await store.completeTask(again, { retry: again.deviceIds, nextAttemptAtMs: T0 + 100_000, lastError: "x", deadLetters: [] }, T0);
        const [later] = await claimTasks(T0 + 100_000, mine);
        assert.equal(later?.attempts, 1);
      });

      it("records retries, narrows the devices, dead-letters, and deletes a task with nothing left", async () => {
        const conversationId = randomUuid();
        const user = randomUuid();
        const a = (await register(device(user))).device;
        const b = (await register(device(user, { platform: "webhook" }))).device;
        const { mine } = await newTask(conversationId, user, task(user), 4);
        const [t] = await claimTasks(T0 + DELAY, mine);
        assert.ok(t, "claimed");
        await store.completeTask(
          t,
          { retry: [a.deviceId], nextAttemptAtMs: T0 + 5000, lastError: "HTTP 503", deadLetters: [{ deviceId: b.deviceId, platform: "webhook", reason: "HTTP 400" }] },
          T0 + 3000,
        );
        assert.deepEqual(await claimTasks(T0 + 4999, mine), []);
        const [t2] = await claimTasks(T0 + 5000, mine);
        assert.ok(t2, "due again");
        assert.deepEqual(t2.deviceIds, [a.deviceId]);
        assert.equal(t2.attempts, 1);
        assert.equal(t2.lastError, "HTTP 503");
        assert.equal(t2.pushId, t.pushId);
        await store.completeTask(t2, { retry: [], nextAttemptAtMs: 0, lastError: "", deadLetters: [] }, T0 + 6000);
        assert.deepEqual(await claimTasks(T0 + 10 * LEASE, mine), [], "done");
        const letters = (await store.listDeadLetters(1000)).filter((d) => d.conversationId === conversationId);
        assert.deepEqual(letters, [
          { userId: user, conversationId, deviceId: b.deviceId, platform: "webhook", seq: 4, attempts: 1, reason: "HTTP 400", failedAtMs: T0 + 3000 },
        ]);
      });

      it("merges a new burst into a pending task: new push id, bounded count, all devices again", async () => {
        const conversationId = randomUuid();
        const user = randomUuid();
        const a = (await register(device(user))).device;
        const first = task(user, 2, 2);
        const { mine } = await newTask(conversationId, user, first, 2);
        const [t] = await claimTasks(T0 + DELAY, mine);
        assert.ok(t, "claimed");
        // Retried later; only one device left pending.
        await store.completeTask(t, { retry: [a.deviceId], nextAttemptAtMs: T0 + 60_000, lastError: "busy", deadLetters: [] }, T0 + DELAY);
        const b = (await register(device(user))).device;
        // A new burst of 3 while the user has 4 unread: the count is min(2 + 3, 4).
        const second = task(user, 3, 4);
        await store.addMessages([batch(conversationId, 5, { firstStoredAtMs: T0 + 3000, count: 3 })], DELAY);
        const job = await claimJob(conversationId, T0 + 3000 + DELAY);
        assert.ok(job, "second job");
        assert.deepEqual(await store.finishJob(job, { name: "" }, [second], T0 + 3000 + DELAY), { finished: true, pushes: 1 });
        const [m] = await claimTasks(T0 + 3000 + DELAY, mine);
        assert.ok(m, "merged task due at once (not after the old backoff)");
        assert.equal(m.pushId, second.pushId);
        assert.equal(m.count, 4);
        assert.equal(m.upToSeq, 5);
        assert.equal(m.attempts, 0);
        assert.deepEqual([...m.deviceIds].sort(), [a.deviceId, b.deviceId].sort());
      });

      it("does not lose a burst merged while the task was being sent", async () => {
        const conversationId = randomUuid();
        const user = randomUuid();
        await register(device(user));
        const { mine } = await newTask(conversationId, user, task(user), 1);
        const [sending] = await claimTasks(T0 + DELAY, mine);
        assert.ok(sending, "claimed");
        await store.addMessages([batch(conversationId, 2, { firstStoredAtMs: T0 + 2100 })], DELAY);
        const job = await claimJob(conversationId, T0 + 2100 + DELAY);
        assert.ok(job, "second job");
        const second = task(user, 1, 2);
        await store.finishJob(job, { name: "" }, [second], T0 + 2100 + DELAY);
        assert.deepEqual(await claimTasks(T0 + 2100 + DELAY, mine), [], "still leased to its sender");
        // The sender finishes the old push: the task stays, due now, with the new content.
        await store.completeTask(sending, { retry: [], nextAttemptAtMs: 0, lastError: "", deadLetters: [] }, T0 + 4200);
        const [next] = await claimTasks(T0 + 4200, mine);
        assert.ok(next, "due with the new content");
        assert.equal(next.pushId, second.pushId);
        assert.equal(next.upToSeq, 2);
        // Cancelling with a stale push id does not delete it either.
        assert.equal(await store.cancelTasks([{ ...next, pushId: sending.pushId }], T0 + 4300), 0);
        const [again] = await claimTasks(T0 + 4300, mine);
        assert.ok(again, "given back, due");
        assert.equal(await store.cancelTasks([again], T0 + 4400), 1);
        assert.deepEqual(await claimTasks(T0 + 10 * LEASE, mine), []);
      });

      it("hands each due task to one of two concurrent claimers", async () => {
        const conversationId = randomUuid();
        const users = Array.from({ length: 30 }, () => randomUuid());
        for (const u of users) await register(device(u));
        await store.addMessages([batch(conversationId, 1)], DELAY);
        const job = await claimJob(conversationId, T0 + DELAY);
        assert.ok(job, "due");
        await store.finishJob(job, { name: "" }, users.map((u) => task(u)), T0 + DELAY);
        const mine = (t: PushTask) => t.conversationId === conversationId;
        const [x, y] = await Promise.all([
          store.claimDueTasks(T0 + DELAY, LEASE, 20, randomUuid()),
          store.claimDueTasks(T0 + DELAY, LEASE, 20, randomUuid()),
        ]);
        const claimed = [...x.filter(mine), ...y.filter(mine)].map((t) => t.userId);
        assert.equal(new Set(claimed).size, claimed.length, "no task claimed twice");
        const rest = await claimTasks(T0 + DELAY, mine);
        assert.equal(claimed.length + rest.length, 30);
      });
    });

    describe("dead letters and scheduling", () => {
      it("lists dead letters newest first, limited, and prunes old ones", async () => {
        const conversationId = randomUuid();
        const user = randomUuid();
        const d = (await register(device(user))).device;
        const far = T0 + 1_000_000_000;
        for (let i = 0; i < 3; i++) {
          await store.addMessages([batch(conversationId, i + 1, { firstStoredAtMs: far + i * 10_000 })], DELAY);
          const job = await claimJob(conversationId, far + i * 10_000 + DELAY);
          assert.ok(job, "due");
          await store.finishJob(job, { name: "" }, [task(user)], far + i * 10_000 + DELAY);
          const [t] = await claimTasks(far + i * 10_000 + DELAY, (x) => x.conversationId === conversationId);
          assert.ok(t, "claimed");
          await store.completeTask(
            t,
            { retry: [], nextAttemptAtMs: 0, lastError: "", deadLetters: [{ deviceId: d.deviceId, platform: "fcm", reason: `r${i}` }] },
            far + i * 10_000 + DELAY,
          );
        }
        const top = await store.listDeadLetters(2);
        assert.deepEqual(
          top.map((l) => l.reason),
          ["r2", "r1"],
        );
        // Older than the second: the first (and other tests' letters, all older still).
        assert.ok((await store.pruneDeadLetters(far + 10_000 + DELAY)) >= 1, "pruned");
        assert.deepEqual(
          (await store.listDeadLetters(1000)).filter((l) => l.conversationId === conversationId).map((l) => l.reason),
          ["r2", "r1"],
        );
      });

      it("tells when the next job or task is due", async () => {
        const soon = await store.nextDueAtMs();
        const conversationId = randomUuid();
        await store.addMessages([batch(conversationId, 1, { firstStoredAtMs: 5 })], DELAY);
        const next = await store.nextDueAtMs();
        assert.ok(next !== undefined && next <= 5 + DELAY, `next due ${next}`);
        assert.ok(soon === undefined || next <= soon, "not later than before");
      });
    });
  });
}
