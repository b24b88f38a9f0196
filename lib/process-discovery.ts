import type { Discovery, Instance, Registrar, Registration, ServiceKind } from "./discovery/discovery.js";
import { EtcdDiscovery } from "./discovery/discovery-etcd.js";
import { balancedTransport } from "./balancer.js";
import { envInt, envString, type Env } from "./env.js";
import type { Logger } from "./logger.js";
import { dialGrpc, type OwnedTransport } from "./rpc.js";

export interface DiscoveryConfig {
  /** etcd endpoints; empty → no discovery (peers at fixed URLs). */
  etcdEndpoints: string[];
  etcdPrefix: string;
  leaseTtlSeconds: number;
  /** This instance's id; default `<kind>-<host>-<port>`. */
  instanceId: string | undefined;
}

export function discoveryConfig(env: Env): DiscoveryConfig {
  return {
    etcdEndpoints: envString(env, "PARLEY_ETCD_ENDPOINTS", "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    etcdPrefix: envString(env, "PARLEY_ETCD_PREFIX", "/parley"),
    leaseTtlSeconds: envInt(env, "PARLEY_DISCOVERY_TTL_SECONDS", 5, 2, 3600),
    instanceId: env.PARLEY_INSTANCE_ID?.trim() || undefined,
  };
}

export type ProcessDiscovery = Discovery & Registrar & { close(): Promise<void> };

/** The discovery of a process: etcd when configured, else none. */
export async function openDiscovery(cfg: DiscoveryConfig, logger: Logger): Promise<ProcessDiscovery | undefined> {
  if (cfg.etcdEndpoints.length === 0) return undefined;
  return EtcdDiscovery.open({
    endpoints: cfg.etcdEndpoints,
    prefix: cfg.etcdPrefix,
    leaseTtlSeconds: cfg.leaseTtlSeconds,
    logger,
  });
}

/**
 * How a process reaches the instances of one kind: through discovery (balanced over the
 * live instances, by conversation where the call has one) when there is discovery,
 * else one connection to the fixed URL.
 */
export function peer(kind: ServiceKind, url: string, discovery: Discovery | undefined): OwnedTransport {
  return discovery ? balancedTransport(discovery, kind, (u) => dialGrpc(u)) : dialGrpc(url);
}

export function registerSelf(
  discovery: Registrar | undefined,
  cfg: DiscoveryConfig,
  instance: Omit<Instance, "id"> & { host: string; port: number },
): Promise<Registration | undefined> {
  if (!discovery) return Promise.resolve(undefined);
  const { host, port, ...rest } = instance;
  return discovery.register({ ...rest, id: cfg.instanceId ?? `${instance.kind}-${host}-${port}` });
}
