import { createLogger, type Logger } from "../../../lib/logger.js";
import type { NotifyConfig } from "./config.js";
import type { PushProvider } from "./push-provider.js";
import { LogPushProvider } from "./push-provider-log.js";

export class NotifyContext {
  private constructor(
    readonly provider: PushProvider,
    readonly logger: Logger,
  ) {}

  static async fromConfig(cfg: NotifyConfig, o: { provider?: PushProvider; logger?: Logger } = {}): Promise<NotifyContext> {
    const logger = o.logger ?? createLogger("notify", cfg.logLevel);
    return new NotifyContext(o.provider ?? new LogPushProvider(logger), logger);
  }

  async close(): Promise<void> {}
}
