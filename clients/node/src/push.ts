import type { ClientBase, Pool } from 'pg';
import { type Interval, intervalToSql } from './interval';
import { withPushSpan } from './telemetry';

/**
 * What {@link push} and {@link pushBatch} run on: a `pg.Client` or a
 * `pg.PoolClient` (then the push is part of whatever transaction that client
 * has open: the job exists only if it commits), or a `pg.Pool` (then each push
 * commits on its own).
 */
export type Queryable = ClientBase | Pool;

/** A job id (`bigint` in Postgres), as a decimal string so that no id ever loses precision. */
export type JobId = string;

/**
 * An id as the client accepts it (of a job, or of a batch): the decimal string
 * the client returns, a `bigint`, or a safe integer `number`. The server parses
 * strings (`22P02` for one that is not an integer).
 */
export type IdLike = string | bigint | number;

/**
 * The text of an id parameter (sent as a bound parameter and cast to `bigint`
 * by the server). Checks the type only; an unsafe integer `number` is refused,
 * as it may already have lost precision.
 *
 * @internal
 */
export function idToSql(value: unknown, what: string): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new TypeError(`${what} must be an integer id (a safe integer, a bigint or a decimal string), got ${value}`);
    }
    return String(value);
  }
  throw new TypeError(`${what} must be an id (a decimal string, a bigint or an integer), got ${value === null ? 'null' : typeof value}`);
}

/** The named priorities the extension accepts (`queue_priority`). Lower runs first. */
export const PRIORITY = Object.freeze({ critical: -20, high: -10, normal: 0, low: 10 } as const);

/**
 * A priority: an integer (lower runs first, default 0, negative allowed) or one
 * of the names `critical` (-20), `high` (-10), `normal` (0), `low` (10). Names
 * are resolved by the server (`queue_priority`), case-insensitively.
 */
export type Priority = number | keyof typeof PRIORITY | Uppercase<keyof typeof PRIORITY> | (string & {});

/**
 * Options of a push, one for each optional parameter of `queue_push` /
 * `queue_push_batch`. Anything left out takes the extension's default.
 * Durations are milliseconds or Postgres interval strings (`'5 minutes'`).
 */
export interface PushOptions {
  /** Lower runs first. Default 0. Integer or `'critical' | 'high' | 'normal' | 'low'`. */
  priority?: Priority;
  /** Run no earlier than this long from now (the job is `scheduled` until then). */
  delay?: Interval;
  /** Run no earlier than this moment. */
  runAt?: Date;
  /** At most one job of a serial group runs at a time, across all workers and queues, in (priority, id) order. */
  serialGroup?: string;
  /** Attempts in total, the first included. Default 3. */
  maxAttempts?: number;
  /** The lease a worker gets per attempt; the worker extends it while the handler runs. Default 5 minutes. */
  timeout?: Interval;
  /** First retry delay; doubles per attempt (with up to 10% jitter). Default 10 seconds. */
  backoffBase?: Interval;
  /** Cap of the exponential backoff. Default 1 hour. */
  backoffMax?: Interval;
  /** A custom retry schedule instead of the backoff; the last entry repeats. */
  retryDelays?: readonly Interval[];
  /** While a job with this key is not final in the queue, pushing again returns its id and adds nothing. */
  dedupeKey?: string;
  /**
   * Jobs this one waits for (`depends_on`): it is `blocked`, not claimable,
   * until every one of them has completed, and becomes `pending` in the
   * transaction that completes the last. When one ends failed, expired or
   * cancelled, this job is cancelled too (unless {@link PushOptions.runAnyway}).
   * A dependency that already completed counts as done; an unknown id is
   * refused by the server (SQLSTATE `22023`). Read their results in the
   * handler with {@link dependencies}. With {@link pushBatch}, every job of
   * the batch waits for the same dependencies (a fan-out).
   */
  dependsOn?: readonly IdLike[];
  /**
   * With {@link PushOptions.dependsOn}: run once every dependency is final,
   * whatever its status, instead of being cancelled when one fails. Default false.
   */
  runAnyway?: boolean;
  /**
   * Labels to find the job by (`queue_jobs(..., tag => ...)`, `queue_dead`,
   * `queue_stats(queue, tag)`): at most 20, each 1 to 64 bytes. The server
   * sorts them and removes duplicates; an empty list stores none.
   */
  tags?: readonly string[];
  /**
   * The id of an open batch ({@link openBatch}) to push into; its callbacks
   * run once every job of the closed batch is final. A batch that is not open
   * is refused by the server (SQLSTATE `22023`).
   */
  batch?: IdLike;
}

