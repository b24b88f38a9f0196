import type { Logger } from "../../../lib/logger.js";
import { tokenHint, type Platform } from "./model.js";
import type { DeviceTarget, Push, PushSender, SendOutcome } from "./providers/push-sender.js";

/**
 * The embedded default for a platform without provider credentials: a push is one info
 * log line (never the token: a hint of it at most) and a count. Always "sent".
 */
export class LogSender implements PushSender {
  /** Pushes logged, by this sender. */
  sent = 0;

  constructor(
    readonly platform: Platform,
    private readonly logger: Logger,
  ) {}

  async send(target: DeviceTarget, push: Push): Promise<SendOutcome> {
    this.sent++;
    this.logger.info(
      {
        platform: target.platform,
        device: tokenHint(target.subscription?.endpoint ?? target.token),
        appId: target.appId || undefined,
        collapseKey: push.collapseKey,
        pushId: push.data.push_id,
        conversationId: push.data.conversation_id,
        seq: push.data.seq,
        count: push.data.count,
      },
      "push (log sender)",
    );
    return { status: "sent" };
  }

  async close(): Promise<void> {}
}
