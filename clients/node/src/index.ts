/**
 * `@queue/client`: the Node.js library of the `queue` PostgreSQL extension.
 *
 * - {@link push} / {@link pushBatch} add jobs on your own client, inside your transaction.
 * - {@link dependencies} reads what a job's dependencies (`dependsOn`) returned;
 *   {@link openBatch}, {@link closeBatch}, {@link cancelBatch}, {@link getBatch} manage batches with callbacks.
 * - {@link Worker} claims jobs, runs your handlers, acks, retries, keeps leases and stops gracefully.
 *
 * @packageDocumentation
 */
export { push, pushBatch, PRIORITY } from './push';
export type { Queryable, JobId, IdLike, Priority, PushOptions } from './push';
export { dependencies, openBatch, closeBatch, cancelBatch, getBatch } from './workflow';
export type {
  JobStatus, Dependency, BatchId, BatchCallback, OpenBatchOptions, BatchState, BatchInfo,
} from './workflow';
export { Worker } from './worker';
export type {
  Job, Handler, HandlerOptions, WorkerOptions, StopOptions, WorkerState, WorkerEventMap, Logger,
  JobStartEvent, JobCompleteEvent, JobFailEvent, JobReleaseEvent, JobLostEvent, ListenEvent,
} from './worker';
export { PermanentError, RetryIn, LeaseLostError, WorkerStoppedError, MaxRuntimeExceededError } from './errors';
export type { Interval } from './interval';
export type { BackoffOptions } from './backoff';
export { VERSION, LIBRARY_NAME } from './version';
