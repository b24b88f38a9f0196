/**
 * The discovery port: where the instances of each kind of process are. The embedded
 * adapter is a static table; the etcd adapter (a later issue) registers instances
 * under leases and follows watch events.
 */
export type ServiceKind = "gateway" | "session" | "router" | "messagestore" | "presence" | "groups" | "notify";

export interface Instance {
  kind: ServiceKind;
  id: string;
  /** Base URL of its internal gRPC port, e.g. http://127.0.0.1:7200 */
  url: string;
}

export interface Discovery {
  /** One instance by id, or undefined when it is not (or no longer) registered. */
  resolve(kind: ServiceKind, id: string): Instance | undefined;
  /** The live instances of a kind. */
  list(kind: ServiceKind): readonly Instance[];
}
