export interface NotifyConfig {
  host: string;
  port: number;
  logLevel: string;
}

export function loadConfig(env: Record<string, string | undefined>): NotifyConfig {
  const port = Number(env.PARLEY_NOTIFY_PORT ?? 7106);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PARLEY_NOTIFY_PORT: bad port ${env.PARLEY_NOTIFY_PORT}`);
  return { host: env.PARLEY_HOST ?? "127.0.0.1", port, logLevel: env.PARLEY_LOG_LEVEL ?? "info" };
}
