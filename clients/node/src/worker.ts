import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { Client, Pool, type ClientConfig, type PoolClient, type PoolConfig, type QueryConfig, type QueryResult, type QueryResultRow } from 'pg';
import { type BackoffOptions, backoffDelay } from './backoff';
import { LeaseLostError, MaxRuntimeExceededError, RetryIn, WorkerStoppedError, asError, describeError, errorMessage } from './errors';
import { type Interval, intervalToSql } from './interval';
import { Listener, type WakeSource } from './listener';
import type { JobId } from './push';
import { jobTracer, withJobSpan } from './telemetry';
import { type Dependency, dependencies } from './workflow';
import { LIBRARY_NAME, VERSION } from './version';

/**
 * A claimed job, as a handler sees it.
 *
 * @typeParam P - the payload's type
 */
export interface Job<P = any> {
  /** The job's id. */
  readonly id: JobId;
  /** The queue it was claimed from. */
  readonly queue: string;
  /** Its JSON payload. */
  readonly payload: P;
  /** Its priority (lower runs first). */
  readonly priority: number;
  /** Its serial group, or null. */
  readonly serialGroup: string | null;
  /** This claim's number (1 for the first try): what ack, fail, touch and progress are given. */
  readonly attempt: number;
  /** Attempts allowed in total. */
  readonly maxAttempts: number;
  /** When the job was pushed. */
  readonly createdAt: Date;
  /** Until when this worker holds the job (approximate after a touch: server time of the claim plus client-measured extensions). */
  readonly leaseUntil: Date;
  /** The name of the worker running it. */
  readonly worker: string;
  /**
   * Fires when the worker stops hard (the grace of {@link Worker.stop} ran
   * out; reason {@link WorkerStoppedError}), the lease was lost (reason
   * {@link LeaseLostError}) or the handler ran past its `maxRuntimeMs`
   * (reason {@link MaxRuntimeExceededError}; the job has then been failed).
   * The job's outcome is then ignored: stop working.
   */
  readonly signal: AbortSignal;
  /**
   * Reports progress (`queue_progress`, with this claim's attempt); shown by `queue_job(id) -> 'progress'`.
   *
   * @param current - 0 ≤ current ≤ total
   * @param total - at least 1
   * @param message - optional text
   * @returns false when this claim no longer holds the job
   */
  progress(current: number, total: number, message?: string): Promise<boolean>;
  /**
   * Extends the lease now (`queue_touch`). The worker already does this on its
   * own at half the job's timeout; call it only for a longer extension.
   *
   * @param extend - the new lease from now; default the job's timeout
   * @returns false when this claim no longer holds the job
   */
  touch(extend?: Interval): Promise<boolean>;
  /**
   * The jobs this one depends on (`queue_dependencies`), in id order, with
   * their status and result: how a handler reads its inputs. Runs on the
   * worker's own pool; empty for a job pushed without `dependsOn`.
   *
   * @typeParam R - the dependencies' result type
   */
  dependencies<R = any>(): Promise<Dependency<R>[]>;
}

/**
 * A job handler: resolves to the job's result (stored as JSON by `queue_ack`;
 * `undefined` stores none) or throws to fail the attempt. Throw
 * {@link PermanentError} to skip retries, {@link RetryIn} to choose the delay.
 *
 * @typeParam P - the payload's type
 */
export type Handler<P = any> = (job: Job<P>) => unknown;

/**
 * A queue's handler with options of its own, in {@link WorkerOptions.handlers}:
 * `{ handler: async (job) => ..., maxRuntimeMs: 30_000 }`.
 *
 * @typeParam P - the payload's type
 */
export interface HandlerOptions<P = any> {
  /** The handler. */
  handler: Handler<P>;
  /** This queue's limit on a handler's run time, in ms; wins over the worker's {@link WorkerOptions.maxRuntimeMs}. */
  maxRuntimeMs?: number;
}

/** Emitted when a handler starts. */
export interface JobStartEvent {
  /** The job. */
  job: Job;
}

/** Emitted after a handler resolved and the worker acked (or tried to ack) the job. */
export interface JobCompleteEvent {
  /** The job. */
  job: Job;
  /** What the handler resolved to. */
  result: unknown;
  /** How long the handler ran, in milliseconds. */
  durationMs: number;
  /** True when the ack (`queue_ack_batch`, or `queue_ack`) committed and completed the job; false when the claim was stale (the lease had run out and the job was claimed again). */
  acked: boolean;
}

/** Emitted after a handler threw and the worker recorded the failure. */
export interface JobFailEvent {
  /** The job. */
  job: Job;
  /** What the handler threw; a {@link MaxRuntimeExceededError} when it ran past its max runtime. */
  error: unknown;
  /** How long the handler ran, in milliseconds. */
  durationMs: number;
  /** The job's new status from `queue_fail` (`retrying`, `pending`, `failed`), or null when the claim was stale or the call could not be made. */
  status: string | null;
  /** Whether retries were skipped on purpose ({@link PermanentError}). */
  permanent: boolean;
  /** The retry delay asked for ({@link RetryIn} / `retryInMs`), if any. */
  retryIn: string | null;
}

/** Emitted when a job is given back at a hard stop. */
export interface JobReleaseEvent {
  /** The job. */
  job: Job;
  /** `queue_release` (attempt not counted); `none` when it could not be called (the database was away, or the extension is older than 0.2.0 and has no `queue_release`): the lease brings the job back. */
  via: 'queue_release' | 'none';
  /** Whether the job went back to the queue. */
  released: boolean;
}

/** Emitted when a touch found that this worker no longer holds the job. */
export interface JobLostEvent {
  /** The job. */
  job: Job;
}

/** Emitted each time the LISTEN connection is in place. */
export interface ListenEvent {
  /** False the first time, true after a reconnect. */
  reconnect: boolean;
}

/** The worker's events and their arguments. */
export interface WorkerEventMap {
  /** A handler started. */
  'job:start': [JobStartEvent];
  /** A handler resolved; the job was acked. */
  'job:complete': [JobCompleteEvent];
  /** A handler threw; the failure was recorded. */
  'job:fail': [JobFailEvent];
  /** A job was given back at a hard stop. */
  'job:release': [JobReleaseEvent];
  /** The lease of a running job was lost. */
  'job:lost': [JobLostEvent];
  /** LISTEN is in place (again). */
  listen: [ListenEvent];
  /** Something failed and will be retried (connection lost, a call refused). Without a listener, errors go to `logger.error`. */
  error: [Error];
  /** The worker has stopped. */
  stop: [];
}

/** Where the worker writes errors nobody listens for. */
export interface Logger {
  /** Writes one error. */
  error(message: string, err?: unknown): void;
}

/** Options of {@link Worker}. */
export interface WorkerOptions {
  /** A libpq connection string (`postgres://user@host:5432/db`). Without it (and without `pool.connectionString`) the PG* environment variables apply. */
  connectionString?: string;
  /** Further `pg.Pool` settings (host, user, ssl, max, ...). The worker owns the pool it makes from them. */
  pool?: PoolConfig;
  /**
   * One handler per queue name: `{ emails: async (job) => ... }`, or with
   * options of its own: `{ emails: { handler, maxRuntimeMs: 30_000 } }`.
   */
  handlers: Record<string, Handler | HandlerOptions>;
  /** How many handlers run at once, at most. Default 10. */
  concurrency?: number;
  /** The worker's name in `queue_pop`, `queue_heartbeat` and `application_name`. Default `<host>:<pid>:<random>`. */
  name?: string;
  /** The most jobs one `queue_pop` claims. Default: the free capacity (up to `concurrency`). */
  maxBatch?: number;
  /** How often every queue is polled anyway, in case a notification was missed. Default 5 000 ms with LISTEN, 1 000 ms with `pooler` (where it bounds each server-side wait of a worker serving several queues). */
  pollIntervalMs?: number;
  /** How often the worker calls `queue_heartbeat`. Default 30 000 ms (a worker is stale after 2 minutes). */
  heartbeatIntervalMs?: number;
  /** Default grace of {@link Worker.stop} and of signal-triggered stops. Default 10 000 ms. */
  graceMs?: number;
  /** Install SIGTERM and SIGINT handlers that stop gracefully (a second signal stops at once). Default false. */
  handleSignals?: boolean;
  /**
   * Behind PgBouncer in transaction mode: no LISTEN connection, no named
   * prepared statements; an idle worker claims with
   * `queue_pop(queue, name, n, wait => poolerWaitMs)`, which sleeps in the
   * server until a job of the queue is claimable. Default false.
   */
  pooler?: boolean;
  /** With `pooler`: the longest one claim waits in the server, in ms (with several queues, at most `pollIntervalMs`). Default 5 000. A stop cancels a wait in flight. */
  poolerWaitMs?: number;
  /** Reconnect and retry backoff. Default 100 ms doubling up to 30 s. */
  backoff?: BackoffOptions;
  /** Where errors go when nothing listens for `error`. Default `console`. */
  logger?: Logger;
  /**
   * The longest a handler may run, in ms from its start (a queue's
   * {@link HandlerOptions.maxRuntimeMs} wins). Past it the worker stops
   * extending the job's lease, aborts `job.signal` with a
   * {@link MaxRuntimeExceededError}, and fails the attempt at once with
   * `queue_fail` (`max_runtime exceeded: the handler ran longer than 30s`):
   * an ordinary failure, retried with the job's backoff up to its
   * `max_attempts`, then a dead letter. Whatever the handler returns or
   * throws afterwards is ignored. JavaScript cannot stop a function from
   * outside: a handler that ignores its signal keeps running, and keeps its
   * concurrency slot until it returns. Default: no limit (a running handler
   * keeps its lease however long it takes). At most 2 147 483 647 (about 24.8 days).
   */
  maxRuntimeMs?: number;
}

