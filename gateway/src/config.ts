import { ConfigError, envInt as int, type Env } from "../../lib/env.js";
import { DEFAULT_REGISTRY_REFRESH_MS, DEFAULT_REGISTRY_TTL_MS } from "../../lib/registry/connection-registry.js";
import { redisPrefixFrom, redisUrlFrom } from "../../lib/redis.js";

export interface GatewayConfig {
  /** Unique among live gateways; the registry points at it. */
  id: string;
  host: string;
  /** `PARLEY_ADVERTISE_HOST`: the host in the URLs this gateway registers (default `host`; a pod binding 0.0.0.0 gives its IP). */
  advertiseHost: string;
  /** `PARLEY_GATEWAY_PUBLIC_URL`: the URL clients reach this gateway at, when not `http://<advertise host>:<public port>` (behind a proxy or a port forward). */
  publicUrl: string | undefined;
  /** The public port: WebSocket at /ws and the Connect API. */
  publicPort: number;
  /** The internal gRPC port serving DeliveryService to routers. */
  internalPort: number;
  /** Browser origins allowed to open a WebSocket; `scheme://host:*` allows any port. Clients without an Origin header (native apps) are always allowed. */
  allowedOrigins: string[];
  /** Frames up to this size are processed; larger ones get an error frame and the connection stays. */
  maxFrameBytes: number;
  /** Frames above this size violate the protocol: the connection is dropped (clients see 1006). */
  hardMaxFrameBytes: number;
  maxRequestBytes: number;
  idleTimeoutSeconds: number;
  /** Bytes queued for a slow client before the gateway closes it (4008). */
  maxBackpressureBytes: number;
  /** Frames a connection may send per second (sustained) and in a burst. */
  framesPerSecond: number;
  frameBurst: number;
  /** Sends one connection may have waiting for an ack. */
  maxInFlightSends: number;
  presenceIntervalMs: number;
  /** A connection without user activity this long counts as AWAY (checked every presence interval). */
  presenceAwayAfterMs: number;
  /** `PARLEY_REDIS_URL`: the connection registry lives in Redis; unset → in memory (one process). */
  redisUrl: string | undefined;
  redisPrefix: string;
  /** Registry entries of this gateway vanish this long after its last refresh (it died). */
  registryTtlMs: number;
  /** How often the gateway refreshes all its registry entries (one call for all). */
  registryRefreshMs: number;
  /** Resume: messages per GetRange call (1..1,000). */
  resumePageSize: number;
  /** Resume: GetRange calls in flight per resuming connection. */
  resumeFetchAhead: number;
  /**
   * Resume: it writes while the socket buffers less than this (bytes), then waits for the
   * socket to drain. Default: an eighth of maxBackpressureBytes.
   */
  resumeBufferBytes: number;
  /**
   * Resume: live frames held back per resuming connection (bytes); past it the resume
   * ends with complete=false. Default: a quarter of maxBackpressureBytes.
   */
  resumeHoldBytes: number;
  /** Least time between two read-cursor updates of this gateway (own sends count as read). */
  readCursorIntervalMs: number;
  sessionUrl: string;
  routerUrl: string;
  groupsUrl: string;
  messagestoreUrl: string;
  presenceUrl: string;
  notifyUrl: string;
  logLevel: string;
}

