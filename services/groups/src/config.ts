import { join } from "node:path";

export interface GroupsConfig {
  host: string;
  port: number;
  /** PGlite directory when no shared database is passed in. */
  dataDir: string;
  logLevel: string;
}

export function loadConfig(env: Record<string, string | undefined>): GroupsConfig {
  const port = Number(env.PARLEY_GROUPS_PORT ?? 7105);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PARLEY_GROUPS_PORT: bad port ${env.PARLEY_GROUPS_PORT}`);
  return {
    host: env.PARLEY_HOST ?? "127.0.0.1",
    port,
    dataDir: join(env.PARLEY_DATA_DIR ?? "data", "groups"),
    logLevel: env.PARLEY_LOG_LEVEL ?? "info",
  };
}
