/**
 * Entry points only: on the first SIGTERM or SIGINT run `stop`, then let the process end
 * by itself. If something outside our control still holds the event loop after
 * `graceMs` (a client keeping an idle keep-alive connection open to a uWS port, which
 * has no way to close its idle connections), exit anyway: the timer is unref'd, so it
 * never delays a clean exit.
 */
export function onShutdownSignal(
  stop: (signal: string) => Promise<void>,
  report: (err: unknown) => void,
  graceMs = 10_000,
): void {
  let stopping = false;
  const handle = (signal: string) => {
    if (stopping) return;
    stopping = true;
    stop(signal)
      .catch((err: unknown) => {
        report(err);
        process.exitCode = 1;
      })
      .finally(() => setTimeout(() => process.exit(), graceMs).unref());
  };
  process.once("SIGTERM", () => handle("SIGTERM"));
  process.once("SIGINT", () => handle("SIGINT"));
}
