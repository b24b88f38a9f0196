/**
 * The discovery port: where the instances of each kind of process are. The embedded
 * adapter is a static table; the etcd adapter registers instances under leases and
 * follows watch events. Reads (`resolve`, `list`) are synchronous, from a local view
 * kept current in the background, so hot paths never wait on discovery.
 */
export type ServiceKind = "gateway" | "session" | "router" | "messagestore" | "presence" | "groups" | "notify";

export interface Instance {
  kind: ServiceKind;
  id: string;
  /** Base URL of its internal gRPC port, e.g. http://127.0.0.1:7200 */
  url: string;
  /** Gateways: the public base URL clients connect to (http://host:port). */
  publicUrl?: string;
  /** A load figure the instance reports (gateways: open connections). */
  load?: number;
}

export interface Discovery {
  /** One instance by id, or undefined when it is not (or no longer) registered. */
  resolve(kind: ServiceKind, id: string): Instance | undefined;
  /** The live instances of a kind. */
  list(kind: ServiceKind): readonly Instance[];
  /** `listener` runs after the instances of `kind` changed; returns an unsubscribe. */
  watch(kind: ServiceKind, listener: () => void): () => void;
}

/** A live registration: the instance is listed until `close()` or until its process dies. */
export interface Registration {
  /** Reports a new load figure (sent at most about once a second). */
  setLoad(load: number): void;
  close(): Promise<void>;
}

export interface Registrar {
  register(instance: Instance): Promise<Registration>;
}
