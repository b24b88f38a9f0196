import { Etcd3, type IKeyValue, type Lease, type Watcher } from "etcd3";
import type { Logger } from "../logger.js";
import { backendCall } from "../telemetry/backend.js";
import type { Discovery, Instance, Registrar, Registration, ServiceKind } from "./discovery.js";

export interface EtcdDiscoveryOptions {
  /** e.g. ["http://127.0.0.1:2379"] */
  endpoints: string[];
  /** Key prefix of this Parley deployment (tests use a random one). */
  prefix?: string;
  /** Lease TTL of registrations: a dead instance disappears after about this long (etcd's minimum is ~2 s). */
  leaseTtlSeconds?: number;
  /** How long open() waits for etcd before failing. */
  connectTimeoutMs?: number;
  logger?: Logger;
}

/**
 * Discovery on etcd. Each instance is a key `<prefix>/instances/<kind>/<id>` holding its
 * addresses and load, attached to a lease the instance keeps alive: when the process
 * dies, the lease expires and the key goes away. Readers keep a local view from one
 * range read plus a watch on the prefix, so `resolve`/`list` never wait on etcd; when
 * etcd is unreachable the last known view keeps serving.
 */
export class EtcdDiscovery implements Discovery, Registrar {
  private readonly view = new Map<string, Instance>();
  private readonly listeners = new Map<ServiceKind, Set<() => void>>();
  private watcher: Watcher | undefined;
  private closed = false;
  /** One round trip to etcd (readiness). */
  async ping(): Promise<void> {
    await this.client.maintenance.status();
  }

  /** Leases of registrations still open: close() stops keeping them alive. */
  private readonly leases = new Set<Lease>();

  private constructor(
    private readonly client: Etcd3,
    private readonly root: string,
    private readonly ttl: number,
    private readonly logger: Logger | undefined,
  ) {}

