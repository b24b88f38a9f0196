import type { Discovery, Instance, ServiceKind } from "./discovery.js";

/** Discovery from a fixed table (the embedded platform, or addresses given by configuration). */
export class StaticDiscovery implements Discovery {
  private readonly byKind = new Map<ServiceKind, Instance[]>();

  constructor(instances: readonly Instance[] = []) {
    for (const i of instances) this.add(i);
  }

  add(instance: Instance): void {
    const list = this.byKind.get(instance.kind) ?? [];
    this.byKind.set(instance.kind, [...list.filter((i) => i.id !== instance.id), instance]);
  }

  resolve(kind: ServiceKind, id: string): Instance | undefined {
    return this.byKind.get(kind)?.find((i) => i.id === id);
  }

  list(kind: ServiceKind): readonly Instance[] {
    return this.byKind.get(kind) ?? [];
  }
}