/** Options of {@link Worker.stop}. */
export interface StopOptions {
  /** How long running handlers may take to finish before their jobs are given back. Default: the worker's `graceMs`. */
  graceMs?: number;
}

/** The worker's state. */
export type WorkerState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/**
 * A claimed job's row ({@link CLAIM_SQL}): its id, its payload (parsed by
 * node-postgres as any jsonb is) and the rest in one JSON array ({@link ClaimMeta}):
 * one field to read and one native JSON.parse per row, where seven columns
 * took seven fields and seven type parsers (and two timestamptz texts
 * node-postgres's date parser: two regular expressions and a Date.UTC each).
 * The queue is not a column: the claim names it.
 */
interface ClaimRow {
  id: string;
  payload: unknown;
  meta: string;
}

/**
 * The JSON array of a {@link ClaimRow}: priority, serial group, attempt, max
 * attempts, the lease's end and the job's creation (milliseconds since the
 * epoch, whole, as a JavaScript Date holds them) and the lease left (ms).
 */
type ClaimMeta = [number, string | null, number, number, number, number, number];

/** The columns of {@link ClaimMeta}, from a row of `queue_pop` named `q`. */
const CLAIM_META = `json_build_array(q.priority, q.serial_group, q.attempt, q.max_attempts,
         floor(extract(epoch FROM q.lease_until) * 1000), floor(extract(epoch FROM q.created_at) * 1000),
         (extract(epoch FROM q.lease_until - now()) * 1000)::float8)::text`;

/** A job's slot: in {@link Worker.running} from its claim until its ack committed (or it failed, or was given back). */
interface Entry {
  job: JobImpl;
  leaseMs: number;
  phase: 'running' | 'settling';
  /** Given back at a hard stop: never ack or fail it afterwards (the claim may be someone else's). */
  released: boolean;
  /** Settled, released or past its max runtime: stop touching. */
  finished: boolean;
  /** When its lease is next extended (`performance.now()` time; see {@link Worker.sweepTouches}). */
  touchAt: number;
  /** A `queue_touch` of it is on its way (it schedules the next one). */
  touching: boolean;
  done: Promise<void>;
  /** The max runtime's timer while the handler runs ({@link Worker.armDeadline}). */
  deadline: NodeJS.Timeout | null;
  /** Set when the handler ran past its max runtime: the job was failed with it, the handler's outcome no longer counts. */
  overran: MaxRuntimeExceededError | null;
  /** With a max runtime: settles once the failure for running past it is recorded (never, if the handler finished in time). */
  overrunFailed: Promise<void> | null;
}

/**
 * Settles once a job's outcome is recorded: when its run ends, or, for a
 * handler past its max runtime, once that failure is: a stop does not wait
 * for a handler that ignores its aborted signal.
 */
function recorded(entry: Entry): Promise<void> {
  return entry.overrunFailed === null ? entry.done : Promise.race([entry.done, entry.overrunFailed]);
}

/** Stops a job's max-runtime clock, if it runs. */
function clearDeadline(entry: Entry): void {
  if (entry.deadline === null) return;
  clearTimeout(entry.deadline);
  entry.deadline = null;
}

/** A queue's handler and its limits, as the worker keeps them. */
interface QueueHandler {
  fn: Handler;
  /** Its max runtime in ms, or null for none. */
  maxRuntimeMs: number | null;
}

/** The longest max runtime a timer can wait (setTimeout's limit, 2^31 - 1 ms); a longer one would fire at once. */
const MAX_RUNTIME_LIMIT_MS = 2_147_483_647;

/** A max runtime as given: undefined, or a positive, finite number of ms a timer can wait. */
function checkMaxRuntime(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > MAX_RUNTIME_LIMIT_MS) {
    throw new TypeError(`${what} must be a positive, finite number of milliseconds, at most ${MAX_RUNTIME_LIMIT_MS} (about 24.8 days), got ${String(v)}`);
  }
  return v;
}

type CallResult<T> = { kind: 'ok'; value: T } | { kind: 'rejected'; error: Error } | { kind: 'gave-up'; error: Error };

/** The two outcomes of an ack that got through, shared by every job (read only). */
const ACKED: CallResult<boolean> = Object.freeze({ kind: 'ok', value: true });
const STALE: CallResult<boolean> = Object.freeze({ kind: 'ok', value: false });

/**
 * One finished job waiting in the acker for its `queue_ack_batch`: what
 * `queue_ack(id, result, attempt)` would have been given, and how to tell the
 * waiting slot the outcome (`value`: whether the ack completed the job).
 */
interface PendingAck {
  /** The job's id, as the claim returned it (decimal text). */
  id: string;
  /** The claim's attempt: a stale claim is refused, not applied. */
  attempt: number;
  /** The result as JSON text, or null for none (already serialised: a result that cannot be never gets here). */
  json: string | null;
  /** Its size in UTF-8 bytes (0 for none), for {@link ACK_BATCH_MAX_BYTES}. */
  bytes: number;
  /** Settles the slot's wait: ok (acked or refused as stale), rejected (the result could not be stored) or gave-up. */
  settle: (outcome: CallResult<boolean>) => void;
  /** The job's slot (in {@link Worker.running} until the ack committed): a job claimed in the ack's own statement takes it over. */
  entry: Entry;
}

/**
 * A row of {@link ACK_CLAIM_SQL}: the ids the ack completed (the same on every
 * row) and a claimed job, or NULLs (id null) when none was claimed.
 */
interface AckClaimRow extends Omit<ClaimRow, 'id'> {
  acked: unknown;
  after_the_ack: boolean | null;
  id: string | null;
}

type Outcome = { ok: true; result: unknown } | { ok: false; error: unknown };

const RESOLVED: Promise<void> = Promise.resolve();

const QUEUE_NAME = /^[A-Za-z0-9_.:-]{1,57}$/;

const CLAIM_SQL = `SELECT q.id::text AS id, q.payload, ${CLAIM_META} AS meta
  FROM queue_pop($1::text, $2::text, $3::int) AS q`;
const CLAIM_WAIT_SQL = CLAIM_SQL.replace('$3::int)', '$3::int, wait => $4::interval)');
const ACK_SQL = 'SELECT queue_ack($1::bigint, $2::jsonb, $3::int) AS ok';
// The ids come back as one comma-separated text (split in one native call;
// node-postgres's array parser walks a text[] character by character in
// JavaScript), in the claim's own spelling (id::text), so the two compare exactly.
const ACK_BATCH_SQL = "SELECT array_to_string(queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[]), ',') AS ids";
/**
 * The acks of a batch and a claim of the next jobs, in one statement (one
 * commit, one round trip): what the acker sends when a queue may have work
 * ({@link Worker.ackAndClaim}). The first row carries the ids the ack completed
 * (one comma-separated text, like {@link ACK_BATCH_SQL}; NULL on the other rows, which would
 * otherwise each repeat the array: c rows of c ids to send and parse); the
 * claimed jobs come with the columns of {@link CLAIM_SQL}, or one row with a
 * NULL id when none was claimed.
 *
 * The claim must run after the ack, so that a serial group the ack releases
 * can hand its next job to this very claim: the claim is a LATERAL subquery
 * that reads the ack's output (`after_the_ack`), so it can only run for the
 * ack's row, once that row exists; OFFSET 0 keeps it from being flattened into
 * the join, and the ack's subquery is never flattened because its call is
 * volatile. It never waits (no `wait`) and uses no session state: the same
 * statement works through a transaction-mode pooler.
 */
const ACK_CLAIM_SQL = `SELECT CASE WHEN coalesce(p.ordinality, 1) = 1 THEN array_to_string(a.acked, ',') END AS acked, p.after_the_ack, p.id, p.payload, p.meta
  FROM (SELECT queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[]) AS acked) AS a
  LEFT JOIN LATERAL (SELECT q.id::text AS id, q.payload, ${CLAIM_META} AS meta,
                            a.acked IS NOT NULL AS after_the_ack, q.ordinality
                       FROM queue_pop($4::text, $5::text, $6::int) WITH ORDINALITY AS q OFFSET 0) AS p ON true`;
/** The most acks one `queue_ack_batch` carries (the rest go into the next call): bounds the statement's size and its row locks. */
const ACK_BATCH_MAX = 1000;
/**
 * And the most result JSON one call carries, in UTF-8 bytes (the statement's
 * array text, with its escapes, is at most about twice that), past its first
 * ack: an ack whose result alone is larger goes in a call of its own. Without
 * it, 50 handlers each returning a 10 MB result (`queue.max_result_size`'s
 * default) would make one 500 MB statement; a thousand could pass the
 * server's 1 GB message limit, which drops the connection, and a batch that
 * can never get through would be retried forever.
 */