  static async open(o: EtcdDiscoveryOptions): Promise<EtcdDiscovery> {
    const client = new Etcd3({
      hosts: o.endpoints,
      dialTimeout: 2000,
      defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + 3000 }),
    });
    const d = new EtcdDiscovery(client, `${o.prefix ?? "/parley"}/instances/`, o.leaseTtlSeconds ?? 5, o.logger);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`etcd unreachable at ${o.endpoints.join(",")}`)), o.connectTimeoutMs ?? 5000);
    });
    try {
      await Promise.race([d.start(), deadline]);
    } catch (err) {
      await d.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return d;
  }

  private async start(): Promise<void> {
    // A plain read first: when etcd is down it fails, and no watch is left retrying.
    await etcdCall("get", () => this.client.get(this.root).string());
    if (this.closed) return;
    this.watcher = await this.client.watch().prefix(this.root).create();
    this.watcher.on("put", (kv) => this.apply(kv, false));
    this.watcher.on("delete", (kv) => this.apply(kv, true));
    // After a reconnect the watch resumes from its last revision; a full read
    // also repairs anything missed if that revision was compacted.
    this.watcher.on("connected", () => void this.resync());
    this.watcher.on("error", (err) => this.logger?.warn({ err }, "etcd watch error"));
    await this.resync();
  }

  private async resync(): Promise<void> {
    try {
      const all = await etcdCall("range", () => this.client.getAll().prefix(this.root).strings());
      const seen = new Set<string>();
      const kinds = new Set<ServiceKind>();
      for (const [key, value] of Object.entries(all)) {
        const inst = this.parse(key, value);
        if (!inst) continue;
        seen.add(key);
        this.view.set(key, inst);
        kinds.add(inst.kind);
      }
      for (const [key, inst] of this.view) {
        if (seen.has(key)) continue;
        this.view.delete(key);
        kinds.add(inst.kind);
      }
      for (const k of kinds) this.changed(k);
    } catch (err) {
      this.logger?.warn({ err }, "etcd resync failed; serving the last known instances");
    }
  }

  private apply(kv: IKeyValue, deleted: boolean): void {
    const key = kv.key.toString();
    if (deleted) {
      const old = this.view.get(key);
      if (!old) return;
      this.view.delete(key);
      this.changed(old.kind);
      return;
    }
    const inst = this.parse(key, kv.value.toString());
    if (!inst) return;
    this.view.set(key, inst);
    this.changed(inst.kind);
  }

  private parse(key: string, value: string): Instance | undefined {
    const [kind, id] = key.slice(this.root.length).split("/");
    if (!kind || !id) return undefined;
    try {
      const v = JSON.parse(value) as Omit<Instance, "kind" | "id">;
      if (typeof v.url !== "string") return undefined;
      return { kind: kind as ServiceKind, id, url: v.url, publicUrl: v.publicUrl, load: v.load };
    } catch {
      this.logger?.warn({ key }, "ignoring a malformed discovery entry");
      return undefined;
    }
  }

  resolve(kind: ServiceKind, id: string): Instance | undefined {
    return this.view.get(`${this.root}${kind}/${id}`);
  }

  list(kind: ServiceKind): readonly Instance[] {
    const out: Instance[] = [];
    const p = `${this.root}${kind}/`;
    for (const [key, inst] of this.view) if (key.startsWith(p)) out.push(inst);
    return out;
  }

  watch(kind: ServiceKind, listener: () => void): () => void {
    let set = this.listeners.get(kind);
    if (!set) this.listeners.set(kind, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  private changed(kind: ServiceKind): void {
    for (const l of this.listeners.get(kind) ?? []) l();
  }

  /**
   * Registers an instance under a lease kept alive in the background. A lost lease
   * (etcd unreachable for longer than the TTL) is re-created when etcd answers again.
   */
  async register(instance: Instance): Promise<Registration> {
    const key = `${this.root}${instance.kind}/${instance.id}`;
    let current: Instance = { ...instance };
    let lease: Lease | undefined;
    let stopped = false;
    let loadTimer: NodeJS.Timeout | undefined;
    let retryTimer: NodeJS.Timeout | undefined;
    const value = () =>
      JSON.stringify({ url: current.url, publicUrl: current.publicUrl, load: current.load });

    const grant = async (): Promise<void> => {
      const l = this.client.lease(this.ttl);
      l.on("lost", (err) => {
        if (stopped || l !== lease) return;
        this.logger?.warn({ err, key }, "discovery lease lost; registering again");
        retry();
      });
      await etcdCall("lease put", () => l.put(key).value(value()).exec());
      if (lease) this.leases.delete(lease);
      lease = l;
      this.leases.add(l);
    };
    const retry = () => {
      if (stopped || retryTimer) return;
      retryTimer = setTimeout(() => {
        retryTimer = undefined;
        grant().catch((err: unknown) => {
          this.logger?.warn({ err, key }, "discovery registration failed; will retry");
          retry();
        });
      }, 1000);
      retryTimer.unref();
    };

    await grant();
    return {
      setLoad: (load) => {
        current = { ...current, load };
        if (loadTimer || stopped) return;
        loadTimer = setTimeout(() => {
          loadTimer = undefined;
          const l = lease;
          if (!l) return;
          etcdCall("lease put", () => l.put(key).value(value()).exec()).catch((err: unknown) => this.logger?.warn({ err, key }, "load update failed"));
        }, 1000);
        loadTimer.unref();
      },
      close: async () => {
        stopped = true;
        clearTimeout(loadTimer);
        clearTimeout(retryTimer);
        if (lease) this.leases.delete(lease);
        const l = lease;
        if (l) await etcdCall("lease revoke", () => l.revoke()).catch(() => {});
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Registrations not closed first are abandoned, not revoked: their keys expire
    // with their leases, as if the process had died.
    for (const l of this.leases) l.release();
    this.leases.clear();
    await this.watcher?.cancel().catch(() => {});
    this.client.close();
  }
}

/** An etcd call, traced (as its own trace when nothing is: these run in the background) and measured. */
function etcdCall<T>(operation: string, fn: () => Promise<T>): Promise<T> {
  return backendCall("etcd", operation, fn, { root: true });
}
