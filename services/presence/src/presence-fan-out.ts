import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { PresenceState as FrameState, ServerFrameSchema } from "../../../gen/parley/client/v1/frames_pb.js";
import type { DeliveryService, EnvelopeSchema } from "../../../gen/parley/gateway/v1/delivery_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Logger } from "../../../lib/logger.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import type { Presence, PresenceStore } from "./presence-store.js";
import { fastToBinary } from "../../../lib/fast-binary.js";

/** The registry topic of a user's followers: the gateways holding a connection that follows the user. */
export function presenceTopic(userId: string): string {
  return `presence:${userId}`;
}

const FRAME_STATE = { online: FrameState.ONLINE, away: FrameState.AWAY, offline: FrameState.OFFLINE } as const;

/** ServerFrame{presence} in the binary encoding, encoded once for every follower. */
export function presenceFrame(p: Presence): Uint8Array {
  return fastToBinary(
    ServerFrameSchema,
    {
      kind: {
        case: "presence",
        value: {
          userId: p.userId,
          state: FRAME_STATE[p.state],
          lastSeenAt: p.state === "offline" && p.lastSeenMs > 0 ? timestampFromMs(p.lastSeenMs) : undefined,
        },
      },
    },
  );
}

export interface FanOutStats {
  /** Changes published (one per user and change). */
  changes: number;
  /** Envelopes sent to gateways (one per changed user and gateway holding followers). */
  events: number;
  deliverCalls: number;
  deliverFailures: number;
  /** Topic lookups in the registry (calls, and keys asked). */
  lookups: number;
  lookupKeys: number;
  sweeps: number;
}

/**
 * Publishes presence changes to the gateways that hold followers, and runs the sweep.
 * One lookupTopics per batch of changes; one Deliver per gateway per batch, carrying one
 * envelope per changed user followed there. Publications are serialized (a batch is
 * delivered before the next starts), so a user's changes reach a gateway in order.
 */
export class PresenceFanOut {
  readonly stats: FanOutStats = { changes: 0, events: 0, deliverCalls: 0, deliverFailures: 0, lookups: 0, lookupKeys: 0, sweeps: 0 };
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<number> | undefined;

  constructor(
    private readonly store: PresenceStore,
    private readonly registry: ConnectionRegistry,
    /** The Deliver client of a gateway, undefined when discovery does not know it. */
    private readonly gateway: (gatewayId: string) => Client<typeof DeliveryService> | undefined,
    private readonly clock: () => number,
    private readonly logger: Logger,
    private readonly sweepLimit = 1000,
  ) {}

  /** Queues changes for publication (after those queued before). */
  publish(changes: readonly Presence[]): Promise<void> {
    if (changes.length === 0) return this.chain;
    const run = this.chain.then(() => this.deliver(changes));
    this.chain = run.catch(() => {});
    return this.chain;
  }

  /** Resolves once everything queued so far is delivered (or failed). */
  idle(): Promise<void> {
    return this.chain;
  }

  private async deliver(changes: readonly Presence[]): Promise<void> {
    this.stats.changes += changes.length;
    const keys = changes.map((c) => presenceTopic(c.userId));
    this.stats.lookups++;
    this.stats.lookupKeys += keys.length;
    let where: Map<string, string[]>;
    try {
      where = await this.registry.lookupTopics(keys);
    } catch (err) {
      this.logger.warn({ err, changes: changes.length }, "presence: registry lookup failed; changes not delivered");
      return;
    }
    const perGateway = new Map<string, MessageInitShape<typeof EnvelopeSchema>[]>();
    for (const c of changes) {
      const gateways = where.get(presenceTopic(c.userId));
      if (!gateways) continue;
      const frame = presenceFrame(c);
      for (const gw of gateways) {
        const list = perGateway.get(gw) ?? [];
        list.push({ watchersOfUserId: c.userId, serverFrame: frame });
        perGateway.set(gw, list);
      }
    }
    await Promise.all(
      [...perGateway].map(async ([gatewayId, envelopes]) => {
        const client = this.gateway(gatewayId);
        if (!client) return; // gone: its followers are gone too (their entries expire)
        this.stats.deliverCalls++;
        this.stats.events += envelopes.length;
        try {
          await client.deliver({ envelopes });
        } catch (err) {
          this.stats.deliverFailures++;
          this.logger.warn({ err, gatewayId, envelopes: envelopes.length }, "presence: deliver failed");
        }
      }),
    );
  }

  /**
   * Evaluates the due users (expiries, damping windows that ran out) and publishes what
   * changed. One at a time: a call while one runs waits for it and runs again.
   */
  async sweep(): Promise<number> {
    while (this.sweeping) await this.sweeping;
    const run = this.sweepOnce();
    this.sweeping = run;
    try {
      return await run;
    } finally {
      this.sweeping = undefined;
    }
  }

  private async sweepOnce(): Promise<number> {
    this.stats.sweeps++;
    let total = 0;
    // A backlog is drained in batches of `sweepLimit` (bounded per sweep).
    for (let i = 0; i < 100; i++) {
      const changes = await this.store.sweep(this.clock(), this.sweepLimit);
      total += changes.length;
      await this.publish(changes);
      if (changes.length < this.sweepLimit) break;
    }
    return total;
  }

  /** Starts the one sweep timer of this instance. */
  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (this.sweeping) return;
      this.sweep().catch((err: unknown) => this.logger.warn({ err }, "presence sweep failed"));
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    while (this.sweeping) await this.sweeping.catch(() => 0);
    await this.chain;
  }
}
