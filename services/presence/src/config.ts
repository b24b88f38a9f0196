export interface PresenceConfig {
  host: string;
  port: number;
  /** A user stays online this long after the last gateway report that listed them. */
  ttlMs: number;
  logLevel: string;
}

export function loadConfig(env: Record<string, string | undefined>): PresenceConfig {
  const port = Number(env.PARLEY_PRESENCE_PORT ?? 7104);
  const ttlSeconds = Number(env.PARLEY_PRESENCE_TTL_SECONDS ?? 60);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PARLEY_PRESENCE_PORT: bad port ${env.PARLEY_PRESENCE_PORT}`);
  if (!(ttlSeconds > 0)) throw new Error(`PARLEY_PRESENCE_TTL_SECONDS must be positive`);
  return { host: env.PARLEY_HOST ?? "127.0.0.1", port, ttlMs: ttlSeconds * 1000, logLevel: env.PARLEY_LOG_LEVEL ?? "info" };
}