const ACK_BATCH_MAX_BYTES = 8 * 1024 * 1024;
const FAIL_SQL = 'SELECT queue_fail($1::bigint, $2::text, $3::int, $4::interval, $5::boolean) AS status';
const TOUCH_SQL = 'SELECT queue_touch($1::bigint, $2::interval, $3::int) AS ok';
const PROGRESS_SQL = 'SELECT queue_progress($1::bigint, $2::int, $3::int, $4::text, $5::int) AS ok';
const RELEASE_SQL = 'SELECT queue_release($1::bigint, $2::int) AS ok';
const HEARTBEAT_SQL = 'SELECT queue_heartbeat($1::text, $2::jsonb)';

/**
 * The statements every job goes through, by name: outside pooler mode each
 * pooled connection prepares them once (see {@link Worker.statement}). A name
 * stands for one text only (pg refuses a second text under a name).
 */
const STATEMENT_NAMES: ReadonlyMap<string, string> = new Map([
  [CLAIM_SQL, 'queue_client_claim'],
  [ACK_CLAIM_SQL, 'queue_client_ack_claim'],
  [ACK_BATCH_SQL, 'queue_client_ack_batch'],
  [ACK_SQL, 'queue_client_ack'],
  [FAIL_SQL, 'queue_client_fail'],
]);

/** SQLSTATE of a call the server does not have: the extension is older than this library. */
const UNDEFINED_FUNCTION = '42883';

/**
 * Sends a protocol CancelRequest for whatever `client` is running, on a
 * connection of its own (what libpq's PQcancel does; through PgBouncer the
 * pooler forwards it to the server connection the client is linked to).
 */
function sendCancel(client: Client): Promise<void> {
  const c = client as unknown as { processID?: number | null; secretKey?: number | null; host?: string; port?: number };
  if (c.processID == null || c.secretKey == null) return Promise.resolve();
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4); // the cancel request code
  packet.writeInt32BE(c.processID, 8);
  packet.writeInt32BE(c.secretKey, 12);
  return new Promise((resolve) => {
    const host = c.host || 'localhost';
    const port = c.port || 5432;
    const socket = host.startsWith('/') ? netConnect(`${host}/.s.PGSQL.${port}`) : netConnect(port, host);
    const done = (): void => {
      socket.destroy();
      resolve();
    };
    socket.setTimeout(2000, done);
    socket.on('error', done);
    socket.on('close', done);
    socket.on('end', done);
    // Like libpq: send, then wait for the other side to close. (Closing first
    // makes PgBouncer 1.18 abort while it forwards the cancel.)
    socket.on('connect', () => socket.write(packet));
  });
}

/** Connection failures and server-side conditions that go away: retry. Anything with another SQLSTATE is a refusal. */
function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return true; // network errors, "Connection terminated", timeouts
  return code.startsWith('08') || code.startsWith('53') || code.startsWith('57P')
    || code === '40001' || code === '40P01' || code === '55P03' || code === '57014';
}

function isPermanent(err: unknown): boolean {
  try {
    return (err as { permanent?: unknown })?.permanent === true;
  } catch {
    return false; // a getter or a Proxy that throws: an ordinary failure
  }
}

/** The retry delay an error asks for, or null; throws only for a RetryIn delay that is not one. */
function retryDelayOf(err: unknown): string | null {
  let delay: Interval | undefined;
  let ms: unknown;
  try {
    if (err instanceof RetryIn) delay = err.retryIn;
    else ms = (err as { retryInMs?: unknown })?.retryInMs;
  } catch {
    return null; // a getter or a Proxy that throws: no delay asked for
  }
  if (delay !== undefined) return intervalToSql(delay, 'RetryIn delay');
  if (typeof ms === 'number' && Number.isFinite(ms)) return `${ms} milliseconds`;
  return null;
}

/**
 * The three array parameters of a `queue_ack_batch($1::bigint[], $2::int[],
 * $3::jsonb[])` of `batch`, as Postgres array texts (`{1,2}`, `{1,1}`,
 * `{NULL,"{\"n\": 1}"}`), in one pass: what node-postgres makes of three
 * JavaScript arrays, without the arrays and its per-element checks (ids and
 * attempts are digits only; a result is quoted as node-postgres quotes an
 * array element).
 */
function ackArrays(batch: readonly PendingAck[]): [string, string, string] {
  let ids = '{';
  let attempts = '{';
  let results = '{';
  for (let i = 0; i < batch.length; i++) {
    const a = batch[i]!;
    const sep = i === 0 ? '' : ',';
    ids += sep + a.id;
    attempts += sep + a.attempt;
    results += sep + (a.json === null ? 'NULL' : `"${a.json.replace(/[\\"]/g, '\\$&')}"`);
  }
  return [ids + '}', attempts + '}', results + '}'];
}

/**
 * Which acks of a batch completed their jobs, from the ids `queue_ack_batch`
 * returned ({@link ACK_BATCH_SQL}: one comma-separated text): null when it
 * returned as many ids as the batch has, which are then all of them (a batch
 * carries each id once, and the server returns each id it completed once,
 * only ids it was given); else the set of those it returned. A reply that is
 * not text (not expected) completes nobody we can vouch for.
 */
function completedIds(text: unknown, batchSize: number): Set<string> | null {
  if (typeof text !== 'string' || text === '') return new Set();
  let count = 1;
  for (let i = text.indexOf(','); i !== -1; i = text.indexOf(',', i + 1)) count++;
  return count === batchSize ? null : new Set(text.split(','));
}

/**
 * Settles each ack of a batch that got through, by the ids `queue_ack_batch`
 * returned (`ids`, see {@link completedIds}): those completed, the others were
 * stale or unknown.
 */
function settleAcks(batch: readonly PendingAck[], ids: unknown): void {
  const completed = completedIds(ids, batch.length);
  for (const a of batch) a.settle(completed === null || completed.has(a.id) ? ACKED : STALE);
}

class JobImpl implements Job {
  readonly id: JobId;
  readonly queue: string;
  readonly payload: unknown;
  readonly priority: number;
  readonly serialGroup: string | null;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly createdAt: Date;
  leaseUntil: Date;
  readonly worker: string;
  /**
   * Made when the handler first reads {@link JobImpl.signal}: an
   * AbortController costs more than the rest of a job's bookkeeping, and most
   * handlers never look at it.
   */
  private controller: AbortController | null = null;
  /** The abort's reason, once aborted (an abort before the signal exists is replayed on it). */
  private abortReason: Error | null = null;

  constructor(row: ClaimRow, meta: ClaimMeta, queue: string, worker: string, private readonly pool: Pool) {
    this.id = row.id;
    this.queue = queue;
    this.payload = row.payload;
    this.priority = meta[0];
    this.serialGroup = meta[1];
    this.attempt = meta[2];
    this.maxAttempts = meta[3];
    this.leaseUntil = new Date(meta[4]);
    this.createdAt = new Date(meta[5]);
    this.worker = worker;
  }

