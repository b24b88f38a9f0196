import type {
  DeadLetter,
  Device,
  FinishResult,
  NewDevice,
  Platform,
  PushJob,
  PushTask,
  RegisterResult,
  Settings,
  SettingsChange,
  StoredBatch,
  TaskInput,
} from "./model.js";

/**
 * The notify service's storage port: push devices, notification settings, the durable
 * push pipeline (one open job per conversation, one task per user and conversation) and
 * dead letters. Time always comes from the caller (`nowMs`), never from the database, so
 * tests drive it and instances agree on it as far as their clocks do.
 *
 * Claims (`claimDueJobs`, `claimDueTasks`) are safe with several notify instances: a row
 * is handed to one claimer and stays invisible to others for the lease; a crashed
 * claimer's rows come back after it. Every write after a claim names the claim and does
 * nothing when another claimer took the row over meanwhile.
 */
export interface PushStore {
  // ---- devices

  /**
   * Registers a device, or updates it when the same platform and token (Web Push: the
   * endpoint) is registered already. Registered to another user before, it moves: the
   * old entry is deleted and a new one (id `deviceId`) made, so pushes of the old user
   * never reach it. `{ overCap: true }` (nothing written) when the user has `maxPerUser`
   * devices already and this one is not one of them.
   */
  registerDevice(device: NewDevice, o: { deviceId: string; maxPerUser: number; nowMs: number }): Promise<RegisterResult>;
  /** False when the user has no device with this id. */
  unregisterDevice(userId: string, deviceId: string): Promise<boolean>;
  /** The user's devices, oldest first. */
  listDevices(userId: string): Promise<Device[]>;
  /** The devices with these ids that exist (any order). */
  devicesByIds(deviceIds: readonly string[]): Promise<Device[]>;
  /**
   * Removes devices a provider reported invalid, unless they were registered again
   * since they were read (`updatedAtMs` differs). Returns how many were removed.
   */
  removeDevices(devices: readonly { deviceId: string; updatedAtMs: number }[]): Promise<number>;
  /** Of `userIds`, those with at least one push device. */
  usersWithDevices(userIds: readonly string[]): Promise<Set<string>>;

  // ---- settings

  getSettings(userId: string): Promise<Settings>;
  updateSettings(userId: string, change: SettingsChange, nowMs: number): Promise<Settings>;
  /** Settings of these users (defaults for those without a row). */
  settingsOf(userIds: readonly string[]): Promise<Map<string, Settings>>;

  // ---- jobs

  /**
   * Merges stored messages into their conversations' open jobs, creating a job due at
   * `firstStoredAtMs + delayMs` when there is none (merging never moves a due time).
   * Direct conversations whose recipients have no push device are dropped first (one
   * query). A batch not newer than its job's last seq (a retried hand-over) adds nothing.
   * Returns how many conversations got (or joined) a job.
   */
  addMessages(batches: readonly StoredBatch[], delayMs: number): Promise<number>;
  /** Claims up to `limit` due, unclaimed jobs for `leaseMs` (earliest due first). */
  claimDueJobs(nowMs: number, leaseMs: number, limit: number, claimId: string): Promise<PushJob[]>;
  /** Of `userIds`, those with push devices and not muted ("do not disturb") at `nowMs`. */
  pushableUsers(userIds: readonly string[], nowMs: number): Promise<Set<string>>;
  /**
   * In one transaction: creates or merges the tasks of a claimed job's users (users
   * without devices by now are skipped) and finishes the job. When messages were merged
   * into the job while it was claimed, it stays with the remainder (the count less the
   * claimed count, first seq after the claimed last seq), due when the first of those
   * is. Does nothing when the claim was lost.
   */
  finishJob(job: PushJob, conversation: { name: string }, tasks: readonly TaskInput[], nowMs: number): Promise<FinishResult>;
  /** Gives a claimed job back, due again at `retryAtMs` (e.g. groups was unreachable). */
  releaseJob(job: PushJob, retryAtMs: number): Promise<void>;

  // ---- tasks

  /** Claims up to `limit` tasks whose next attempt is due, for `leaseMs` (earliest first). */
  claimDueTasks(nowMs: number, leaseMs: number, limit: number, claimId: string): Promise<PushTask[]>;
  /**
   * Deletes claimed tasks that must not be sent (read, received, muted). A task that got
   * new content meanwhile (another push id) is not deleted but made due at `nowMs`.
   * Returns how many were deleted.
   */
  cancelTasks(tasks: readonly PushTask[], nowMs: number): Promise<number>;
  /**
   * Records how the sends of a claimed task ended, in one transaction: the task keeps the
   * `retry` devices (attempts + 1, next attempt at `nextAttemptAtMs`) or is deleted when
   * none is left; `deadLetters` are written. When the task got new content meanwhile
   * (another push id) only the dead letters are dropped and it is made due at `nowMs`;
   * when the claim was lost nothing is written.
   */
  completeTask(task: PushTask, outcome: CompleteTask, nowMs: number): Promise<void>;

  // ---- dead letters, scheduling

  /** Newest first. */
  listDeadLetters(limit: number): Promise<DeadLetter[]>;
  /** Deletes dead letters older than `beforeMs`; returns how many. */
  pruneDeadLetters(beforeMs: number): Promise<number>;
  /** The earliest time a job or task may be claimed, or undefined when there is none. */
  nextDueAtMs(): Promise<number | undefined>;
  close(): Promise<void>;
}

export interface CompleteTask {
  /** Devices still to be tried. */
  retry: string[];
  nextAttemptAtMs: number;
  /** Why the last attempt of the `retry` devices failed. */
  lastError: string;
  deadLetters: { deviceId: string; platform: Platform; reason: string }[];
}
