/*
 * Workflows: what a job's dependencies returned (`queue_dependencies`) and
 * batches with callbacks (`queue_batch_open`, `queue_batch_close`,
 * `queue_batch_cancel`, `queue_batch`). Like push, every helper runs on the
 * caller's client, inside whatever transaction it has open.
 */
import { type IdLike, type JobId, type Priority, type Queryable, idToSql } from './push';

/** A job's status, as the extension names it (`queue.job_status`). */
export type JobStatus =
  | 'scheduled' | 'pending' | 'processing' | 'retrying' | 'blocked'
  | 'completed' | 'failed' | 'expired' | 'cancelled';

/** One job another job depends on: a row of `queue_dependencies(id)`. */
export interface Dependency<R = any> {
  /** The dependency's id. */
  readonly id: JobId;
  /** Its queue; null when its history is gone (retention, or `queue.keep_completed = off`). */
  readonly queue: string | null;
  /** Its status now; null when its history is gone (it completed). */
  readonly status: JobStatus | null;
  /** What its handler returned (`queue_ack`'s result), or null for none or not yet. */
  readonly result: R | null;
  /** When it became final, or null while it is live. */
  readonly finishedAt: Date | null;
  /** True once this edge no longer blocks the dependent (completed, or final with `runAnyway`). */
  readonly resolved: boolean;
  /** Whether the dependent was pushed with `runAnyway`. */
  readonly runAnyway: boolean;
}

interface DependencyRow {
  id: string; queue: string | null; status: JobStatus | null; result: unknown;
  finished_at: Date | null; resolved: boolean; run_anyway: boolean;
}

/**
 * The jobs a job depends on (`queue_dependencies`), in id order, with their
 * status and result: how a handler reads its inputs. Only dependencies of
 * queues the caller may read are listed; none for a job without any (or one
 * the caller may not read).
 *
 * @typeParam R - the type of the dependencies' results
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param jobId - the dependent job, e.g. `job.id` in its handler
 * @returns one record per dependency, ordered by id
 *
 * @example
 * ```ts
 * handlers: {
 *   merge: async (job) => {
 *     const inputs = await dependencies<{ rows: number }>(pool, job.id);
 *     return { rows: inputs.reduce((n, d) => n + (d.result?.rows ?? 0), 0) };
 *   },
 * }
 * ```
 */
export async function dependencies<R = any>(client: Queryable, jobId: IdLike): Promise<Dependency<R>[]> {
  const res = await client.query<DependencyRow>(
    `SELECT dependency::text AS id, queue, status, result, finished_at, resolved, run_anyway
       FROM queue_dependencies($1::bigint)`,
    [idToSql(jobId, 'jobId')],
  );
  return res.rows.map((r) => ({
    id: r.id, queue: r.queue, status: r.status, result: (r.result ?? null) as R | null,
    finishedAt: r.finished_at, resolved: r.resolved, runAnyway: r.run_anyway,
  }));
}

/** A batch's id (`bigint` in Postgres), as a decimal string, like {@link JobId}. */
export type BatchId = string;

/**
 * A job a batch pushes when it ends: into `queue`, with `payload` (an object;
 * the batch's summary is added to it as `"batch"`: `{ id, total, completed,
 * failed, cancelled }`) and `priority`; the queue's other defaults apply.
 * Checked by the server when the batch opens (SQLSTATE `22023`), so that
 * the push at the end cannot fail.
 */
export interface BatchCallback {
  /** The queue of the callback job. */
  queue: string;
  /** Its payload, a JSON object; default `{}`. */
  payload?: Record<string, unknown>;
  /** Its priority: an integer or `'critical' | 'high' | 'normal' | 'low'`. */
  priority?: Priority;
}

/** Options of {@link openBatch}. */
export interface OpenBatchOptions {
  /** Pushed once every job of the closed batch is final, whatever their statuses. */
  onComplete?: BatchCallback;
  /** Pushed too (besides `onComplete`) when any job of the batch failed or expired. */
  onFailure?: BatchCallback;
}

/** A batch's state: jobs join it while `open`; `closed` waits for them; `done` has pushed its callbacks. */
export type BatchState = 'open' | 'closed' | 'done' | 'cancelled';

/** A batch as `queue_batch(id)` reports it. */
export interface BatchInfo {
  /** Its id. */
  readonly id: BatchId;
  /** open, closed, done or cancelled. */
  readonly state: BatchState;
  /** Its jobs. */
  readonly total: number;
  /** Its jobs not final yet (`running` of them are being processed). */
  readonly pending: number;
  /** Its jobs being processed now. */
  readonly running: number;
  /** Its completed jobs. */
  readonly completed: number;
  /** Its failed or expired jobs. */
  readonly failed: number;
  /** Its cancelled jobs (a waiting job deleted counts as cancelled). */
  readonly cancelled: number;
  /** The share of its jobs that are final, 0 to 1; null for a batch without jobs. */
  readonly progress: number | null;
  /** The on-complete callback as the server normalized it, or null. */
  readonly onComplete: BatchCallback | null;
  /** The on-failure callback as the server normalized it, or null. */
  readonly onFailure: BatchCallback | null;
  /** The id of the on-complete job once pushed, else null. */
  readonly completeJob: JobId | null;
  /** The id of the on-failure job once pushed, else null. */
  readonly failureJob: JobId | null;
  /** When it was opened. */
  readonly createdAt: Date;
  /** When it was closed, or null. */
  readonly closedAt: Date | null;
  /** When it was done (callbacks pushed) or cancelled, or null. */
  readonly finishedAt: Date | null;
}

