import type { Client } from "@connectrpc/connect";
import { ErrorCode, type SetPresence, type SubscribePresence } from "../../../gen/parley/client/v1/frames_pb.js";
import { PresenceState, type PresenceService } from "../../../gen/parley/presence/v1/presence_service_pb.js";
import type { Logger } from "../../../lib/logger.js";
import type { ConnectionRegistry } from "../../../lib/registry/connection-registry.js";
import type { GatewayConfig } from "../config.js";
import type { Connection } from "./connection.js";
import { errorFrame, type serverFrame } from "./frames.js";

/** What the presence part of a gateway needs from the rest of it. */
export interface PresenceHost {
  /** The users with a connection here, and their connections. */
  users(): Iterable<[string, readonly Connection[]]>;
  /** Writes a frame to a connection (closing it if it is a slow consumer). */
  reply(conn: Connection, frame: ReturnType<typeof serverFrame>): void;
}

/**
 * The gateway's side of presence: reports the users connected here to the presence
 * service (one report per interval for all of them, never one per connection), and
 * serves the presence frames of the protocol.
 */
export class GatewayPresence {
  /** Users whose last connection here closed since the last report. */
  private wentOffline = new Set<string>();
  private readonly timer: NodeJS.Timeout | undefined;

  private readonly presence: Client<typeof PresenceService> | undefined;
  private readonly logger: Logger;

  constructor(
    private readonly cfg: GatewayConfig,
    deps: {
      presence: Client<typeof PresenceService> | undefined;
      /** The topic index keeps which gateways follow a user's presence (`presence:<userId>`). */
      registry: ConnectionRegistry;
      clock: () => number;
      logger: Logger;
    },
    private readonly host: PresenceHost,
  ) {
    this.presence = deps.presence;
    this.logger = deps.logger;
    const presence = deps.presence;
    if (presence) {
      this.timer = setInterval(() => void this.report(), cfg.presenceIntervalMs);
      this.timer.unref();
    }
  }

  /** A connection is registered (its user may have been offline here). */
  connected(conn: Connection): void {
    this.wentOffline.delete(conn.principal.userId);
  }

  /** A connection closed; `lastOfUser` when its user has no other connection here. */
  disconnected(conn: Connection, lastOfUser: boolean): void {
    if (lastOfUser) this.wentOffline.add(conn.principal.userId);
  }

  onSetPresence(conn: Connection, ref: number, _frame: SetPresence): void {
    this.host.reply(conn, errorFrame(ErrorCode.UNKNOWN_FRAME, "presence states are not served yet", ref));
  }

  onSubscribe(conn: Connection, ref: number, _frame: SubscribePresence): void {
    this.host.reply(conn, errorFrame(ErrorCode.UNKNOWN_FRAME, "presence subscriptions are not served yet", ref));
  }

  /**
   * DeliveryService.Deliver, an envelope for the followers of `userId`: writes the
   * pre-encoded frame to the connections here that follow that user. Returns how many.
   */
  deliverToWatchers(_userId: string, _frame: Uint8Array): number {
    return 0;
  }

  /** Shutdown: a last report (the users here go offline). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.report();
  }

  /** One report per interval for all users of this gateway. */
  private async report(): Promise<void> {
    if (!this.presence) return;
    const offline = [...this.wentOffline];
    this.wentOffline.clear();
    const here = new Set<string>();
    for (const [userId] of this.host.users()) here.add(userId);
    try {
      await this.presence.reportConnections({
        gatewayId: this.cfg.id,
        online: [...here].map((userId) => ({ userId, state: PresenceState.ONLINE })),
        offlineUserIds: offline,
        full: true,
      });
    } catch (err) {
      for (const u of offline) if (!here.has(u)) this.wentOffline.add(u);
      this.logger.warn({ err }, "presence report failed");
    }
  }
}
