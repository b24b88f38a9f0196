import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "./logger.js";
import { isUnavailable } from "./sql.js";

/**
 * Wraps a service's handlers so every error leaves as a ConnectError: ConnectErrors as
 * they are, the service's own domain errors as `domain` maps them, a database that is
 * down as UNAVAILABLE (retry later), anything unexpected as INTERNAL (logged, details
 * kept out of the answer).
 */
export function errorBoundary(logger: Logger, domain?: (err: unknown) => ConnectError | undefined) {
  const convert = (err: unknown): ConnectError => {
    if (err instanceof ConnectError) return err;
    const mapped = domain?.(err);
    if (mapped) return mapped;
    if (isUnavailable(err)) {
      logger.warn({ err }, "database unavailable");
      return new ConnectError("database unavailable", Code.Unavailable);
    }
    logger.error({ err }, "unexpected error");
    return new ConnectError("internal error", Code.Internal);
  };
  return <Req, Res>(handler: (req: Req) => Promise<Res>) =>
    async (req: Req): Promise<Res> => {
      try {
        return await handler(req);
      } catch (err) {
        throw convert(err);
      }
    };
}
