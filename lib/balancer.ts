import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import type { Discovery, Instance, ServiceKind } from "./discovery/discovery.js";
import type { Routable } from "./batcher.js";
import type { OwnedTransport } from "./rpc.js";

/** FNV-1a, 32 bits: a fast, well-spread hash for rendezvous scoring. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // Final avalanche (murmur3 fmix32) so that close inputs score far apart.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The instance that owns `key` by rendezvous (highest random weight) hashing. */
export function ownerOf(key: string, instances: readonly Instance[]): Instance | undefined {
  let best: Instance | undefined;
  let bestScore = -1;
  for (const i of instances) {
    const score = fnv1a(`${key}\0${i.id}`);
    if (score > bestScore || (score === bestScore && best && i.id < best.id)) {
      best = i;
      bestScore = score;
    }
  }
  return best;
}

/**
 * A transport over every live instance of one kind, kept in step with discovery. Each
 * call goes to one instance: calls that carry a `conversationId` go to the instance
 * that owns it by rendezvous hashing (all of a conversation's traffic meets in one
 * router and one message store while the set of instances is stable; when one comes or
 * goes only its own conversations move), others round-robin. Connections of instances
 * that disappear are closed. No live instance → `Unavailable`. `route(key)` says which
 * instance (and connection) owns a key, for callers that batch per instance.
 */
export function balancedTransport(
  discovery: Discovery,
  kind: ServiceKind,
  dial: (url: string) => OwnedTransport,
): OwnedTransport & Routable {
  const conns = new Map<string, { url: string; transport: OwnedTransport }>();
  let instances: readonly Instance[] = [];
  let next = 0;
  const refresh = () => {
    instances = [...discovery.list(kind)].sort((a, b) => (a.id < b.id ? -1 : 1));
    for (const [id, c] of conns) {
      if (instances.some((i) => i.id === id && i.url === c.url)) continue;
      c.transport.close();
      conns.delete(id);
    }
  };
  refresh();
  const unwatch = discovery.watch(kind, refresh);
  const pick = (input: unknown): Transport => route((input as { conversationId?: unknown } | undefined)?.conversationId).transport;
  const route = (key: unknown): { id: string; transport: Transport } => {
    const inst =
      typeof key === "string" && key !== ""
        ? ownerOf(key, instances)
        : instances.length > 0
          ? instances[next++ % instances.length]
          : undefined;
    if (!inst) throw new ConnectError(`no live ${kind} instance`, Code.Unavailable);
    let c = conns.get(inst.id);
    if (!c) conns.set(inst.id, (c = { url: inst.url, transport: dial(inst.url) }));
    return { id: inst.id, transport: c.transport };
  };
  return {
    route,
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      pick(input).unary(method, signal, timeoutMs, header, input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      pick(undefined).stream(method, signal, timeoutMs, header, input, contextValues),
    close() {
      unwatch();
      for (const c of conns.values()) c.transport.close();
      conns.clear();
    },
  };
}
