/**
 * Domain errors of the message store. Routes map them to Connect codes
 * (see routes/errors.ts); domain code never sees a Code.
 */

/**
 * A repository insert hit a sequence number or an idempotency key that is already
 * taken: another writer (another message store instance) raced on the conversation.
 * Nothing of the failed batch was stored.
 */
export class SeqConflictError extends Error {
  override readonly name = "SeqConflictError";
  constructor(message = "sequence number or idempotency key already taken", options?: ErrorOptions) {
    super(message, options);
  }
}

/** The repository failed (down, timed out, ...): the append may be retried with the same key. */
export class StoreUnavailableError extends Error {
  override readonly name = "StoreUnavailableError";
  constructor(message = "message repository unavailable", options?: ErrorOptions) {
    super(message, options);
  }
}

/** An append lost the race against other writers too many times in a row. */
export class AppendContentionError extends Error {
  override readonly name = "AppendContentionError";
  constructor(message = "too much write contention on the conversation", options?: ErrorOptions) {
    super(message, options);
  }
}

/** The sequencer is closing: it takes no new appends. */
export class SequencerClosedError extends Error {
  override readonly name = "SequencerClosedError";
  constructor(message = "message store is shutting down", options?: ErrorOptions) {
    super(message, options);
  }
}
