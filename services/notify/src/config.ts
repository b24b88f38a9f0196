import { join } from "node:path";
import { ConfigError, envInt, envPort, envString, type Env } from "../../../lib/env.js";
import { postgresUrlFromEnv } from "../../../lib/sql.js";
import { loadApnsConfig, type ApnsConfig } from "./providers/apns.js";
import { loadFcmConfig, type FcmConfig } from "./providers/fcm.js";
import { loadWebhookConfig, type WebhookConfig } from "./providers/webhook.js";
import { loadWebPushConfig, type WebPushConfig } from "./providers/webpush.js";
import { parseHostPatterns } from "./webpush-hosts.js";

/** The big browser push services: the Web Push endpoints accepted by default. */
export const DEFAULT_WEBPUSH_ALLOWED_HOSTS = [
  "fcm.googleapis.com",
  "updates.push.services.mozilla.com",
  "*.push.apple.com",
  "*.notify.windows.com",
] as const;

export interface ProviderConfigs {
  fcm: FcmConfig | undefined;
  apns: ApnsConfig | undefined;
  webpush: WebPushConfig | undefined;
  webhook: WebhookConfig | undefined;
}

export interface NotifyConfig {
  host: string;
  port: number;
  /** PGlite directory when no shared database is passed in. */
  dataDir: string;
  /** `PARLEY_POSTGRES_URL`: a Postgres server instead of PGlite. */
  postgresUrl: string | undefined;
  /** `PARLEY_SESSION_URL`: the session service (sender display names), when there is no discovery. */
  sessionUrl: string;
  /** `PARLEY_GROUPS_URL`: the groups service (push candidates), when there is no discovery. */
  groupsUrl: string;
  /** `PARLEY_NOTIFY_DELAY_MS`: how long after a conversation's first pending message its push job is due; also the collapse window. */
  delayMs: number;
  /** `PARLEY_NOTIFY_MAX_ATTEMPTS`: sends of one push to one device before it is dead-lettered. */
  maxAttempts: number;
  /** `PARLEY_NOTIFY_RETRY_BASE_MS`: base of the exponential backoff between attempts. */
  retryBaseMs: number;
  /** `PARLEY_NOTIFY_RETRY_MAX_MS`: longest backoff between two attempts. */
  retryMaxMs: number;
  /** `PARLEY_NOTIFY_LEASE_MS`: how long a claimed job or push is invisible to other instances (a crashed instance's work comes back after it). */
  leaseMs: number;
  /** `PARLEY_NOTIFY_POLL_MS`: longest sleep of the pipeline (other instances may have made work due). */
  pollMs: number;
  /** `PARLEY_NOTIFY_MAX_DEVICES`: most push devices of one user. */
  maxDevicesPerUser: number;
  /** `PARLEY_NOTIFY_REQUIRE_PROVIDERS`: refuse devices of unconfigured platforms instead of serving them with the log sender. */
  requireProviders: boolean;
  /** `PARLEY_WEBPUSH_ALLOWED_HOSTS`: host names (`*.` wildcards) Web Push endpoints may point at. */
  webPushAllowedHosts: string[];
  providers: ProviderConfigs;
  logLevel: string;
}

export function loadConfig(env: Env): NotifyConfig {
  const cfg: NotifyConfig = {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_NOTIFY_PORT", 7106),
    dataDir: join(envString(env, "PARLEY_DATA_DIR", "data"), "notify"),
    postgresUrl: postgresUrlFromEnv(env),
    sessionUrl: envString(env, "PARLEY_SESSION_URL", "http://127.0.0.1:7101"),
    groupsUrl: envString(env, "PARLEY_GROUPS_URL", "http://127.0.0.1:7105"),
    delayMs: envInt(env, "PARLEY_NOTIFY_DELAY_MS", 2000, 0, 3_600_000),
    maxAttempts: envInt(env, "PARLEY_NOTIFY_MAX_ATTEMPTS", 8, 1, 100),
    retryBaseMs: envInt(env, "PARLEY_NOTIFY_RETRY_BASE_MS", 1000, 1, 3_600_000),
    retryMaxMs: envInt(env, "PARLEY_NOTIFY_RETRY_MAX_MS", 300_000, 1, 86_400_000),
    leaseMs: envInt(env, "PARLEY_NOTIFY_LEASE_MS", 30_000, 1000, 3_600_000),
    pollMs: envInt(env, "PARLEY_NOTIFY_POLL_MS", 1000, 10, 600_000),
    maxDevicesPerUser: envInt(env, "PARLEY_NOTIFY_MAX_DEVICES", 20, 1, 1000),
    requireProviders: envBool(env, "PARLEY_NOTIFY_REQUIRE_PROVIDERS", false),
    webPushAllowedHosts: parseHostPatterns(
      "PARLEY_WEBPUSH_ALLOWED_HOSTS",
      envString(env, "PARLEY_WEBPUSH_ALLOWED_HOSTS", DEFAULT_WEBPUSH_ALLOWED_HOSTS.join(",")),
    ),
    providers: {
      fcm: loadFcmConfig(env),
      apns: loadApnsConfig(env),
      webpush: loadWebPushConfig(env),
      webhook: loadWebhookConfig(env),
    },
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
  if (cfg.retryMaxMs < cfg.retryBaseMs) {
    throw new ConfigError(
      `PARLEY_NOTIFY_RETRY_MAX_MS (${cfg.retryMaxMs}) must not be below PARLEY_NOTIFY_RETRY_BASE_MS (${cfg.retryBaseMs})`,
    );
  }
  return cfg;
}

function envBool(env: Env, name: string, def: boolean): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (raw === undefined || raw === "") return def;
  if (["1", "true", "yes", "on"].includes(raw)) return true;
  if (["0", "false", "no", "off"].includes(raw)) return false;
  throw new ConfigError(`${name}: must be true or false, got "${env[name]}"`);
}