interface BatchRow {
  id: string | null; state: BatchState; total: number; pending: number; running: number;
  completed: number; failed: number; cancelled: number; progress: number | null;
  on_complete: BatchCallback | null; on_failure: BatchCallback | null;
  complete_job: string | null; failure_job: string | null;
  created_at: Date; closed_at: Date | null; finished_at: Date | null;
}

/*
 * The columns of a queue_batch / queue_batch_close object `b`: ids as text
 * (no precision lost in JSON numbers), counts as int, times as timestamptz.
 */
const BATCH_COLUMNS = `b ->> 'id' AS id, b ->> 'state' AS state,
       (b ->> 'total')::int AS total, (b ->> 'pending')::int AS pending, (b ->> 'running')::int AS running,
       (b ->> 'completed')::int AS completed, (b ->> 'failed')::int AS failed,
       (b ->> 'cancelled')::int AS cancelled, (b ->> 'progress')::float8 AS progress,
       b -> 'on_complete' AS on_complete, b -> 'on_failure' AS on_failure,
       b ->> 'complete_job' AS complete_job, b ->> 'failure_job' AS failure_job,
       (b ->> 'created_at')::timestamptz AS created_at, (b ->> 'closed_at')::timestamptz AS closed_at,
       (b ->> 'finished_at')::timestamptz AS finished_at`;

function batchInfo(r: BatchRow): BatchInfo {
  return {
    id: r.id!, state: r.state, total: r.total, pending: r.pending, running: r.running,
    completed: r.completed, failed: r.failed, cancelled: r.cancelled, progress: r.progress,
    onComplete: r.on_complete ?? null, onFailure: r.on_failure ?? null,
    completeJob: r.complete_job, failureJob: r.failure_job,
    createdAt: r.created_at, closedAt: r.closed_at, finishedAt: r.finished_at,
  };
}

const OPEN_KEYS: ReadonlySet<string> = new Set(['onComplete', 'onFailure']);

function callbackJson(spec: BatchCallback | null | undefined, what: string): string | null {
  if (spec === undefined || spec === null) return null;
  if (typeof spec !== 'object' || Array.isArray(spec)) throw new TypeError(`${what} must be an object { queue, payload?, priority? }`);
  const json = JSON.stringify(spec);
  if (json === undefined) throw new TypeError(`${what} is not JSON-serializable`);
  return json;
}

/**
 * Opens a batch (`queue_batch_open`) and returns its id. Push jobs into it with
 * the push option `batch` (from any number of transactions), then
 * {@link closeBatch}: once every job of the closed batch is final, `onComplete`
 * is pushed, and `onFailure` too when any job failed or expired, exactly once,
 * with the batch's summary in their payload as `"batch"`.
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param opts - the callbacks, both optional
 * @returns the batch's id
 *
 * @example
 * ```ts
 * const batch = await openBatch(pool, { onComplete: { queue: 'reports', payload: { report: 7 } } });
 * await pushBatch(pool, 'render', pages.map((page) => ({ page })), { batch });
 * await closeBatch(pool, batch);
 * // when all are final, 'reports' gets { report: 7, batch: { id, total, completed, failed, cancelled } }
 * ```
 */
export async function openBatch(client: Queryable, opts: OpenBatchOptions = {}): Promise<BatchId> {
  if (opts === null || typeof opts !== 'object') throw new TypeError('openBatch options must be an object');
  for (const key of Object.keys(opts)) {
    if (!OPEN_KEYS.has(key)) throw new TypeError(`unknown openBatch option "${key}"; known: ${[...OPEN_KEYS].join(', ')}`);
  }
  const res = await client.query<{ id: string }>(
    'SELECT queue_batch_open(on_complete => $1::jsonb, on_failure => $2::jsonb)::text AS id',
    [callbackJson(opts.onComplete, 'onComplete'), callbackJson(opts.onFailure, 'onFailure')],
  );
  return res.rows[0]!.id;
}

/**
 * Closes a batch (`queue_batch_close`): no more jobs join it. Waits for
 * pushes into it still in flight, counts its jobs, and when all of them are
 * final already (or it has none) pushes the callbacks at once. A batch that
 * is not open is refused by the server (SQLSTATE `22023`).
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param batchId - the id {@link openBatch} returned
 * @returns the batch after the close
 */
export async function closeBatch(client: Queryable, batchId: IdLike): Promise<BatchInfo> {
  const res = await client.query<BatchRow>(
    `SELECT ${BATCH_COLUMNS} FROM (SELECT queue_batch_close($1::bigint) AS b) AS x`,
    [idToSql(batchId, 'batchId')],
  );
  return batchInfo(res.rows[0]!);
}

/**
 * Cancels a batch (`queue_batch_cancel`): its waiting jobs are cancelled (and
 * the jobs that depend on them), running ones finish, no callback is pushed.
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param batchId - the batch
 * @returns false when the batch is done or cancelled already, or unknown
 */
export async function cancelBatch(client: Queryable, batchId: IdLike): Promise<boolean> {
  const res = await client.query<{ ok: boolean }>('SELECT queue_batch_cancel($1::bigint) AS ok', [idToSql(batchId, 'batchId')]);
  return res.rows[0]!.ok === true;
}

/**
 * A batch's state and counts (`queue_batch`).
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param batchId - the batch
 * @returns the batch, or null for an unknown one (or one a confined role did not open)
 */
export async function getBatch(client: Queryable, batchId: IdLike): Promise<BatchInfo | null> {
  const res = await client.query<BatchRow>(
    `SELECT ${BATCH_COLUMNS} FROM (SELECT queue_batch($1::bigint) AS b) AS x`,
    [idToSql(batchId, 'batchId')],
  );
  const row = res.rows[0];
  return row && row.id !== null ? batchInfo(row) : null;
}
