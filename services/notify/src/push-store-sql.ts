import { createHash } from "node:crypto";
import { migrate, sqlState, UNIQUE_VIOLATION, type Migration, type Sql, type SqlExecutor } from "../../../lib/sql.js";
import type {
  ConversationKind,
  DeadLetter,
  Device,
  FinishResult,
  NewDevice,
  Platform,
  Privacy,
  PushJob,
  PushTask,
  RegisterResult,
  Settings,
  SettingsChange,
  StoredBatch,
  TaskInput,
} from "./model.js";
import { DEFAULT_SETTINGS } from "./model.js";
import type { CompleteTask, PushStore } from "./push-store.js";

/*
 * Times are Unix milliseconds in bigint columns, always given by the caller (the
 * pipeline's clock), never the database's now(). 0 in a lease column means "not leased".
 */
const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: "push devices, settings, jobs, tasks, dead letters",
    sql: `
      CREATE TABLE push_devices (
        id uuid PRIMARY KEY,
        user_id uuid NOT NULL,
        platform text NOT NULL CHECK (platform IN ('fcm', 'apns', 'webpush', 'webhook')),
        app_id text NOT NULL DEFAULT '',
        token_key text NOT NULL,
        token_hash bytea NOT NULL,
        p256dh text NOT NULL DEFAULT '',
        auth text NOT NULL DEFAULT '',
        label text NOT NULL DEFAULT '',
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        CONSTRAINT push_devices_token UNIQUE (platform, token_hash)
      );
      CREATE INDEX push_devices_by_user ON push_devices (user_id);
      CREATE TABLE notify_settings (
        user_id uuid PRIMARY KEY,
        privacy text NOT NULL DEFAULT 'full' CHECK (privacy IN ('full', 'sender-only', 'none')),
        muted_until bigint,
        updated_at bigint NOT NULL
      );
      CREATE TABLE push_jobs (
        conversation_id uuid PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('direct', 'group')),
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        count integer NOT NULL,
        message_id uuid NOT NULL,
        sender_id uuid NOT NULL,
        preview text NOT NULL,
        recipient_ids uuid[] NOT NULL,
        due_at bigint NOT NULL,
        lease_until bigint NOT NULL DEFAULT 0,
        claim_id uuid,
        claimed_seq bigint,
        claimed_count integer,
        next_due_at bigint
      );
      CREATE INDEX push_jobs_due ON push_jobs (due_at);
      CREATE TABLE push_tasks (
        user_id uuid NOT NULL,
        conversation_id uuid NOT NULL,
        push_id uuid NOT NULL,
        kind text NOT NULL CHECK (kind IN ('direct', 'group')),
        conversation_name text NOT NULL DEFAULT '',
        up_to_seq bigint NOT NULL,
        count integer NOT NULL,
        message_id uuid NOT NULL,
        sender_id uuid NOT NULL,
        preview text NOT NULL,
        device_ids uuid[] NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at bigint NOT NULL,
        claim_id uuid,
        last_error text NOT NULL DEFAULT '',
        created_at bigint NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
      );
      CREATE INDEX push_tasks_due ON push_tasks (next_attempt_at);
      CREATE TABLE push_dead_letters (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id uuid NOT NULL,
        conversation_id uuid NOT NULL,
        device_id uuid NOT NULL,
        platform text NOT NULL,
        seq bigint NOT NULL,
        attempts integer NOT NULL,
        reason text NOT NULL,
        failed_at bigint NOT NULL
      );
      CREATE INDEX push_dead_letters_newest ON push_dead_letters (failed_at DESC, position DESC);
    `,
  },
];

/** Advisory lock class of device registrations (the two-int key space: apart from migrations' one-bigint key). */
const DEVICE_LOCK_CLASS = 7106;
/** Longest reason kept in a dead letter or a task's last error. */
const REASON_MAX = 500;
/** SQLSTATEs after which a whole transaction may simply be run again. */
const RETRYABLE = new Set([UNIQUE_VIOLATION, "40P01", "40001"]);
const ATTEMPTS = 3;

interface DeviceRow {
  id: string;
  user_id: string;
  platform: Platform;
  app_id: string;
  token_key: string;
  p256dh: string;
  auth: string;
  label: string;
  created_at: number | string;
  updated_at: number | string;
}

