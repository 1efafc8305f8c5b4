/** Exponential backoff of reconnects and retried calls. */
export interface BackoffOptions {
  /** First delay, in milliseconds. Default 100. */
  initialMs?: number;
  /** Longest delay, in milliseconds. Default 30 000. */
  maxMs?: number;
}

/** @internal The delay before retry number `failures` (1, 2, ...): doubling, capped, with jitter (50–100%). */
export function backoffDelay(failures: number, opts: Required<BackoffOptions>): number {
  const exp = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.max(0, Math.min(failures - 1, 30)));
  return Math.max(1, Math.round(exp * (0.5 + Math.random() * 0.5)));
}
