import type { Logger } from "../../../lib/logger.js";
import type { PushNotification, PushProvider } from "./push-provider.js";

/** The embedded default: a push is a log line (and a count, for tests). */
export class LogPushProvider implements PushProvider {
  readonly name = "log";
  sent = 0;

  constructor(private readonly logger: Logger) {}

  async send(batch: readonly PushNotification[]): Promise<void> {
    for (const n of batch) {
      this.logger.info(
        { userId: n.userId, conversationId: n.conversationId, seq: n.seq, messageId: n.messageId },
        "push (log provider)",
      );
    }
    this.sent += batch.length;
  }
}