const DEVICE = `id::text AS id, user_id::text AS user_id, platform, app_id, token_key, p256dh, auth, label, created_at, updated_at`;

function toDevice(r: DeviceRow): Device {
  return {
    deviceId: r.id,
    userId: r.user_id,
    platform: r.platform,
    appId: r.app_id,
    tokenKey: r.token_key,
    p256dh: r.p256dh,
    auth: r.auth,
    label: r.label,
    createdAtMs: Number(r.created_at),
    updatedAtMs: Number(r.updated_at),
  };
}

interface JobRow {
  conversation_id: string;
  kind: ConversationKind;
  first_seq: number | string;
  last_seq: number | string;
  count: number;
  message_id: string;
  sender_id: string;
  preview: string;
  recipient_ids: string[];
  due_at: number | string;
  claim_id: string;
}

const JOB = `j.conversation_id::text AS conversation_id, j.kind, j.first_seq, j.last_seq, j.count, j.message_id::text AS message_id,
  j.sender_id::text AS sender_id, j.preview, j.recipient_ids::text[] AS recipient_ids, j.due_at, j.claim_id::text AS claim_id`;

interface TaskRow {
  user_id: string;
  conversation_id: string;
  push_id: string;
  kind: ConversationKind;
  conversation_name: string;
  up_to_seq: number | string;
  count: number;
  message_id: string;
  sender_id: string;
  preview: string;
  device_ids: string[];
  attempts: number;
  next_attempt_at: number | string;
  last_error: string;
  claim_id: string;
}

const TASK = `t.user_id::text AS user_id, t.conversation_id::text AS conversation_id, t.push_id::text AS push_id, t.kind,
  t.conversation_name, t.up_to_seq, t.count, t.message_id::text AS message_id, t.sender_id::text AS sender_id, t.preview,
  t.device_ids::text[] AS device_ids, t.attempts, t.next_attempt_at, t.last_error, t.claim_id::text AS claim_id`;

function toTask(r: TaskRow): PushTask {
  return {
    userId: r.user_id,
    conversationId: r.conversation_id,
    pushId: r.push_id,
    kind: r.kind,
    conversationName: r.conversation_name,
    upToSeq: Number(r.up_to_seq),
    count: r.count,
    messageId: r.message_id,
    senderId: r.sender_id,
    preview: r.preview,
    deviceIds: r.device_ids,
    attempts: r.attempts,
    nextAttemptAtMs: Number(r.next_attempt_at),
    lastError: r.last_error,
    claimId: r.claim_id,
  };
}

function tokenHash(platform: Platform, tokenKey: string): Uint8Array {
  return createHash("sha256").update(`${platform}\0${tokenKey}`).digest();
}

function cut(s: string): string {
  return s.length > REASON_MAX ? `${s.slice(0, REASON_MAX - 1)}…` : s;
}

/** The PushStore on the Sql port: PGlite embedded, or a Postgres server. */
export class SqlPushStore implements PushStore {
  private constructor(private readonly sql: Sql) {}

  static async open(sql: Sql): Promise<SqlPushStore> {
    await migrate(sql, "notify", MIGRATIONS);
    return new SqlPushStore(sql);
  }

