import { type Interval, intervalToSql } from './interval';

/**
 * Throw this from a handler to fail the job for good: no retry, whatever
 * attempts are left. The job goes to the dead letters (`queue_dead`) with the
 * error recorded as its `last_error`.
 *
 * Any error with a `permanent: true` property is treated the same way.
 *
 * @example
 * ```ts
 * if (!isValidAddress(job.payload.to)) throw new PermanentError(`bad address ${job.payload.to}`);
 * ```
 */
export class PermanentError extends Error {
  /** Always `true`: tells the worker to skip retries. */
  readonly permanent = true as const;

  /**
   * @param message - recorded as the job's `last_error`
   * @param options - standard `ErrorOptions` (e.g. `{ cause }`)
   */
  constructor(message?: string, options?: ErrorOptions) {
    super(message ?? 'permanent failure', options);
    this.name = 'PermanentError';
  }
}

/**
 * Throw this from a handler to fail this attempt and retry after the given
 * delay instead of the job's own backoff (once; later failures follow the
 * backoff again). When no attempts are left the job fails as usual.
 *
 * Any error with a numeric `retryInMs` property is treated the same way.
 *
 * @example
 * ```ts
 * if (res.status === 429) throw new RetryIn(Number(res.headers.get('retry-after')) * 1000, 'rate limited');
 * throw new RetryIn('5 minutes', 'upstream is down');
 * ```
 */
export class RetryIn extends Error {
  /** The delay before the next attempt: milliseconds, or a Postgres interval string. */
  readonly retryIn: Interval;

  /**
   * @param delay - milliseconds, or a Postgres interval such as `'5 minutes'`; 0 retries at once
   * @param message - recorded as the job's `last_error`
   * @param options - standard `ErrorOptions` (e.g. `{ cause }`)
   */
  constructor(delay: Interval, message?: string, options?: ErrorOptions) {
    intervalToSql(delay, 'RetryIn delay'); // validate early, at the throw site
    super(message ?? `retry in ${typeof delay === 'number' ? `${delay} ms` : delay}`, options);
    this.name = 'RetryIn';
    this.retryIn = delay;
  }
}

/**
 * The reason of a job's `AbortSignal` when the worker lost the job's lease
 * (`queue_touch` returned false: the lease ran out and the job may already
 * run elsewhere). The worker will not ack or fail the job; stop working on it.
 */
export class LeaseLostError extends Error {
  /** @param message - what happened */
  constructor(message = 'the lease of this job was lost; another worker may run it now') {
    super(message);
    this.name = 'LeaseLostError';
  }
}

/**
 * The reason of a job's `AbortSignal` when the worker stops hard: the grace
 * period of {@link Worker.stop} ran out while the handler was still running.
 * The job has been given back to the queue; the handler's outcome is ignored.
 */
export class WorkerStoppedError extends Error {
  /** @param message - what happened */
  constructor(message = 'the worker stopped before this job finished; the job was given back') {
    super(message);
    this.name = 'WorkerStoppedError';
  }
}
