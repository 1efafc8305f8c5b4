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

/**
 * A duration as the client prints it: `500ms`, `1.5s`, `2s` (seconds to the
 * millisecond from one second on; the Python client prints the same).
 *
 * @internal
 */
export function formatDuration(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(3).replace(/\.?0+$/, '')}s`;
  return `${Number(ms.toPrecision(6))}ms`;
}

/**
 * The error a job fails with when its handler ran longer than its
 * `maxRuntimeMs` (see {@link WorkerOptions.maxRuntimeMs}), and the reason
 * `job.signal` is aborted with at that moment. The worker never throws it into
 * the handler: it fails the attempt with this error's message as the job's
 * `last_error` (an ordinary, retryable failure) and reports it as the `error`
 * of the job's `job:fail` event.
 */
export class MaxRuntimeExceededError extends Error {
  /** The limit the handler ran past, in milliseconds. */
  readonly maxRuntimeMs: number;

  /** @param maxRuntimeMs - the limit the handler ran past, in milliseconds */
  constructor(maxRuntimeMs: number) {
    super(`max_runtime exceeded: the handler ran longer than ${formatDuration(maxRuntimeMs)}`);
    this.name = 'MaxRuntimeExceededError';
    this.maxRuntimeMs = maxRuntimeMs;
  }
}

/** The longest error text the worker stores (UTF-16 code units: at most 48 kB of UTF-8, under `queue.max_error_size`'s default 64 kB). */
const MAX_ERROR_CHARS = 16_000;

/** Whether `err` is an Error; false for anything that throws when asked (a Proxy). */
function isError(err: unknown): err is Error {
  try {
    return err instanceof Error;
  } catch {
    return false;
  }
}

/** A property of a thrown value as text, or null when reading it throws or gives no text. */
function readText(read: () => unknown): string | null {
  try {
    const v = read();
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
    return null;
  } catch {
    return null;
  }
}

/**
 * What a handler threw, as the text `queue_fail` stores as the job's
 * `last_error`: an Error's stack (or `Name: message`), a string as it is,
 * anything else as JSON or `String()` of it. Never throws, whatever was thrown
 * (getters that throw, a Proxy, `Object.create(null)`, a Symbol, a BigInt):
 * each step that fails falls back to a plainer one, down to naming the thrown
 * value's type. The text is one Postgres can store: a NUL (which `text`
 * cannot hold) is written `\x00`, and it is cut at 16 000 characters.
 *
 * @internal
 */
export function describeError(err: unknown): string {
  let text: string;
  try {
    text = describe(err);
  } catch {
    try {
      text = `${Object.prototype.toString.call(err)} (thrown; it could not be described)`;
    } catch {
      text = `a thrown ${typeof err} that could not be described`;
    }
  }
  if (text.includes('\u0000')) text = text.replace(/\u0000/g, '\\x00');
  return text.length > MAX_ERROR_CHARS ? text.slice(0, MAX_ERROR_CHARS) + '…' : text;
}

function describe(err: unknown): string {
  if (typeof err === 'string') return err;
  if (isError(err)) {
    const message = readText(() => err.message);
    const stack = readText(() => err.stack);
    if (stack !== null && (message === null || stack.includes(message))) return stack;
    return `${readText(() => err.name) ?? 'Error'}: ${message ?? '(its message could not be read)'}`;
  }
  try {
    const json = JSON.stringify(err);
    if (typeof json === 'string') return json;
  } catch {
    /* e.g. a BigInt, or a toJSON that throws: String() below */
  }
  return String(err);
}

/**
 * The message of what was thrown, to quote in another error's message: an
 * Error's `message`, else {@link describeError}. Never throws.
 *
 * @internal
 */
export function errorMessage(err: unknown): string {
  if (isError(err)) {
    const message = readText(() => err.message);
    if (message !== null) return message;
  }
  return describeError(err);
}

/**
 * `err` if it is an Error, else a new Error describing it ({@link describeError}). Never throws.
 *
 * @internal
 */
export function asError(err: unknown): Error {
  return isError(err) ? err : new Error(describeError(err));
}