  /** Runs `fn` in a transaction, again when it hit a unique violation, deadlock or serialization failure. */
  private async retrying<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.sql.transaction(fn);
      } catch (err) {
        if (attempt >= ATTEMPTS || !RETRYABLE.has(sqlState(err) ?? "")) throw err;
      }
    }
  }

  // ---- devices

  registerDevice(d: NewDevice, o: { deviceId: string; maxPerUser: number; nowMs: number }): Promise<RegisterResult> {
    const hash = tokenHash(d.platform, d.tokenKey);
    return this.retrying(async (tx) => {
      // One registration per user at a time, so the count below holds until commit.
      await tx.query("SELECT pg_advisory_xact_lock($1::integer, hashtext($2::text))", [DEVICE_LOCK_CLASS, d.userId]);
      const existing = (
        await tx.query<{ id: string; user_id: string }>(
          `SELECT id::text AS id, user_id::text AS user_id FROM push_devices WHERE platform = $1 AND token_hash = $2 FOR UPDATE`,
          [d.platform, hash],
        )
      )[0];
      if (existing && existing.user_id === d.userId) {
        const rows = await tx.query<DeviceRow>(
          `UPDATE push_devices SET app_id = $2, token_key = $3, p256dh = $4, auth = $5, label = $6, updated_at = $7
           WHERE id = $1 RETURNING ${DEVICE}`,
          [existing.id, d.appId, d.tokenKey, d.p256dh, d.auth, d.label, o.nowMs],
        );
        return { device: toDevice(rows[0]!), created: false };
      }
      const [{ n }] = (await tx.query<{ n: number }>(
        `SELECT count(*)::integer AS n FROM push_devices WHERE user_id = $1`,
        [d.userId],
      )) as [{ n: number }];
      if (n >= o.maxPerUser) return { overCap: true };
      // Moving to another user: a new entry, so the old user's pending pushes never reach it.
      if (existing) await tx.query(`DELETE FROM push_devices WHERE id = $1`, [existing.id]);
      const rows = await tx.query<DeviceRow>(
        `INSERT INTO push_devices (id, user_id, platform, app_id, token_key, token_hash, p256dh, auth, label, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING ${DEVICE}`,
        [o.deviceId, d.userId, d.platform, d.appId, d.tokenKey, hash, d.p256dh, d.auth, d.label, o.nowMs],
      );
      return { device: toDevice(rows[0]!), created: true };
    });
  }

  async unregisterDevice(userId: string, deviceId: string): Promise<boolean> {
    const rows = await this.sql.query(`DELETE FROM push_devices WHERE id = $1 AND user_id = $2 RETURNING 1`, [deviceId, userId]);
    return rows.length > 0;
  }

  async listDevices(userId: string): Promise<Device[]> {
    const rows = await this.sql.query<DeviceRow>(
      `SELECT ${DEVICE} FROM push_devices WHERE user_id = $1 ORDER BY created_at, id`,
      [userId],
    );
    return rows.map(toDevice);
  }

  async devicesByIds(deviceIds: readonly string[]): Promise<Device[]> {
    if (deviceIds.length === 0) return [];
    const rows = await this.sql.query<DeviceRow>(`SELECT ${DEVICE} FROM push_devices WHERE id = ANY($1::uuid[])`, [deviceIds]);
    return rows.map(toDevice);
  }

  async removeDevices(devices: readonly { deviceId: string; updatedAtMs: number }[]): Promise<number> {
    if (devices.length === 0) return 0;
    const rows = await this.sql.query(
      `DELETE FROM push_devices d USING jsonb_to_recordset($1::jsonb) AS x(id uuid, updated_at bigint)
       WHERE d.id = x.id AND d.updated_at = x.updated_at RETURNING 1`,
      [JSON.stringify(devices.map((x) => ({ id: x.deviceId, updated_at: x.updatedAtMs })))],
    );
    return rows.length;
  }

  async usersWithDevices(userIds: readonly string[]): Promise<Set<string>> {
    if (userIds.length === 0) return new Set();
    const rows = await this.sql.query<{ user_id: string }>(
      `SELECT DISTINCT user_id::text AS user_id FROM push_devices WHERE user_id = ANY($1::uuid[])`,
      [userIds],
    );
    return new Set(rows.map((r) => r.user_id));
  }

  // ---- settings

  async getSettings(userId: string): Promise<Settings> {
    return (await this.settingsOf([userId])).get(userId) ?? { ...DEFAULT_SETTINGS };
  }

  async updateSettings(userId: string, change: SettingsChange, nowMs: number): Promise<Settings> {
    const setMute = change.mutedUntilMs !== undefined;
    const rows = await this.sql.query<{ privacy: Privacy; muted_until: number | string | null }>(
      `INSERT INTO notify_settings AS s (user_id, privacy, muted_until, updated_at)
       VALUES ($1, COALESCE($2, 'full'), CASE WHEN $3::boolean THEN $4::bigint ELSE NULL END, $5)
       ON CONFLICT (user_id) DO UPDATE SET
         privacy = COALESCE($2, s.privacy),
         muted_until = CASE WHEN $3::boolean THEN $4::bigint ELSE s.muted_until END,
         updated_at = $5
       RETURNING privacy, muted_until`,
      [userId, change.privacy ?? null, setMute, change.mutedUntilMs ?? null, nowMs],
    );
    const r = rows[0]!;
    return { privacy: r.privacy, mutedUntilMs: r.muted_until === null ? undefined : Number(r.muted_until) };
  }

  async settingsOf(userIds: readonly string[]): Promise<Map<string, Settings>> {
    const out = new Map<string, Settings>();
    if (userIds.length === 0) return out;
    const rows = await this.sql.query<{ user_id: string; privacy: Privacy; muted_until: number | string | null }>(
      `SELECT user_id::text AS user_id, privacy, muted_until FROM notify_settings WHERE user_id = ANY($1::uuid[])`,
      [userIds],
    );
    for (const id of userIds) out.set(id, { ...DEFAULT_SETTINGS });
    for (const r of rows) {
      out.set(r.user_id, { privacy: r.privacy, mutedUntilMs: r.muted_until === null ? undefined : Number(r.muted_until) });
    }
    return out;
  }

  // ---- jobs

  async addMessages(batches: readonly StoredBatch[], delayMs: number): Promise<number> {
    const merged = mergeByConversation(batches);
    // Direct conversations are most of the traffic: drop those whose recipients cannot get a push at all.
    const directRecipients = [...new Set(merged.filter((b) => b.kind === "direct").flatMap((b) => b.recipientIds))];
    const reachable = await this.usersWithDevices(directRecipients);
    const kept = merged.filter((b) => b.kind === "group" || b.recipientIds.some((u) => reachable.has(u)));
    if (kept.length === 0) return 0;
    const rows = kept.map((b) => ({
      conversation_id: b.conversationId,
      kind: b.kind,
      first_seq: b.firstSeq,
      last_seq: b.seq,
      count: b.count,
      message_id: b.messageId,
      sender_id: b.senderId,
      preview: b.preview,
      recipient_ids: b.recipientIds,
      due_at: b.firstStoredAtMs + delayMs,
    }));
    // One statement for the whole hand-over; rows in key order so concurrent writers cannot deadlock.
    await this.sql.query(
      `INSERT INTO push_jobs AS j (conversation_id, kind, first_seq, last_seq, count, message_id, sender_id, preview, recipient_ids, due_at)
       SELECT x.conversation_id, x.kind, x.first_seq, x.last_seq, x.count, x.message_id, x.sender_id, x.preview, x.recipient_ids, x.due_at
       FROM jsonb_to_recordset($1::jsonb) AS x(conversation_id uuid, kind text, first_seq bigint, last_seq bigint, count integer,
         message_id uuid, sender_id uuid, preview text, recipient_ids uuid[], due_at bigint)
       ORDER BY x.conversation_id
       ON CONFLICT (conversation_id) DO UPDATE SET
         count = j.count + CASE WHEN EXCLUDED.last_seq > j.last_seq THEN EXCLUDED.count ELSE 0 END,
         first_seq = LEAST(j.first_seq, EXCLUDED.first_seq),
         message_id = CASE WHEN EXCLUDED.last_seq > j.last_seq THEN EXCLUDED.message_id ELSE j.message_id END,
         sender_id = CASE WHEN EXCLUDED.last_seq > j.last_seq THEN EXCLUDED.sender_id ELSE j.sender_id END,
         preview = CASE WHEN EXCLUDED.last_seq > j.last_seq THEN EXCLUDED.preview ELSE j.preview END,
         kind = CASE WHEN EXCLUDED.last_seq > j.last_seq THEN EXCLUDED.kind ELSE j.kind END,
         recipient_ids = ARRAY(SELECT DISTINCT r FROM unnest(j.recipient_ids || EXCLUDED.recipient_ids) AS r ORDER BY r),
         due_at = LEAST(j.due_at, EXCLUDED.due_at),
         -- Newer messages while the job is claimed: the remainder is due when the first of them is.
         next_due_at = CASE WHEN j.claim_id IS NOT NULL AND EXCLUDED.last_seq > j.claimed_seq
           THEN LEAST(COALESCE(j.next_due_at, EXCLUDED.due_at), EXCLUDED.due_at) ELSE j.next_due_at END,
         last_seq = GREATEST(j.last_seq, EXCLUDED.last_seq)`,
      [JSON.stringify(rows)],
    );
    return kept.length;
  }

  async claimDueJobs(nowMs: number, leaseMs: number, limit: number, claimId: string): Promise<PushJob[]> {
    const rows = await this.sql.query<JobRow>(
      `UPDATE push_jobs j SET lease_until = $2, claim_id = $4, claimed_seq = j.last_seq, claimed_count = j.count, next_due_at = NULL
       FROM (SELECT conversation_id FROM push_jobs WHERE due_at <= $1 AND lease_until <= $1
             ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) d
       WHERE j.conversation_id = d.conversation_id
       RETURNING ${JOB}`,
      [nowMs, nowMs + leaseMs, limit, claimId],
    );
    return rows
      .map((r) => ({
        conversationId: r.conversation_id,
        kind: r.kind,
        firstSeq: Number(r.first_seq),
        lastSeq: Number(r.last_seq),
        count: r.count,
        messageId: r.message_id,
        senderId: r.sender_id,
        preview: r.preview,
        recipientIds: r.recipient_ids,
        dueAtMs: Number(r.due_at),
        claimId: r.claim_id,
      }))
      .sort((a, b) => a.dueAtMs - b.dueAtMs);
  }

  async pushableUsers(userIds: readonly string[], nowMs: number): Promise<Set<string>> {
    if (userIds.length === 0) return new Set();
    const rows = await this.sql.query<{ user_id: string }>(
      `SELECT DISTINCT d.user_id::text AS user_id FROM push_devices d
       LEFT JOIN notify_settings s ON s.user_id = d.user_id
       WHERE d.user_id = ANY($1::uuid[]) AND (s.muted_until IS NULL OR s.muted_until <= $2)`,
      [userIds, nowMs],
    );
    return new Set(rows.map((r) => r.user_id));
  }

  finishJob(job: PushJob, conversation: { name: string }, tasks: readonly TaskInput[], nowMs: number): Promise<FinishResult> {
    return this.retrying(async (tx) => {
      const held = await tx.query<{ last_seq: number | string }>(
        `SELECT last_seq FROM push_jobs WHERE conversation_id = $1 AND claim_id = $2 FOR UPDATE`,
        [job.conversationId, job.claimId],
      );
      if (held.length === 0) return { finished: false, pushes: 0 };
      let pushes = 0;
      for (let i = 0; i < tasks.length; i += 1000) {
        const chunk = tasks.slice(i, i + 1000).map((t) => ({ user_id: t.userId, push_id: t.pushId, count: t.count, unread: t.unread }));
        const rows = await tx.query(
          `INSERT INTO push_tasks AS t (user_id, conversation_id, push_id, kind, conversation_name, up_to_seq, count, message_id,
             sender_id, preview, device_ids, attempts, next_attempt_at, last_error, created_at)
           SELECT x.user_id, $2, x.push_id, $3, $4, $5,
             LEAST(COALESCE(o.count, 0) + x.count, GREATEST(x.unread, x.count)), $6, $7, $8,
             ARRAY(SELECT d.id FROM push_devices d WHERE d.user_id = x.user_id ORDER BY d.id), 0, $9, '', $9
           FROM jsonb_to_recordset($1::jsonb) AS x(user_id uuid, push_id uuid, count integer, unread bigint)
           LEFT JOIN push_tasks o ON o.user_id = x.user_id AND o.conversation_id = $2
           WHERE EXISTS (SELECT 1 FROM push_devices d WHERE d.user_id = x.user_id)
           ORDER BY x.user_id
           ON CONFLICT (user_id, conversation_id) DO UPDATE SET
             push_id = EXCLUDED.push_id,
             kind = EXCLUDED.kind,
             conversation_name = EXCLUDED.conversation_name,
             up_to_seq = GREATEST(t.up_to_seq, EXCLUDED.up_to_seq),
             count = EXCLUDED.count,
             message_id = EXCLUDED.message_id,
             sender_id = EXCLUDED.sender_id,
             preview = EXCLUDED.preview,
             device_ids = EXCLUDED.device_ids,
             attempts = 0,
             last_error = '',
             -- A task being sent keeps its lease: its sender sees the new push id and makes it due.
             next_attempt_at = CASE WHEN t.claim_id IS NULL THEN EXCLUDED.next_attempt_at ELSE t.next_attempt_at END
           RETURNING 1`,
          [JSON.stringify(chunk), job.conversationId, job.kind, conversation.name, job.lastSeq, job.messageId, job.senderId, job.preview, nowMs],
        );
        pushes += rows.length;
      }
      const lastSeq = Number(held[0]!.last_seq);
      if (lastSeq === job.lastSeq) {
        await tx.query(`DELETE FROM push_jobs WHERE conversation_id = $1`, [job.conversationId]);
      } else {
        // Messages arrived while the job was claimed: keep them as the job's remainder.
        await tx.query(
          `UPDATE push_jobs SET count = GREATEST(count - claimed_count, 1), first_seq = claimed_seq + 1,
             due_at = COALESCE(next_due_at, $2), next_due_at = NULL,
             lease_until = 0, claim_id = NULL, claimed_seq = NULL, claimed_count = NULL
           WHERE conversation_id = $1`,
          [job.conversationId, nowMs],
        );
      }
      return { finished: true, pushes };
    });
  }

  async releaseJob(job: PushJob, retryAtMs: number): Promise<void> {
    await this.sql.query(
      `UPDATE push_jobs SET lease_until = $3, claim_id = NULL, claimed_seq = NULL, claimed_count = NULL,
         due_at = LEAST(due_at, COALESCE(next_due_at, due_at)), next_due_at = NULL
       WHERE conversation_id = $1 AND claim_id = $2`,
      [job.conversationId, job.claimId, retryAtMs],
    );
  }

  // ---- tasks

  async claimDueTasks(nowMs: number, leaseMs: number, limit: number, claimId: string): Promise<PushTask[]> {
    const rows = await this.sql.query<TaskRow>(
      `UPDATE push_tasks t SET next_attempt_at = $2, claim_id = $4
       FROM (SELECT user_id, conversation_id FROM push_tasks WHERE next_attempt_at <= $1
             ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) d
       WHERE t.user_id = d.user_id AND t.conversation_id = d.conversation_id
       RETURNING ${TASK}`,
      [nowMs, nowMs + leaseMs, limit, claimId],
    );
    return rows.map(toTask);
  }

  async cancelTasks(tasks: readonly PushTask[], nowMs: number): Promise<number> {
    if (tasks.length === 0) return 0;
    const keys = JSON.stringify(
      tasks.map((t) => ({ user_id: t.userId, conversation_id: t.conversationId, push_id: t.pushId, claim_id: t.claimId })),
    );
    return this.retrying(async (tx) => {
      const deleted = await tx.query(
        `DELETE FROM push_tasks t USING jsonb_to_recordset($1::jsonb) AS x(user_id uuid, conversation_id uuid, push_id uuid, claim_id uuid)
         WHERE t.user_id = x.user_id AND t.conversation_id = x.conversation_id AND t.push_id = x.push_id AND t.claim_id = x.claim_id
         RETURNING 1`,
        [keys],
      );
      // Those that got new content meanwhile: due now, to be checked again.
      await tx.query(
        `UPDATE push_tasks t SET claim_id = NULL, next_attempt_at = $2
         FROM jsonb_to_recordset($1::jsonb) AS x(user_id uuid, conversation_id uuid, push_id uuid, claim_id uuid)
         WHERE t.user_id = x.user_id AND t.conversation_id = x.conversation_id AND t.claim_id = x.claim_id`,
        [keys, nowMs],
      );
      return deleted.length;
    });
  }

  completeTask(task: PushTask, outcome: CompleteTask, nowMs: number): Promise<void> {
    return this.retrying(async (tx) => {
      const rows = await tx.query<{ push_id: string; claim_id: string | null; attempts: number }>(
        `SELECT push_id::text AS push_id, claim_id::text AS claim_id, attempts FROM push_tasks
         WHERE user_id = $1 AND conversation_id = $2 FOR UPDATE`,
        [task.userId, task.conversationId],
      );
      const row = rows[0];
      if (!row || row.claim_id !== task.claimId) return; // done or taken over by another instance
      const key = [task.userId, task.conversationId];
      if (row.push_id !== task.pushId) {
        // New content arrived while this push was being sent: it goes to every device, now.
        await tx.query(`UPDATE push_tasks SET claim_id = NULL, next_attempt_at = $3 WHERE user_id = $1 AND conversation_id = $2`, [
          ...key,
          nowMs,
        ]);
        return;
      }
      if (outcome.deadLetters.length > 0) {
        await tx.query(
          `INSERT INTO push_dead_letters (user_id, conversation_id, device_id, platform, seq, attempts, reason, failed_at)
           SELECT $1, $2, x.device_id, x.platform, $3, $4, x.reason, $5
           FROM jsonb_to_recordset($6::jsonb) AS x(device_id uuid, platform text, reason text)`,
          [
            ...key,
            task.upToSeq,
            row.attempts + 1,
            nowMs,
            JSON.stringify(outcome.deadLetters.map((d) => ({ device_id: d.deviceId, platform: d.platform, reason: cut(d.reason) }))),
          ],
        );
      }
      if (outcome.retry.length === 0) {
        await tx.query(`DELETE FROM push_tasks WHERE user_id = $1 AND conversation_id = $2`, key);
      } else {
        await tx.query(
          `UPDATE push_tasks SET device_ids = $3::uuid[], attempts = attempts + 1, next_attempt_at = $4, last_error = $5, claim_id = NULL
           WHERE user_id = $1 AND conversation_id = $2`,
          [...key, outcome.retry, outcome.nextAttemptAtMs, cut(outcome.lastError)],
        );
      }
    });
  }

  // ---- dead letters, scheduling

  async listDeadLetters(limit: number): Promise<DeadLetter[]> {
    const rows = await this.sql.query<{
      user_id: string;
      conversation_id: string;
      device_id: string;
      platform: Platform;
      seq: number | string;
      attempts: number;
      reason: string;
      failed_at: number | string;
    }>(
      `SELECT user_id::text AS user_id, conversation_id::text AS conversation_id, device_id::text AS device_id, platform, seq,
         attempts, reason, failed_at
       FROM push_dead_letters ORDER BY failed_at DESC, position DESC LIMIT $1`,
      [limit],
    );
    return rows.map((r) => ({
      userId: r.user_id,
      conversationId: r.conversation_id,
      deviceId: r.device_id,
      platform: r.platform,
      seq: Number(r.seq),
      attempts: r.attempts,
      reason: r.reason,
      failedAtMs: Number(r.failed_at),
    }));
  }

  async pruneDeadLetters(beforeMs: number): Promise<number> {
    return (await this.sql.query(`DELETE FROM push_dead_letters WHERE failed_at < $1 RETURNING 1`, [beforeMs])).length;
  }

  async nextDueAtMs(): Promise<number | undefined> {
    const rows = await this.sql.query<{ at: number | string | null }>(
      `SELECT LEAST(
         (SELECT min(GREATEST(due_at, lease_until)) FROM push_jobs),
         (SELECT min(next_attempt_at) FROM push_tasks)) AS at`,
    );
    const at = rows[0]?.at;
    return at === null || at === undefined ? undefined : Number(at);
  }

  async close(): Promise<void> {}
}

