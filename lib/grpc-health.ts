import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  type HealthCheckResponse,
} from "../gen/grpc/health/v1/health_pb.js";
import type { Routes } from "./rpc.js";

export { ServingStatus };

/** Called with a service's new status; `ended` is true once, on shutdown, after the last status. */
export type HealthListener = (status: ServingStatus, ended: boolean) => void;

/**
 * The serving status of a server ("") and of each of its services, as reported by
 * `grpc.health.v1.Health`. Everything starts SERVING; `shutdown()` flips all to
 * NOT_SERVING and ends every Watch.
 */
export class HealthRegistry {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #listeners = new Map<string, Set<HealthListener>>();
  #shutDown = false;

  constructor(serviceNames: string[]) {
    this.#statuses.set("", ServingStatus.SERVING);
    for (const name of serviceNames) this.#statuses.set(name, ServingStatus.SERVING);
  }

  /** The status of `service`, or undefined when the service is unknown. */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** How many Watch subscriptions are open (for tests and metrics). */
  get watcherCount(): number {
    let n = 0;
    for (const set of this.#listeners.values()) n += set.size;
    return n;
  }

  get isShutDown(): boolean {
    return this.#shutDown;
  }

  /** Sets (and, for a new name, registers) a service's status. Ignored after shutdown. */
  set(service: string, status: ServingStatus): void {
    if (this.#shutDown) return;
    this.#update(service, status);
  }

  /** Marks every service NOT_SERVING and ends all open Watch streams. Idempotent. */
  shutdown(): void {
    if (this.#shutDown) return;
    this.#shutDown = true;
    for (const service of this.#statuses.keys()) this.#update(service, ServingStatus.NOT_SERVING);
    for (const [service, listeners] of this.#listeners) {
      const status = this.#statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
      for (const listener of listeners) listener(status, true);
    }
    this.#listeners.clear();
  }

  /**
   * Subscribes to changes of `service` (known or not yet). The listener is not called
   * with the current status. Returns the unsubscribe function. After shutdown the
   * listener is called once at once with `ended` = true.
   */
  subscribe(service: string, listener: HealthListener): () => void {
    if (this.#shutDown) {
      listener(this.#statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN, true);
      return () => {};
    }
    let set = this.#listeners.get(service);
    if (!set) this.#listeners.set(service, (set = new Set()));
    set.add(listener);
    return () => {
      const current = this.#listeners.get(service);
      if (!current) return;
      current.delete(listener);
      if (current.size === 0) this.#listeners.delete(service);
    };
  }

  #update(service: string, status: ServingStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const listener of this.#listeners.get(service) ?? []) listener(status, false);
  }
}

function response(status: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

/**
 * Sends the current status of `service` at once, then each change, until `signal`
 * aborts or the registry shuts down. An unknown service is reported as SERVICE_UNKNOWN
 * and still watched. Only the latest status is kept when the reader is slower than the
 * changes (the health protocol's semantics); no timers.
 */
async function* watch(registry: HealthRegistry, service: string, signal: AbortSignal): AsyncGenerator<HealthCheckResponse> {
  let pending: ServingStatus | undefined = registry.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
  let last: ServingStatus | undefined;
  let ended = false;
  let wake: (() => void) | undefined;
  const unsubscribe = registry.subscribe(service, (status, end) => {
    pending = status;
    if (end) ended = true;
    wake?.();
  });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  try {
    while (!signal.aborted) {
      if (pending !== undefined) {
        const status: ServingStatus = pending;
        pending = undefined;
        if (status !== last) {
          last = status;
          yield response(status);
          continue; // re-check pending/ended after the consumer resumed us
        }
      }
      if (ended) return;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    unsubscribe();
  }
}

/** `grpc.health.v1.Health` over `registry`. */
export function healthRoutes(registry: HealthRegistry): Routes {
  return (router) =>
    router.service(Health, {
      check(req) {
        const status = registry.get(req.service);
        if (status === undefined) throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
        return response(status);
      },
      watch(req, ctx) {
        return watch(registry, req.service, ctx.signal);
      },
    });
}
