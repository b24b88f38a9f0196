import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../../../lib/logger.js";
import { AppendContentionError, SequencerClosedError, StoreUnavailableError } from "../errors.js";

/** Maps a domain or repository error to the ConnectError a client sees. */
export function toConnectError(err: unknown, logger: Logger): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof AppendContentionError) return new ConnectError(err.message, Code.Aborted);
  if (err instanceof StoreUnavailableError || err instanceof SequencerClosedError) {
    return new ConnectError(err.message, Code.Unavailable);
  }
  // Anything else comes from the repository on a read path.
  logger.warn({ err }, "message repository failed");
  return new ConnectError("message repository unavailable", Code.Unavailable);
}
