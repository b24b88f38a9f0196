import type { Instance } from "../../../lib/discovery/discovery.js";

export interface RouterConfig {
  host: string;
  port: number;
  groupsUrl: string;
  messagestoreUrl: string;
  notifyUrl: string;
  /** Gateways known up front (static discovery): `id=url,id=url`. */
  gateways: Instance[];
  membershipCacheEntries: number;
  groupMembershipTtlMs: number;
  logLevel: string;
}

export function parseGateways(spec: string | undefined): Instance[] {
  if (!spec) return [];
  return spec.split(",").map((part) => {
    const eq = part.indexOf("=");
    if (eq <= 0) throw new Error(`PARLEY_GATEWAYS: expected id=url, got "${part}"`);
    const url = part.slice(eq + 1);
    new URL(url); // throws on a malformed URL
    return { kind: "gateway" as const, id: part.slice(0, eq), url };
  });
}

export function loadConfig(env: Record<string, string | undefined>): RouterConfig {
  const port = Number(env.PARLEY_ROUTER_PORT ?? 7102);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PARLEY_ROUTER_PORT: bad port ${env.PARLEY_ROUTER_PORT}`);
  return {
    host: env.PARLEY_HOST ?? "127.0.0.1",
    port,
    groupsUrl: env.PARLEY_GROUPS_URL ?? "http://127.0.0.1:7105",
    messagestoreUrl: env.PARLEY_MESSAGESTORE_URL ?? "http://127.0.0.1:7103",
    notifyUrl: env.PARLEY_NOTIFY_URL ?? "http://127.0.0.1:7106",
    gateways: parseGateways(env.PARLEY_GATEWAYS),
    membershipCacheEntries: Number(env.PARLEY_ROUTER_MEMBERSHIP_CACHE ?? 100_000),
    groupMembershipTtlMs: 30_000,
    logLevel: env.PARLEY_LOG_LEVEL ?? "info",
  };
}