  get signal(): AbortSignal {
    if (this.controller === null) {
      this.controller = new AbortController();
      if (this.abortReason !== null) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  /** Aborts {@link JobImpl.signal} (the first reason wins, as with an AbortController). */
  abort(reason: Error): void {
    if (this.abortReason !== null) return;
    this.abortReason = reason;
    this.controller?.abort(reason);
  }

  async progress(current: number, total: number, message?: string): Promise<boolean> {
    if (!Number.isInteger(current) || !Number.isInteger(total)) throw new TypeError('progress: current and total must be integers');
    const res = await this.pool.query<{ ok: boolean }>(PROGRESS_SQL, [this.id, current, total, message ?? null, this.attempt]);
    return res.rows[0]!.ok === true;
  }

  dependencies<R = any>(): Promise<Dependency<R>[]> {
    return dependencies<R>(this.pool, this.id);
  }

  async touch(extend?: Interval): Promise<boolean> {
    const ext = extend === undefined ? null : intervalToSql(extend, 'extend');
    const started = Date.now();
    const res = await this.pool.query<{ ok: boolean }>(TOUCH_SQL, [this.id, ext, this.attempt]);
    const ok = res.rows[0]!.ok === true;
    if (ok && typeof extend === 'number') this.leaseUntil = new Date(started + extend);
    return ok;
  }
}

/**
 * Runs handlers for jobs of one or more queues.
 *
 * - Claims with `queue_pop(queue, name, n)`, n up to the free capacity; never
 *   more than `concurrency` handlers at once (a job counts until its ack
 *   committed).
 * - Acks in batches with `queue_ack_batch(ids, attempts, results)`: one call
 *   in flight at a time carries every ack that finished meanwhile (one commit
 *   for all of them); `queue_ack(id, result, attempt)` per job on an extension
 *   without it, and for the jobs of a batch the server refused.
 * - Acks ride with claims: when a queue may have work and the worker is not
 *   stopping, the batch's statement also claims up to as many jobs of it as
 *   the batch frees (`queue_ack_batch` then `queue_pop`, one commit); they
 *   take over the acked jobs' slots in that commit, so at concurrency 1 a job
 *   costs one commit, not two. If that statement fails, the batch is acked
 *   alone as above. On a throw fails with
 *   `queue_fail(id, error, attempt, retry_in, permanent)`. A stale claim
 *   (lease lost, job claimed again) changes nothing and does not throw.
 * - Keeps leases alive with `queue_touch` at half the job's timeout, and
 *   heartbeats with `queue_heartbeat`. With `maxRuntimeMs`, a handler that
 *   runs longer has its attempt failed at once and its signal aborted.
 * - Wakes on `LISTEN "queue_<name>"` (one connection), polls as a fallback,
 *   reconnects with backoff. With `pooler` (PgBouncer in transaction mode):
 *   no LISTEN; an idle worker waits inside `queue_pop(..., wait)` instead.
 * - {@link Worker.stop} claims nothing more, lets handlers finish within the
 *   grace, then gives their jobs back (`queue_release`).
 *
 * @example
 * ```ts
 * const worker = new Worker({
 *   connectionString: process.env.DATABASE_URL,
 *   handlers: { emails: async (job) => sendMail(job.payload) },
 *   concurrency: 20,
 *   handleSignals: true,
 * });
 * await worker.start();
 * ```
 */
export class Worker extends EventEmitter<WorkerEventMap> {
  /** The worker's name (in `queue_pop`, `queue_heartbeat`, `application_name`). */
  readonly name: string;
  /** The most handlers that run at once. */
  readonly concurrency: number;
  /** The queues served. */
  readonly queues: readonly string[];

  private readonly handlers: Map<string, QueueHandler>;
  private readonly pool: Pool;
  private readonly listenConfig: ClientConfig;
  private readonly maxBatch: number;
  private readonly pollIntervalMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly graceMs: number;
  private readonly handleSignals: boolean;
  private readonly pooler: boolean;
  private readonly poolerWaitMs: number;
  private readonly claimConfig: ClientConfig;
  /** Pooler mode: the claim loop's own connection, so that a cancel can only ever hit a claim (which rolls back). */
  private claimClient: Client | null = null;
  /** The claim connection while a claim waits on it in the server. */
  private waitingOn: Client | null = null;
  private readonly backoff: Required<BackoffOptions>;
  private readonly logger: Logger;

  private currentState: WorkerState = 'new';
  private readonly running = new Set<Entry>();
  private readonly dirty = new Set<string>();
  private rotation = 0;
  private wakePending = false;
  private wakeWaiter: (() => void) | null = null;
  private wakeSource: WakeSource | null = null;
  private endBackoff: (() => void) | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly stopController = new AbortController();
  private stopping: Promise<void> | null = null;
  private hard = false;
  private graceTimer: NodeJS.Timeout | null = null;
  private graceDeadline = Infinity;
  private endGrace: (() => void) | null = null;
  private startedAt = new Date();
  private signalHandler: ((signal: NodeJS.Signals) => void) | null = null;
  /** Acks waiting for the next `queue_ack_batch` (those that finished while one was in flight), oldest first. */
  private readonly ackQueue: PendingAck[] = [];
  /** Whether the acker's delivery loop runs (it runs while {@link Worker.ackQueue} has entries). */
  private ackerActive = false;
  /** The acker's latest delivery loop (settled when idle): what a stop waits for before closing the pool. */
  private ackerRun: Promise<void> = Promise.resolve();
  /**
   * The acker's pooled connection while a run of it lasts ({@link Worker.ackerQuery}):
   * checked out at its first call and back in the pool when the run ends (or
   * someone waits for a connection), instead of a checkout per call.
   */
  private ackerClient: PoolClient | null = null;
  /** Listens for errors of {@link Worker.ackerClient} between its calls (the pool's own listener is off while it is checked out). */
  private ackerClientError: ((err: Error) => void) | null = null;
  /** The lease timer ({@link Worker.sweepTouches}), and when it fires (`performance.now()` time; Infinity when unset). */
  private touchSweep: NodeJS.Timeout | null = null;
  private touchSweepAt = Infinity;
  /** False once the server said it has no `queue_ack_batch` (42883: an older extension): every ack is then a `queue_ack` of its own. */
  private ackBatchAvailable = true;

  /**
   * Makes a worker; nothing connects before {@link Worker.start}.
   *
   * @param options - connection, handlers, concurrency and the rest of {@link WorkerOptions}
   * @throws TypeError for a bad queue name, a missing handler or a bad number
   */
  constructor(options: WorkerOptions) {
    // A listener that returns a rejected promise (an async listener that
    // throws) is reported like one that throws, not left an unhandled
    // rejection, which ends the process (see the captureRejectionSymbol method).
    super({ captureRejections: true });
    if (!options || typeof options !== 'object') throw new TypeError('Worker options are required');
    const handlers = options.handlers;
    if (!handlers || typeof handlers !== 'object' || Object.keys(handlers).length === 0) {
      throw new TypeError('Worker needs at least one handler: { handlers: { queueName: async (job) => ... } }');
    }
    const defaultMaxRuntime = checkMaxRuntime(options.maxRuntimeMs, 'maxRuntimeMs') ?? null;
    const queueHandlers = new Map<string, QueueHandler>();
    for (const [queue, spec] of Object.entries(handlers)) {
      if (!QUEUE_NAME.test(queue)) throw new TypeError(`bad queue name "${queue}": 1-57 characters of [A-Za-z0-9_.:-]`);
      if (typeof spec === 'function') {
        queueHandlers.set(queue, { fn: spec, maxRuntimeMs: defaultMaxRuntime });
        continue;
      }
      if (!spec || typeof spec !== 'object' || typeof spec.handler !== 'function') {
        throw new TypeError(`the handler of queue "${queue}" is not a function (nor { handler: function, maxRuntimeMs? })`);
      }
      const own = checkMaxRuntime(spec.maxRuntimeMs, `the maxRuntimeMs of queue "${queue}"`);
      queueHandlers.set(queue, { fn: spec.handler, maxRuntimeMs: own ?? defaultMaxRuntime });
    }
    const positiveInt = (v: number | undefined, dflt: number, what: string, max = 1_000_000_000): number => {
      if (v === undefined) return dflt;
      if (!Number.isInteger(v) || v < 1 || v > max) throw new TypeError(`${what} must be an integer from 1 to ${max}, got ${v}`);
      return v;
    };
    this.handlers = queueHandlers;
    this.queues = Object.freeze([...this.handlers.keys()]);
    this.concurrency = positiveInt(options.concurrency, 10, 'concurrency', 10_000);
    this.maxBatch = Math.min(this.concurrency, positiveInt(options.maxBatch, this.concurrency, 'maxBatch', 10_000));
    this.pooler = options.pooler === true;
    this.pollIntervalMs = positiveInt(options.pollIntervalMs, this.pooler ? 1000 : 5000, 'pollIntervalMs');
    this.poolerWaitMs = positiveInt(options.poolerWaitMs, 5000, 'poolerWaitMs', 3_600_000);
    this.heartbeatIntervalMs = positiveInt(options.heartbeatIntervalMs, 30_000, 'heartbeatIntervalMs');
    this.graceMs = options.graceMs === undefined ? 10_000 : Math.max(0, Number(options.graceMs));
    this.handleSignals = options.handleSignals === true;
    this.backoff = {
      initialMs: positiveInt(options.backoff?.initialMs, 100, 'backoff.initialMs'),
      maxMs: positiveInt(options.backoff?.maxMs, 30_000, 'backoff.maxMs'),
    };
    this.logger = options.logger ?? console;
    this.name = options.name ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    if (typeof this.name !== 'string' || this.name.length === 0 || Buffer.byteLength(this.name) > 200) {
      throw new TypeError('name must be a non-empty string of at most 200 bytes');
    }

    const base: PoolConfig = { ...(options.pool ?? {}) };
    if (options.connectionString !== undefined) base.connectionString = options.connectionString;
    const appName = base.application_name ?? this.name;
    this.pool = new Pool({
      connectionTimeoutMillis: 10_000,
      max: Math.min(Math.max(2, this.concurrency + 1), 10),
      ...base,
      application_name: appName,
    });
    // An idle pooled connection that dies (terminated backend, restart) must not crash the process.
    this.pool.on('error', (err) => this.emitError(err, 'an idle pooled connection failed'));
    const { max: _max, min: _min, idleTimeoutMillis: _idle, allowExitOnIdle: _exit, maxUses: _uses, ...clientConfig } = base as PoolConfig & Record<string, unknown>;
    this.listenConfig = { ...(clientConfig as ClientConfig), application_name: `${appName} listen`.slice(0, 63), keepAlive: true };
    this.claimConfig = { connectionTimeoutMillis: 10_000, ...(clientConfig as ClientConfig), application_name: appName, keepAlive: true };
  }

  /** The worker's state: new, starting, running, stopping, stopped. */
  get state(): WorkerState {
    return this.currentState;
  }

  /** How many jobs are running (including those being acked). */
  get runningCount(): number {
    return this.running.size;
  }

  /**
   * Connects, registers the worker (`queue_heartbeat`), sets up LISTEN (unless
   * `pooler`) and starts claiming. Resolves once claiming has begun.
   *
   * @throws when the first heartbeat fails (wrong connection settings, no
   *   `queue` extension, no `queue_worker` role); the worker is then stopped.
   */
  async start(): Promise<void> {
    if (this.currentState !== 'new') throw new Error(`a worker starts once (it is ${this.currentState})`);
    this.currentState = 'starting';
    this.startedAt = new Date();
    try {
      await this.heartbeat();
    } catch (err) {
      this.currentState = 'stopped';
      await this.pool.end().catch(() => undefined);
      throw err;
    }
    if (this.currentState !== 'starting') return; // stop() was called meanwhile
    this.heartbeatTimer = setInterval(() => {
      this.heartbeat().catch((err) => this.emitError(err, 'queue_heartbeat failed'));
    }, this.heartbeatIntervalMs);
    if (!this.pooler) {
      this.wakeSource = new Listener(this.listenConfig, this.queues, {
        notify: (queue) => {
          this.dirty.add(queue);
          this.wake();
        },
        connected: (reconnect) => {
          // Wake-ups may have been missed while not listening: look at every queue,
          // now (the server is back: cut a claim backoff short).
          this.endBackoff?.();
          this.markAllDirty();
          this.safeEmit('listen', { reconnect });
        },
        error: (err) => this.emitError(err, 'the LISTEN connection failed; reconnecting'),
      }, this.backoff, Math.max(this.pollIntervalMs, 10_000));
      await this.wakeSource.start();
    }
    if (this.currentState !== 'starting') return; // stop() was called meanwhile
    this.pollTimer = setInterval(() => this.markAllDirty(), this.pollIntervalMs);
    if (this.handleSignals) this.installSignalHandlers();
    this.currentState = 'running';
    this.markAllDirty();
    this.loopDone = this.loop().catch((err) => this.emitError(err, 'the claim loop failed'));
  }

  /**
   * Stops: claims nothing more, lets running handlers finish within `graceMs`,
   * then aborts their signals and gives their jobs back at once with
   * `queue_release(id, attempt)` (the attempt is not counted). Resolves when
   * every connection is closed. Calling it again returns the same promise (a
   * shorter grace takes effect).
   *
   * @param options - `graceMs`, default the worker's `graceMs`
   */
  stop(options: StopOptions = {}): Promise<void> {
    const graceMs = Math.max(0, options.graceMs ?? this.graceMs);
    if (this.stopping) {
      this.shortenGrace(graceMs);
      return this.stopping;
    }
    this.stopping = this.doStop(graceMs);
    return this.stopping;
  }

  // ---------------------------------------------------------------- claiming

  private async loop(): Promise<void> {
    let failures = 0;
    while (this.currentState === 'running') {
      const free = this.concurrency - this.running.size;
      let queue = free > 0 ? this.nextDirtyQueue() : undefined;
      if (queue === undefined && free > 0 && this.pooler) {
        // Pooler mode, nothing known to be claimable: wait in the server, on the next queue in turn.
        queue = this.queues[this.rotation]!;
        this.rotation = (this.rotation + 1) % this.queues.length;
      }
      if (queue === undefined) {
        await this.waitForWake(); // no free capacity (or LISTEN mode): a freed slot, a NOTIFY or the poll wakes us
        continue;
      }
      const want = Math.min(free, this.maxBatch);
      // In pooler mode the last claim of a pass waits in the server when it finds nothing.
      const waitMs = this.pooler && this.dirty.size === 0
        ? (this.queues.length === 1 ? this.poolerWaitMs : Math.min(this.poolerWaitMs, this.pollIntervalMs))
        : null;
      let rows: ClaimRow[];
      try {
        rows = await this.claim(queue, want, waitMs);
        failures = 0;
      } catch (err) {
        if (this.currentState !== 'running') break; // e.g. the server-side wait, cancelled by stop()
        this.dirty.add(queue);
        failures++;
        const code = (err as { code?: unknown })?.code;
        this.emitError(err, code === UNDEFINED_FUNCTION && waitMs !== null
          ? 'queue_pop(text, text, integer, interval) is missing: pooler mode needs the queue extension 0.2.0 or later (ALTER EXTENSION queue UPDATE); retrying'
          : `queue_pop('${queue}') failed; retrying`);
        await this.sleepUnlessStopped(backoffDelay(failures, this.backoff));
        continue;
      }
      // Idle only after an empty claim: that claim marks the queue's sleeper slot,
      // so the next push wakes this worker at once (not in the notifier's next round).
      if (rows.length > 0) this.dirty.add(queue);
      if (this.currentState !== 'running') {
        // Claimed while stop() began: give them back untouched.
        await Promise.all(rows.map((row) => this.giveBack(this.newEntry(row, queue))));
        break;
      }
      for (const row of rows) this.startJob(row, queue);
    }
  }

  /**
   * One claim: on the pool, or in pooler mode on the claim connection, where
   * with `waitMs` it sleeps in the server until a job of the queue is
   * claimable (or the wait ends).
   */
  private async claim(queue: string, n: number, waitMs: number | null = null): Promise<ClaimRow[]> {
    if (!this.pooler) {
      const res = await this.pool.query<ClaimRow>(this.statement(CLAIM_SQL, [queue, this.name, n]));
      return res.rows;
    }
    const client = await this.claimConnection();
    if (waitMs === null) return (await client.query<ClaimRow>(CLAIM_SQL, [queue, this.name, n])).rows;
    if (this.currentState !== 'running') return [];
    this.waitingOn = client;
    try {
      return (await client.query<ClaimRow>(CLAIM_WAIT_SQL, [queue, this.name, n, `${waitMs} milliseconds`])).rows;
    } finally {
      this.waitingOn = null;
    }
  }

  /** The claim connection (pooler mode), connected on first use and again after it broke. */
  private async claimConnection(): Promise<Client> {
    if (this.claimClient) return this.claimClient;
    const client = new Client(this.claimConfig);
    const drop = (): void => {
      if (this.claimClient === client) this.claimClient = null;
      client.end().catch(() => undefined);
    };
    client.on('error', drop); // the failing claim rejects too; the loop retries with a new connection
    client.on('end', drop);
    try {
      await client.connect();
    } catch (err) {
      drop();
      throw err;
    }
    this.claimClient = client;
    return client;
  }

  /** Ends a server-side wait in flight: a cancel, repeated while it lasts (one that reaches the server before the statement is lost). The cancelled claim rolls back. */
  private async cancelServerWait(): Promise<void> {
    while (this.waitingOn) {
      await sendCancel(this.waitingOn).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200).unref());
    }
  }

