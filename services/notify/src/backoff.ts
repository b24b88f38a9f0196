/**
 * "Full jitter" exponential backoff (the AWS architecture blog's variant): a uniformly
 * random wait in [0, min(maxMs, baseMs · 2^(attempt−1))], so instances retrying after a
 * shared outage spread out instead of coming back together. `attempt` counts from 1;
 * `random` returns [0, 1).
 */
export function fullJitterBackoff(baseMs: number, maxMs: number, attempt: number, random: () => number): number {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 1) - 1, 52));
  return Math.floor(random() * cap);
}

/** When to try again: the backoff, but never before the provider's Retry-After. */
export function nextAttemptDelay(
  o: { baseMs: number; maxMs: number; attempt: number; retryAfterMs: number | undefined },
  random: () => number,
): number {
  return Math.max(o.retryAfterMs ?? 0, fullJitterBackoff(o.baseMs, o.maxMs, o.attempt, random));
}