const OPTION_KEYS: ReadonlySet<string> = new Set([
  'priority', 'delay', 'runAt', 'serialGroup', 'maxAttempts', 'timeout',
  'backoffBase', 'backoffMax', 'retryDelays', 'dedupeKey',
  'dependsOn', 'runAnyway', 'tags', 'batch',
]);

/**
 * Named arguments for the options that are set. Only these constant fragments
 * ever become SQL text; every value is a bound parameter.
 */
function optionArgs(opts: PushOptions | undefined, values: unknown[]): string {
  if (opts === undefined || opts === null) return '';
  if (typeof opts !== 'object') throw new TypeError('push options must be an object');
  for (const key of Object.keys(opts)) {
    if (!OPTION_KEYS.has(key)) {
      throw new TypeError(`unknown push option "${key}"; known: ${[...OPTION_KEYS].join(', ')}`);
    }
  }
  const parts: string[] = [];
  const arg = (name: string, cast: string, value: unknown): void => {
    values.push(value);
    parts.push(`${name} => $${values.length}::${cast}`);
  };
  if (opts.priority !== undefined) {
    if (typeof opts.priority === 'number') {
      if (!Number.isInteger(opts.priority)) throw new TypeError(`priority must be an integer, got ${opts.priority}`);
      arg('priority', 'int', opts.priority);
    } else if (typeof opts.priority === 'string') {
      arg('priority', 'text', opts.priority);
    } else {
      throw new TypeError('priority must be an integer or a name (critical, high, normal, low)');
    }
  }
  if (opts.delay !== undefined) arg('delay', 'interval', intervalToSql(opts.delay, 'delay'));
  if (opts.runAt !== undefined) {
    if (!(opts.runAt instanceof Date) || Number.isNaN(opts.runAt.getTime())) {
      throw new TypeError('runAt must be a valid Date');
    }
    arg('run_at', 'timestamptz', opts.runAt.toISOString());
  }
  if (opts.serialGroup !== undefined) arg('serial_group', 'text', String(opts.serialGroup));
  if (opts.maxAttempts !== undefined) {
    if (!Number.isInteger(opts.maxAttempts)) throw new TypeError(`maxAttempts must be an integer, got ${opts.maxAttempts}`);
    arg('max_attempts', 'int', opts.maxAttempts);
  }
  if (opts.timeout !== undefined) arg('timeout', 'interval', intervalToSql(opts.timeout, 'timeout'));
  if (opts.backoffBase !== undefined) arg('backoff_base', 'interval', intervalToSql(opts.backoffBase, 'backoffBase'));
  if (opts.backoffMax !== undefined) arg('backoff_max', 'interval', intervalToSql(opts.backoffMax, 'backoffMax'));
  if (opts.retryDelays !== undefined) {
    if (!Array.isArray(opts.retryDelays)) throw new TypeError('retryDelays must be an array of intervals');
    arg('retry_delays', 'interval[]', opts.retryDelays.map((d, i) => intervalToSql(d, `retryDelays[${i}]`)));
  }
  if (opts.dedupeKey !== undefined) arg('dedupe_key', 'text', String(opts.dedupeKey));
  if (opts.dependsOn !== undefined) {
    if (!Array.isArray(opts.dependsOn)) throw new TypeError('dependsOn must be an array of job ids');
    arg('depends_on', 'bigint[]', opts.dependsOn.map((id, i) => idToSql(id, `dependsOn[${i}]`)));
  }
  if (opts.runAnyway !== undefined) {
    if (typeof opts.runAnyway !== 'boolean') throw new TypeError(`runAnyway must be a boolean, got ${typeof opts.runAnyway}`);
    arg('run_anyway', 'boolean', opts.runAnyway);
  }
  if (opts.tags !== undefined) {
    if (!Array.isArray(opts.tags)) throw new TypeError('tags must be an array of strings');
    for (const [i, tag] of opts.tags.entries()) {
      if (typeof tag !== 'string') throw new TypeError(`tags[${i}] must be a string, got ${tag === null ? 'null' : typeof tag}`);
    }
    arg('tags', 'text[]', [...opts.tags]);
  }
  if (opts.batch !== undefined) arg('batch', 'bigint', idToSql(opts.batch, 'batch'));
  return parts.length ? ', ' + parts.join(', ') : '';
}