export function loadConfig(env: Env): GatewayConfig {
  const cfg: GatewayConfig = {
    id: env.PARLEY_GATEWAY_ID ?? "gw-1",
    host: env.PARLEY_HOST ?? "127.0.0.1",
    advertiseHost: env.PARLEY_ADVERTISE_HOST ?? env.PARLEY_HOST ?? "127.0.0.1",
    publicUrl: env.PARLEY_GATEWAY_PUBLIC_URL?.trim() || undefined,
    publicPort: int(env, "PARLEY_GATEWAY_PORT", 7000, 0, 65535),
    internalPort: int(env, "PARLEY_GATEWAY_INTERNAL_PORT", 7200, 0, 65535),
    allowedOrigins: (env.PARLEY_ALLOWED_ORIGINS ?? "http://localhost:*,http://127.0.0.1:*")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    maxFrameBytes: int(env, "PARLEY_MAX_FRAME_BYTES", 16 * 1024, 1024, 1 << 20),
    hardMaxFrameBytes: int(env, "PARLEY_HARD_MAX_FRAME_BYTES", 64 * 1024, 1024, 16 << 20),
    maxRequestBytes: int(env, "PARLEY_MAX_REQUEST_BYTES", 64 * 1024, 1024, 16 << 20),
    idleTimeoutSeconds: int(env, "PARLEY_IDLE_TIMEOUT_SECONDS", 60, 8, 960),
    maxBackpressureBytes: int(env, "PARLEY_MAX_BACKPRESSURE_BYTES", 1 << 20, 1024, 1 << 30),
    framesPerSecond: int(env, "PARLEY_FRAMES_PER_SECOND", 100, 1, 1_000_000),
    frameBurst: int(env, "PARLEY_FRAME_BURST", 500, 1, 1_000_000),
    maxInFlightSends: int(env, "PARLEY_MAX_INFLIGHT_SENDS", 256, 1, 100_000),
    presenceIntervalMs: int(env, "PARLEY_PRESENCE_REPORT_MS", 30_000, 100, 3_600_000),
    presenceAwayAfterMs: int(env, "PARLEY_PRESENCE_AWAY_AFTER_MS", 300_000, 100, 86_400_000),
    redisUrl: redisUrlFrom(env),
    redisPrefix: redisPrefixFrom(env),
    registryTtlMs: int(env, "PARLEY_REGISTRY_TTL_SECONDS", DEFAULT_REGISTRY_TTL_MS / 1000, 1, 86_400) * 1000,
    registryRefreshMs: int(env, "PARLEY_REGISTRY_REFRESH_MS", DEFAULT_REGISTRY_REFRESH_MS, 100, 86_400_000),
    readCursorIntervalMs: int(env, "PARLEY_READ_CURSOR_INTERVAL_MS", 500, 0, 60_000),
    resumePageSize: int(env, "PARLEY_RESUME_PAGE_SIZE", 200, 1, 1000),
    resumeFetchAhead: int(env, "PARLEY_RESUME_FETCH_AHEAD", 4, 1, 64),
    resumeBufferBytes: 0,
    resumeHoldBytes: 0,
    sessionUrl: env.PARLEY_SESSION_URL ?? "http://127.0.0.1:7101",
    routerUrl: env.PARLEY_ROUTER_URL ?? "http://127.0.0.1:7102",
    messagestoreUrl: env.PARLEY_MESSAGESTORE_URL ?? "http://127.0.0.1:7103",
    presenceUrl: env.PARLEY_PRESENCE_URL ?? "http://127.0.0.1:7104",
    groupsUrl: env.PARLEY_GROUPS_URL ?? "http://127.0.0.1:7105",
    notifyUrl: env.PARLEY_NOTIFY_URL ?? "http://127.0.0.1:7106",
    logLevel: env.PARLEY_LOG_LEVEL ?? "info",
  };
  cfg.resumeBufferBytes = int(env, "PARLEY_RESUME_BUFFER_BYTES", Math.floor(cfg.maxBackpressureBytes / 8), 256, 1 << 30);
  cfg.resumeHoldBytes = int(env, "PARLEY_RESUME_HOLD_BYTES", Math.floor(cfg.maxBackpressureBytes / 4), 256, 1 << 30);
  // A resume's writes (up to two buffer bounds: one waiting, one batch) plus the held
  // frames written at its end must fit below the slow-consumer limit.
  if (2 * cfg.resumeBufferBytes + cfg.resumeHoldBytes > cfg.maxBackpressureBytes) {
    throw new ConfigError("2 × PARLEY_RESUME_BUFFER_BYTES + PARLEY_RESUME_HOLD_BYTES must not exceed PARLEY_MAX_BACKPRESSURE_BYTES");
  }
  if (cfg.hardMaxFrameBytes < cfg.maxFrameBytes) throw new Error("PARLEY_HARD_MAX_FRAME_BYTES must be at least PARLEY_MAX_FRAME_BYTES");
  if (cfg.registryRefreshMs >= cfg.registryTtlMs) {
    throw new ConfigError("PARLEY_REGISTRY_REFRESH_MS must be below PARLEY_REGISTRY_TTL_SECONDS (a third of it is a good choice)");
  }

  return cfg;
}

/** Whether a browser Origin may connect. */
export function originAllowed(origin: string, allowed: readonly string[]): boolean {
  if (origin === "") return true; // not a browser
  for (const a of allowed) {
    if (a === "*" || a === origin) return true;
    if (a.endsWith(":*")) {
      const base = a.slice(0, -2);
      if (origin === base || (origin.startsWith(base + ":") && /^\d+$/.test(origin.slice(base.length + 1)))) return true;
    }
  }
  return false;
}