  private nextDirtyQueue(): string | undefined {
    const n = this.queues.length;
    for (let i = 0; i < n; i++) {
      const idx = (this.rotation + i) % n;
      const q = this.queues[idx]!;
      if (this.dirty.has(q)) {
        this.dirty.delete(q);
        this.rotation = (idx + 1) % n;
        return q;
      }
    }
    return undefined;
  }

  private markAllDirty(): void {
    for (const q of this.queues) this.dirty.add(q);
    this.wake();
  }

  private wake(): void {
    if (this.wakeWaiter) this.wakeWaiter();
    else this.wakePending = true;
  }

  private waitForWake(): Promise<void> {
    if (this.wakePending) {
      this.wakePending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.wakeWaiter = () => {
        this.wakeWaiter = null;
        resolve();
      };
    });
  }

  /** The claim loop's backoff: ends early on stop() or when the LISTEN connection is back. */
  private sleepUnlessStopped(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const signal = this.stopController.signal;
      if (signal.aborted) return resolve();
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.endBackoff = null;
        resolve();
      };
      this.endBackoff = done;
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done);
    });
  }

  // ---------------------------------------------------------------- running

  private newEntry(row: ClaimRow, queue: string): Entry {
    const meta = JSON.parse(row.meta) as ClaimMeta;
    const leaseMs = meta[6];
    return {
      job: new JobImpl(row, meta, queue, this.name, this.pool),
      leaseMs: Number.isFinite(leaseMs) && leaseMs > 0 ? leaseMs : 60_000,
      phase: 'running',
      released: false,
      finished: false,
      touchAt: Infinity,
      touching: false,
      done: RESOLVED,
      deadline: null,
      overran: null,
      overrunFailed: null,
    };
  }

  private startJob(row: ClaimRow, queue: string): void {
    const entry = this.newEntry(row, queue);
    this.running.add(entry);
    entry.done = this.run(entry);
  }

  /**
   * Runs a job's handler (it starts in this very step, after `job:start`) and
   * settles the job: ack, or fail; never rejects. One async function per job
   * (no span, no closure) when no tracer provider is registered.
   */
  private async run(entry: Entry): Promise<void> {
    const { job } = entry;
    try {
      const { fn: handler, maxRuntimeMs } = this.handlers.get(job.queue)!;
      if (this.listenerCount('job:start') > 0) this.safeEmit('job:start', { job });
      const t0 = performance.now();
      this.scheduleTouch(entry, t0);
      if (maxRuntimeMs !== null) this.armDeadline(entry, maxRuntimeMs, t0);
      let outcome: Outcome;
      const tracer = jobTracer();
      if (tracer === null) {
        // No tracer provider registered: the API's no-op tracer would make a
        // span that records nothing; make none (and none of its closures).
        try {
          outcome = { ok: true, result: await handler(job) };
        } catch (error) {
          outcome = { ok: false, error };
        }
      } else {
        outcome = await withJobSpan<Outcome>(tracer, { id: job.id, queue: job.queue, attempt: job.attempt, worker: this.name }, async () => {
          let o: Outcome;
          try {
            o = { ok: true, result: await handler(job) };
          } catch (error) {
            o = { ok: false, error };
          }
          // The span shows the job's outcome: past its max runtime, that failure.
          const error = entry.overran ?? (o.ok ? null : o.error);
          return error === null ? { ok: true, value: o } : { ok: false, error, value: o };
        });
      }
      clearDeadline(entry); // returned in time: no overrun while it is acked
      if (entry.overran !== null) {
        // Failed when its time ran out: what the handler did since does not
        // count. Its slot frees now that it returned (and the failure is recorded).
        await entry.overrunFailed;
        return;
      }
      const durationMs = performance.now() - t0;
      entry.phase = 'settling';
      if (entry.released) return; // given back at a hard stop: its outcome no longer counts
      if (outcome.ok) {
        let json: string | null = null;
        let serializeError: Error | null = null;
        try {
          json = outcome.result === undefined ? null : (JSON.stringify(outcome.result) ?? null);
        } catch (err) {
          serializeError = new TypeError(`the handler's result is not JSON-serializable: ${errorMessage(err)}`);
        }
        if (!serializeError) {
          // Waits until the ack committed (or was refused): the event, the freed
          // slot and the end of the touches all come after the outcome, as with one call per job.
          const r = await this.ack(entry, json);
          if (r.kind === 'ok') {
            this.safeEmit('job:complete', { job, result: outcome.result, durationMs, acked: r.value });
            return;
          }
          if (r.kind === 'gave-up') return; // the lease brings the job back
          serializeError = new Error(`queue_ack refused the result: ${r.error.message}`);
        }
        await this.fail(entry, serializeError, durationMs);
        return;
      }
      await this.fail(entry, outcome.error, durationMs);
    } catch (err) {
      this.emitError(err, `job ${job.id} failed inside the worker`);
    } finally {
      entry.finished = true; // no more touches
      clearDeadline(entry);
      // A slot freed here wakes the claim loop; one the ack's own claim already
      // took over (ackAndClaim, which wakes the loop itself) does not, once per job.
      if (this.running.delete(entry) || entry.released) this.wake();
    }
  }

  /**
   * Records a failed attempt (`queue_fail` with the claim's attempt) and emits `job:fail`.
   *
   * @param text - the error text to store; default what {@link describeError} makes of `error`
   */
  private async fail(entry: Entry, error: unknown, durationMs: number, text = describeError(error)): Promise<void> {
    const { job } = entry;
    const permanent = isPermanent(error);
    let retryIn: string | null = null;
    try {
      retryIn = retryDelayOf(error);
    } catch (err) {
      text += `\n(retry delay ignored: ${errorMessage(err)})`;
    }
    const what = `queue_fail(${job.id})`;
    let r = await this.call<{ status: string | null }>(FAIL_SQL, [job.id, text, job.attempt, retryIn, permanent], what);
    if (r.kind === 'rejected' && retryIn !== null) {
      // e.g. a RetryIn delay the server refuses: record the failure with the job's own backoff.
      text += `\n(retry delay ${retryIn} refused: ${r.error.message})`;
      retryIn = null;
      r = await this.call<{ status: string | null }>(FAIL_SQL, [job.id, text, job.attempt, null, permanent], what);
    }
    if (r.kind === 'rejected') {
      r = await this.call<{ status: string | null }>(FAIL_SQL,
        [job.id, `error not recorded (${r.error.message})`, job.attempt, null, permanent], what);
    }
    const status = r.kind === 'ok' ? r.value.status : null;
    this.safeEmit('job:fail', { job, error, durationMs, status, permanent, retryIn });
  }

  /**
   * Starts the clock of a handler's max runtime (`limitMs` from `t0`, the
   * handler's start). When it runs out while the handler still runs, the job
   * stops being touched, its signal aborts with a
   * {@link MaxRuntimeExceededError}, and the attempt is failed at once with
   * that error, an ordinary failure (backoff, max_attempts). The job keeps its
   * slot in {@link Worker.running} until the handler has returned: JavaScript
   * cannot stop it, and the concurrency limit counts what really runs.
   */
  private armDeadline(entry: Entry, limitMs: number, t0: number): void {
    let markRecorded!: () => void;
    entry.overrunFailed = new Promise<void>((resolve) => (markRecorded = resolve));
    entry.deadline = setTimeout(() => {
      entry.deadline = null;
      if (entry.phase !== 'running' || entry.released) return markRecorded();
      const error = new MaxRuntimeExceededError(limitMs);
      entry.overran = error;
      entry.phase = 'settling'; // failed here: a hard stop does not give it back
      entry.finished = true; // no more touches
      entry.job.abort(error);
      this.fail(entry, error, performance.now() - t0, error.message)
        .catch((err) => this.emitError(err, `failing job ${entry.job.id} past its max runtime failed`))
        .finally(markRecorded);
    }, limitMs);
  }

  /**
   * A query of the worker's hot path: a named statement, which each pooled
   * connection parses and plans once and then only binds and runs, except in
   * pooler mode, where a transaction-mode pooler could send the next call to
   * a server connection that never saw it prepared.
   *
   * @param text - the SQL; named if it is one of {@link STATEMENT_NAMES}
   * @param values - its parameters
   */
  private statement(text: string, values: unknown[]): QueryConfig {
    const name = this.pooler ? undefined : STATEMENT_NAMES.get(text);
    return name === undefined ? { text, values } : { name, text, values };
  }

  /**
   * A call that must get through: retried with backoff on connection trouble until the worker stops hard.
   *
   * @param viaAcker - on the acker's connection ({@link Worker.ackerQuery}), for the acker's own calls
   */
  private async call<T>(sql: string, values: unknown[], what: string, viaAcker = false): Promise<CallResult<T>> {
    for (let failures = 1; ; failures++) {
      try {
        const config = this.statement(sql, values);
        const res = await (viaAcker ? this.ackerQuery(config) : this.pool.query(config));
        return { kind: 'ok', value: res.rows[0] as T };
      } catch (err) {
        if (!isTransient(err)) return { kind: 'rejected', error: asError(err) };
        this.emitError(err, `${what} failed; retrying`);
        if (this.hard) return { kind: 'gave-up', error: asError(err) };
        await new Promise((r) => setTimeout(r, backoffDelay(failures, { initialMs: this.backoff.initialMs, maxMs: Math.min(this.backoff.maxMs, 5000) })));
        if (this.hard) return { kind: 'gave-up', error: asError(err) };
      }
    }
  }

  // ---------------------------------------------------------------- acking

  /**
   * Acks one finished job: queued to the acker, which sends it with whatever
   * else finished meanwhile in one `queue_ack_batch`; resolves with that
   * job's own outcome. On an extension without `queue_ack_batch`, one
   * `queue_ack` of its own.
   *
   * @param entry - the job's slot (its id and the claim's attempt)
   * @param json - the result as JSON text, or null for none
   * @returns ok with whether the job was completed (false: a stale claim),
   *   rejected when the server refused this job's ack, gave-up at a hard stop
   */
  private ack(entry: Entry, json: string | null): Promise<CallResult<boolean>> {
    const { id, attempt } = entry.job;
    if (!this.ackBatchAvailable) return this.ackOne(id, attempt, json);
    return new Promise((settle) => {
      this.ackQueue.push({ id, attempt, json, bytes: json === null ? 0 : Buffer.byteLength(json), settle, entry });
      if (!this.ackerActive) this.ackerRun = this.runAcker();
    });
  }

  /**
   * The acker: one `queue_ack_batch` at a time, each with every ack queued
   * since the previous one was sent (up to {@link ACK_BATCH_MAX}), and with a
   * claim when a queue may have work ({@link Worker.deliverAcks}). No timer:
   * at concurrency 1 each call carries one ack, under load many (group commit).
   * A run starts one turn of the event loop after its first ack, so that the
   * handlers that finished in the same turn share its first call. It marks
   * itself idle in the same step that finds the queue empty, so an ack queued
   * right after always starts a new run.
   */
  private async runAcker(): Promise<void> {
    this.ackerActive = true;
    let batch: PendingAck[] = [];
    try {
      await new Promise<void>((r) => setImmediate(r));
      while (this.ackQueue.length > 0) {
        batch = this.takeAckBatch();
        await this.deliverAcks(batch);
      }
    } catch (err) {
      // Not expected (deliverAcks settles every ack it takes); never leave a slot waiting.
      this.emitError(err, 'the acker failed');
      for (const a of [...batch, ...this.ackQueue.splice(0)]) a.settle({ kind: 'gave-up', error: asError(err) });
    } finally {
      this.releaseAckerClient();
      this.ackerActive = false;
    }
  }

  /**
   * A call of the acker (the batch ack, the ack with its claim) on its own
   * pooled connection ({@link Worker.ackerClient}), which it keeps from one call
   * to the next while its run lasts: a pool checkout and release per call
   * (two timers, listeners, closures and a tick) cost about as much as the
   * rest of the call's client side at concurrency 10. The connection goes back
   * after any call while something else waits for one of the pool's
   * connections (a touch, a fail, the claim loop), so the acker never holds
   * one that is wanted; connection trouble drops it (the pool discards it) and
   * the next call checks out another.
   */
  private async ackerQuery<R extends QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>> {
    let client = this.ackerClient;
    if (client === null) {
      client = await this.pool.connect();
      const held = client;
      // Between calls nobody else listens on it: a backend terminated then only drops it.
      const onError = (err: Error): void => this.releaseAckerClient(held, err);
      held.on('error', onError);
      this.ackerClient = held;
      this.ackerClientError = onError;
    }
    try {
      const res = await client.query<R>(config);
      if (this.pool.waitingCount > 0) this.releaseAckerClient(client);
      return res;
    } catch (err) {
      // Connection trouble (or a state we cannot vouch for): let the pool discard it.
      this.releaseAckerClient(client, isTransient(err) ? asError(err) : undefined);
      throw err;
    }
  }

  /** Gives {@link Worker.ackerClient} back to the pool (with an error: to be discarded); only once, only if it is still the one held. */
  private releaseAckerClient(client: PoolClient | null = this.ackerClient, err?: Error): void {
    if (client === null || client !== this.ackerClient) return;
    this.ackerClient = null;
    if (this.ackerClientError) client.removeListener('error', this.ackerClientError);
    this.ackerClientError = null;
    client.release(err);
  }

  /**
   * Takes the next batch off the ack queue: oldest first, up to
   * {@link ACK_BATCH_MAX} acks and {@link ACK_BATCH_MAX_BYTES} of results
   * (always at least one ack), and each job id once. `queue_ack_batch`
   * returns the ids it completed, so two acks of one id in one call (a stale
   * claim and the job's new claim, both by this worker) could not be told
   * apart: the second stays queued for the next call.
   */
  private takeAckBatch(): PendingAck[] {
    const batch: PendingAck[] = [];
    const rest: PendingAck[] = [];
    const ids = new Set<string>();
    let bytes = 0;
    for (const a of this.ackQueue) {
      const fits = batch.length < ACK_BATCH_MAX && (batch.length === 0 || bytes + a.bytes <= ACK_BATCH_MAX_BYTES);
      if (fits && !ids.has(a.id)) {
        ids.add(a.id);
        bytes += a.bytes;
        batch.push(a);
      } else {
        rest.push(a);
      }
    }
    this.ackQueue.length = 0;
    for (const a of rest) this.ackQueue.push(a);
    return batch;
  }

  /**
   * Sends one batch and settles each of its acks: while the worker runs and a
   * queue may have work, with a claim of that queue in the same statement
   * ({@link Worker.ackAndClaim}); else, or when that fails, alone. Connection trouble is
   * retried as any call must be ({@link Worker.call}: until the worker stops
   * hard, then the jobs come back after their lease). A refusal falls back to
   * one `queue_ack` per job, so that only the job the server refuses (e.g. a
   * result over `queue.max_result_size`, 22023, which rejects the whole
   * statement) takes the fail path and its neighbours complete.
   */
  private async deliverAcks(batch: PendingAck[]): Promise<void> {
    if (this.ackBatchAvailable && this.currentState === 'running' && !this.hard) {
      // A queue that may have work: claim from it in the ack's own commit. Taken
      // off the dirty set as the claim loop takes it, so only one of the two claims for it.
      const queue = this.nextDirtyQueue();
      if (queue !== undefined && await this.ackAndClaim(batch, queue)) return;
    }
    if (this.ackBatchAvailable) {
      const r = await this.call<{ ids: unknown }>(ACK_BATCH_SQL,
        ackArrays(batch),
        `queue_ack_batch(${batch.length} job${batch.length === 1 ? '' : 's'})`, true);
      if (r.kind === 'ok') {
        settleAcks(batch, r.value?.ids);
        return;
      }
      if (r.kind === 'gave-up') {
        for (const a of batch) a.settle(r);
        return;
      }
      if ((r.error as { code?: unknown }).code === UNDEFINED_FUNCTION) {
        this.ackBatchAvailable = false; // from now on ack() goes straight to queue_ack: said once
        this.emitError(r.error, 'the server has no queue_ack_batch(bigint[], integer[], jsonb[]) (the queue extension is older; ALTER EXTENSION queue UPDATE); acking with queue_ack, one call per job');
      }
    }
    await Promise.all(batch.map(async (a) => a.settle(await this.ackOne(a.id, a.attempt, a.json))));
  }

  /**
   * Acks the batch and claims up to as many jobs of `queue` (at most
   * `maxBatch`) in one statement ({@link ACK_CLAIM_SQL}), so that a worker in
   * steady state spends one commit per job, not two. In the step that reads
   * the reply, before anything else can run, the batch's jobs leave
   * {@link Worker.running} and the claimed ones start in their slots: a job
   * counts until its ack committed, and the jobs claimed in that same commit
   * take its place, so neither this worker nor the server ever sees more than
   * `concurrency` of its jobs at once. Each ack's outcome comes from the ids
   * the ack returned, as with {@link ACK_BATCH_SQL}; the slots' waits are
   * settled after that (their `job:complete` events follow the commit).
   *
   * Not retried: on any error the queue is marked again and the batch goes the
   * usual way ({@link Worker.deliverAcks}: retries, the fallback to one
   * `queue_ack` per job, 42883), which sorts out a refusal of the batch. After
   * connection trouble whose commit may have happened, those acks show as
   * stale there, and jobs claimed by the lost reply come back after their
   * leases, never run twice.
   *
   * @returns false when the call failed (nothing settled; deliver the batch the usual way)
   */
  private async ackAndClaim(batch: PendingAck[], queue: string): Promise<boolean> {
    const want = Math.min(batch.length, this.maxBatch);
    let rows: AckClaimRow[];
    try {
      const res = await this.ackerQuery<AckClaimRow>(this.statement(ACK_CLAIM_SQL, [
        ...ackArrays(batch), queue, this.name, want,
      ]));
      rows = res.rows;
    } catch (err) {
      // A refusal (e.g. a result too large, 22023; 42883 on an older extension)
      // is reported by the usual path, which meets it again; connection trouble here.
      if (isTransient(err)) this.emitError(err, `acking ${batch.length} job${batch.length === 1 ? '' : 's'} and claiming from '${queue}' in one call failed; acking alone`);
      this.dirty.add(queue);
      this.wake();
      return false;
    }
    let ids: unknown = null;
    const claimed: ClaimRow[] = [];
    for (const r of rows) {
      if (ids === null && r.acked != null) ids = r.acked; // on the first row only
      if (typeof r.id === 'string') claimed.push(r as ClaimRow);
    }
    if (claimed.length > 0) this.dirty.add(queue); // there may be more; an empty claim marked the sleeper instead

    // From here to the settles: one synchronous step. The acked jobs' slots pass
    // to the claimed ones (never more of those than the batch frees).
    let freed = 0;
    for (const a of batch) {
      const entry = a.entry;
      entry.finished = true; // its ack committed (or was stale): no more touches
      if (this.running.delete(entry)) freed++;
    }
    const unstarted: ClaimRow[] = [];
    for (const row of claimed) {
      // Claimed while stop() began (or, not expected, more than the batch freed): give them back untouched.
      if (this.currentState === 'running' && freed > 0) {
        freed--;
        this.startJob(row, queue);
      } else {
        unstarted.push(row);
      }
    }
    settleAcks(batch, ids);
    // A slot left free, or a queue marked again: the claim loop may go on (not
    // while every slot is taken, the steady state: it would only wait again).
    if (this.running.size < this.concurrency) this.wake();
    if (unstarted.length > 0) await Promise.all(unstarted.map((row) => this.giveBack(this.newEntry(row, queue))));
    return true;
  }

  /** One `queue_ack(id, result, attempt)`, retried like every call; `value` is whether it completed the job. */
  private async ackOne(id: string, attempt: number, json: string | null): Promise<CallResult<boolean>> {
    const r = await this.call<{ ok: boolean }>(ACK_SQL, [id, json, attempt], `queue_ack(${id})`);
    return r.kind === 'ok' ? (r.value?.ok === true ? ACKED : STALE) : r;
  }

  /**
   * Schedules the next extension of a job's lease: at half its timeout (or
   * `delayMs`) from `now`, while the job is running or being acked. One timer
   * serves every job ({@link Worker.sweepTouches}), set for the earliest
   * extension due; a job whose extension falls later (the usual case: jobs
   * start one after another with the same timeout) costs no timer call, and a
   * job that finishes costs none either.
   *
   * @param now - `performance.now()`
   */
  private scheduleTouch(entry: Entry, now: number, delayMs = Math.max(50, entry.leaseMs / 2)): void {
    if (entry.finished) return;
    entry.touchAt = now + delayMs;
    if (entry.touchAt < this.touchSweepAt) this.armTouchSweep(entry.touchAt, now);
  }

  private armTouchSweep(at: number, now: number): void {
    if (this.currentState === 'stopped') return;
    if (this.touchSweep) clearTimeout(this.touchSweep);
    this.touchSweepAt = at;
    this.touchSweep = setTimeout(() => this.sweepTouches(), Math.max(0, at - now));
  }

  /** The lease timer: touches every running job whose extension is due, and sets itself for the next one. */
  private sweepTouches(): void {
    this.touchSweep = null;
    this.touchSweepAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const entry of this.running) {
      if (entry.finished || entry.touching) continue; // a touch on its way schedules the next
      if (entry.touchAt <= now + 1) this.touch(entry);
      else if (entry.touchAt < next) next = entry.touchAt;
    }
    if (next < this.touchSweepAt) this.armTouchSweep(next, now);
  }

  /** One `queue_touch` of a running job's lease; a lost lease aborts its signal. */
  private touch(entry: Entry): void {
    entry.touching = true;
    const started = Date.now();
    this.pool.query<{ ok: boolean }>(TOUCH_SQL, [entry.job.id, null, entry.job.attempt]).then(
      (res) => {
        entry.touching = false;
        if (entry.finished) return;
        if (res.rows[0]!.ok !== true) {
          this.safeEmit('job:lost', { job: entry.job });
          entry.job.abort(new LeaseLostError());
          return; // whatever the handler returns, the ack with this attempt changes nothing
        }
        entry.job.leaseUntil = new Date(started + entry.leaseMs);
        this.scheduleTouch(entry, performance.now());
      },
      (err) => {
        entry.touching = false;
        if (entry.finished) return;
        this.emitError(err, `queue_touch(${entry.job.id}) failed; retrying`);
        this.scheduleTouch(entry, performance.now(), Math.max(50, Math.min(1000, entry.leaseMs / 8)));
      },
    );
  }

  // ---------------------------------------------------------------- stopping

  private async doStop(graceMs: number): Promise<void> {
    const wasRunning = this.currentState === 'running' || this.currentState === 'starting';
    this.currentState = 'stopping';
    this.stopController.abort();
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.wake();
    void this.cancelServerWait();
    await this.wakeSource?.stop();
    await this.loopDone;
    const claimClient = this.claimClient;
    this.claimClient = null;
    if (claimClient) {
      // A cancelled claim's error arrives before the server is ready again: closing
      // right then makes PgBouncer throw its server connection away. Let it settle.
      await Promise.race([claimClient.query('SELECT 1').catch(() => undefined), new Promise((r) => setTimeout(r, 1000).unref())]);
      await claimClient.end().catch(() => undefined);
    }

    if (wasRunning && this.running.size > 0) {
      const graceOver = new Promise<void>((resolve) => {
        this.endGrace = resolve;
      });
      this.graceDeadline = Date.now() + graceMs;
      this.graceTimer = setTimeout(() => this.endGrace?.(), graceMs);
      const allDone = Promise.all([...this.running.values()].map(recorded));
      await Promise.race([allDone, graceOver]);
      if (this.graceTimer) clearTimeout(this.graceTimer);
      this.graceTimer = null;

      // The grace is over: give back what still runs; stop retrying acks.
      this.hard = true;
      const unfinished = [...this.running.values()].filter((e) => e.phase === 'running');
      await Promise.all(unfinished.map((e) => this.giveBack(e)));
      const settling = [...this.running.values()].filter((e) => !e.released);
      if (settling.length) {
        await Promise.race([Promise.all(settling.map(recorded)), new Promise((r) => setTimeout(r, 5000))]);
      }
    }
    this.hard = true;
    // Every waiting ack belongs to a settling job waited for above; should one
    // still be on its way (that wait is bounded), let it finish before the pool
    // closes under it (bounded too: with `hard` the acker gives up at the next failure).
    await Promise.race([this.ackerRun, new Promise((r) => setTimeout(r, 5000).unref())]);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    await this.pool.end().catch(() => undefined);
    this.removeSignalHandlers();
    this.currentState = 'stopped';
    if (this.touchSweep) clearTimeout(this.touchSweep);
    this.touchSweep = null;
    this.safeEmit('stop');
  }

  private shortenGrace(graceMs: number): void {
    const deadline = Date.now() + graceMs;
    if (deadline >= this.graceDeadline || !this.endGrace) {
      this.graceDeadline = Math.min(this.graceDeadline, deadline);
      return;
    }
    this.graceDeadline = deadline;
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = setTimeout(() => this.endGrace?.(), graceMs);
  }

  /** Hands a job back without counting the attempt (`queue_release`); never acks or fails it afterwards. */
  private async giveBack(entry: Entry): Promise<void> {
    entry.released = true;
    entry.finished = true;
    clearDeadline(entry); // given back within its max runtime: its clock stops here
    this.running.delete(entry);
    entry.job.abort(new WorkerStoppedError()); // unless already aborted (a lost lease)
    const { job } = entry;
    for (let tries = 1; tries <= 3; tries++) {
      try {
        const res = await this.pool.query<{ ok: boolean }>(RELEASE_SQL, [job.id, job.attempt]);
        this.safeEmit('job:release', { job, via: 'queue_release', released: res.rows[0]!.ok === true });
        return;
      } catch (err) {
        this.emitError(err, (err as { code?: unknown })?.code === UNDEFINED_FUNCTION
          ? `giving back job ${job.id} failed: the server has no queue_release(bigint, integer) (the queue extension is older than 0.2.0; ALTER EXTENSION queue UPDATE); it returns after its lease`
          : `giving back job ${job.id} failed`);
        if (!isTransient(err) || tries === 3) break;
        await new Promise((r) => setTimeout(r, 200 * tries));
      }
    }
    this.safeEmit('job:release', { job, via: 'none', released: false });
  }

  private installSignalHandlers(): void {
    const handler = (signal: NodeJS.Signals): void => {
      if (this.stopping) {
        this.shortenGrace(0); // a second signal: give back now
        return;
      }
      void this.stop().then(() => {
        this.removeSignalHandlers();
        // Nobody else handles the signal: let it take its default course (exit).
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      });
    };
    this.signalHandler = handler;
    process.on('SIGTERM', handler);
    process.on('SIGINT', handler);
  }

  private removeSignalHandlers(): void {
    if (!this.signalHandler) return;
    process.off('SIGTERM', this.signalHandler);
    process.off('SIGINT', this.signalHandler);
    this.signalHandler = null;
  }

  // ---------------------------------------------------------------- misc

  private async heartbeat(): Promise<void> {
    const info = {
      host: hostname(),
      pid: process.pid,
      library: LIBRARY_NAME,
      version: VERSION,
      runtime: `node ${process.version}`,
      queues: this.queues,
      concurrency: this.concurrency,
      pooler: this.pooler,
      running: this.running.size,
      started_at: this.startedAt.toISOString(),
    };
    await this.pool.query(HEARTBEAT_SQL, [this.name, JSON.stringify(info)]);
  }

  private safeEmit<K extends keyof WorkerEventMap>(event: K, ...args: WorkerEventMap[K]): void {
    try {
      (this.emit as (e: K, ...a: WorkerEventMap[K]) => boolean)(event, ...args);
    } catch (err) {
      this.emitError(err, `a listener of "${String(event)}" threw`);
    }
  }

  /**
   * Where a listener's rejected promise goes (the worker's EventEmitter is
   * made with `captureRejections`): reported as a listener that throws is
   * ({@link Worker.safeEmit}), so an async listener that fails neither ends
   * the process as an unhandled rejection nor changes any job's outcome (the
   * worker never waits for its listeners).
   *
   * @internal
   */
  override [EventEmitter.captureRejectionSymbol](err: unknown, event: unknown, ..._args: unknown[]): void {
    if (event === 'error') {
      // Not back to the `error` listeners, which just failed.
      this.log(`a listener of "error" rejected: ${errorMessage(err)}`);
      return;
    }
    this.emitError(err, `a listener of "${String(event)}" rejected`);
  }

  private emitError(err: unknown, context: string): void {
    const cause = asError(err);
    const error = new Error(`${context}: ${errorMessage(cause)}`, { cause });
    if (this.listenerCount('error') > 0) {
      try {
        this.emit('error', error);
        return;
      } catch {
        /* fall through to the logger */
      }
    }
    this.log(error.message);
  }

  /**
   * Writes one line to the logger. A logger that throws or rejects is the
   * last place an error can go: it is dropped, never thrown into the worker.
   */
  private log(message: string): void {
    try {
      const r: unknown = this.logger.error(`[${LIBRARY_NAME} ${this.name}] ${message}`);
      if (r !== undefined && r !== null) Promise.resolve(r).catch(() => undefined);
    } catch {
      /* nowhere left to report it */
    }
  }
}