interface MergedBatch extends StoredBatch {
  firstSeq: number;
}

/** One row per conversation (an INSERT … ON CONFLICT may not touch a row twice): the newest message, the counts summed. */
function mergeByConversation(batches: readonly StoredBatch[]): MergedBatch[] {
  const byConversation = new Map<string, MergedBatch>();
  const seen = new Set<string>();
  for (const b of [...batches].sort((x, y) => x.seq - y.seq)) {
    const firstSeq = Math.max(1, b.seq - b.count + 1);
    const prev = byConversation.get(b.conversationId);
    const dup = seen.has(`${b.conversationId}/${b.seq}`);
    seen.add(`${b.conversationId}/${b.seq}`);
    if (!prev) {
      byConversation.set(b.conversationId, { ...b, recipientIds: [...new Set(b.recipientIds)], firstSeq });
      continue;
    }
    byConversation.set(b.conversationId, {
      ...b,
      count: prev.count + (dup ? 0 : b.count),
      firstSeq: Math.min(prev.firstSeq, firstSeq),
      recipientIds: [...new Set([...prev.recipientIds, ...b.recipientIds])],
      firstStoredAtMs: Math.min(prev.firstStoredAtMs, b.firstStoredAtMs),
    });
  }
  return [...byConversation.values()];
}
