import type { Discovery, Instance, Registrar, Registration, ServiceKind } from "./discovery.js";

/**
 * Discovery from a table in memory: the embedded platform (one process), or addresses
 * given by configuration. `register` adds to the table, so tests and the one-process
 * platform can use the same code paths as a cluster.
 */
export class StaticDiscovery implements Discovery, Registrar {
  private readonly byKind = new Map<ServiceKind, Instance[]>();
  private readonly listeners = new Map<ServiceKind, Set<() => void>>();

  constructor(instances: readonly Instance[] = []) {
    for (const i of instances) this.add(i);
  }

  add(instance: Instance): void {
    const list = this.byKind.get(instance.kind) ?? [];
    this.byKind.set(instance.kind, [...list.filter((i) => i.id !== instance.id), instance]);
    this.changed(instance.kind);
  }

  remove(kind: ServiceKind, id: string): void {
    this.byKind.set(kind, (this.byKind.get(kind) ?? []).filter((i) => i.id !== id));
    this.changed(kind);
  }

  resolve(kind: ServiceKind, id: string): Instance | undefined {
    return this.byKind.get(kind)?.find((i) => i.id === id);
  }

  list(kind: ServiceKind): readonly Instance[] {
    return this.byKind.get(kind) ?? [];
  }

  watch(kind: ServiceKind, listener: () => void): () => void {
    let set = this.listeners.get(kind);
    if (!set) this.listeners.set(kind, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  async register(instance: Instance): Promise<Registration> {
    this.add(instance);
    return {
      setLoad: (load) => {
        const current = this.resolve(instance.kind, instance.id);
        if (current) this.add({ ...current, load });
      },
      close: async () => this.remove(instance.kind, instance.id),
    };
  }

  private changed(kind: ServiceKind): void {
    for (const l of this.listeners.get(kind) ?? []) l();
  }
}

/** Gateways known up front, from `PARLEY_GATEWAYS` (`id=url,id=url`), for static discovery. */
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