function payloadJson(payload: unknown, what: string): string {
  const json = JSON.stringify(payload === undefined ? {} : payload);
  if (json === undefined) throw new TypeError(`${what} is not JSON-serializable`);
  return json;
}

/**
 * Pushes one job (`queue_push`) on the caller's client and returns its id.
 *
 * Run it on the client of your own transaction and the job exists only if that
 * transaction commits; its wake-up reaches the workers at commit.
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param queue - the queue's name (1–57 characters of `[A-Za-z0-9_.:-]`)
 * @param payload - any JSON value; default `{}`
 * @param opts - priority, delay, runAt, serialGroup, maxAttempts, timeout, backoffBase, backoffMax, retryDelays, dedupeKey,
 *   dependsOn, runAnyway, tags, batch
 * @returns the job's id (with `dedupeKey`, possibly the id of the live job that already had the key)
 *
 * @example
 * ```ts
 * await client.query('BEGIN');
 * await client.query('INSERT INTO users ...');
 * await push(client, 'emails', { to: 'a@example.com' }, { priority: 'high', delay: '10 minutes' });
 * await client.query('COMMIT');
 *
 * // A job that runs once both others completed:
 * const a = await push(client, 'etl', { step: 'extract' });
 * const b = await push(client, 'etl', { step: 'fetch' });
 * await push(client, 'etl', { step: 'merge' }, { dependsOn: [a, b], tags: ['nightly'] });
 * ```
 */
export async function push<P = unknown>(client: Queryable, queue: string, payload?: P, opts?: PushOptions): Promise<JobId> {
  const values: unknown[] = [queue, payloadJson(payload, 'payload')];
  const sql = `SELECT queue_push($1::text, $2::jsonb${optionArgs(opts, values)})::text AS id`;
  return withPushSpan(queue, 1, async () => {
    const res = await client.query<{ id: string }>(sql, values);
    return res.rows[0]!.id;
  });
}

/**
 * Pushes many jobs with the same options in one statement (`queue_push_batch`)
 * on the caller's client; returns their ids in payload order. Same transaction
 * rules as {@link push}. With a `dedupeKey` each payload behaves as a separate push.
 * With `dependsOn`, every job waits for the same dependencies; `tags` and
 * `batch` apply to each job.
 *
 * @param client - a `pg.Client`, `pg.PoolClient` (inside your transaction) or `pg.Pool`
 * @param queue - the queue's name
 * @param payloads - JSON values, one per job
 * @param opts - the same options as {@link push}
 * @returns the ids, in the order of `payloads`
 *
 * @example
 * ```ts
 * const ids = await pushBatch(pool, 'thumbnails', images.map((id) => ({ id })), { priority: 'low' });
 * ```
 */
export async function pushBatch<P = unknown>(
  client: Queryable, queue: string, payloads: readonly P[], opts?: PushOptions,
): Promise<JobId[]> {
  if (!Array.isArray(payloads)) throw new TypeError('payloads must be an array');
  if (payloads.length === 0) return [];
  // One JSON array, split on the server in order: no array-literal quoting involved.
  const values: unknown[] = [queue, '[' + payloads.map((p, i) => payloadJson(p, `payloads[${i}]`)).join(',') + ']'];
  // The ids come back as one comma-separated text in push order (one row to
  // parse instead of one per job: most of a large batch's client CPU).
  const sql = `SELECT string_agg(t.id::text, ',' ORDER BY t.n) AS ids FROM queue_push_batch($1::text,
      ARRAY(SELECT e FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n)${optionArgs(opts, values)})
      WITH ORDINALITY AS t(id, n)`;
  return withPushSpan(queue, payloads.length, async () => {
    const res = await client.query<{ ids: string | null }>(sql, values);
    const ids = res.rows[0]?.ids;
    return typeof ids === 'string' && ids !== '' ? ids.split(',') : [];
  });
}
