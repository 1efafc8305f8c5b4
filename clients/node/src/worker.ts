import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import { Client, Pool, type ClientConfig, type PoolConfig, type QueryConfig } from 'pg';
import { type BackoffOptions, backoffDelay } from './backoff';
import { LeaseLostError, RetryIn, WorkerStoppedError } from './errors';
import { type Interval, intervalToSql } from './interval';
import { Listener, type WakeSource } from './listener';
import type { JobId } from './push';
import { withJobSpan } from './telemetry';
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
   * out; reason {@link WorkerStoppedError}) or the lease was lost (reason
   * {@link LeaseLostError}). The job's outcome is then ignored: stop working.
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
  /** What the handler threw. */
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
  /** One handler per queue name: `{ emails: async (job) => ... }`. */
  handlers: Record<string, Handler>;
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
}

/** Options of {@link Worker.stop}. */
export interface StopOptions {
  /** How long running handlers may take to finish before their jobs are given back. Default: the worker's `graceMs`. */
  graceMs?: number;
}

/** The worker's state. */
export type WorkerState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

interface ClaimRow {
  id: string;
  queue: string;
  payload: unknown;
  priority: number;
  serial_group: string | null;
  attempt: number;
  max_attempts: number;
  lease_until: Date;
  created_at: Date;
  lease_ms: number;
}

interface Entry {
  key: string;
  job: JobImpl;
  controller: AbortController;
  leaseMs: number;
  phase: 'running' | 'settling';
  /** Given back at a hard stop: never ack or fail it afterwards (the claim may be someone else's). */
  released: boolean;
  /** Settled or released: stop touching. */
  finished: boolean;
  touchTimer: NodeJS.Timeout | null;
  done: Promise<void>;
}

type CallResult<T> = { kind: 'ok'; value: T } | { kind: 'rejected'; error: Error } | { kind: 'gave-up'; error: Error };

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

const QUEUE_NAME = /^[A-Za-z0-9_.:-]{1,57}$/;
const MAX_ERROR_CHARS = 16_000;

const CLAIM_SQL = `SELECT id::text AS id, queue, payload, priority, serial_group, attempt, max_attempts,
       lease_until, created_at, (extract(epoch FROM lease_until - now()) * 1000)::float8 AS lease_ms
  FROM queue_pop($1::text, $2::text, $3::int)`;
const CLAIM_WAIT_SQL = CLAIM_SQL.replace('$3::int)', '$3::int, wait => $4::interval)');
const ACK_SQL = 'SELECT queue_ack($1::bigint, $2::jsonb, $3::int) AS ok';
// The ids come back as text: node-postgres would otherwise leave bigint[] to its
// array parser, and the claim's ids are text already (id::text), so the two compare exactly.
const ACK_BATCH_SQL = 'SELECT queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[])::text[] AS ids';
/**
 * The acks of a batch and a claim of the next jobs, in one statement (one
 * commit, one round trip): what the acker sends when a queue may have work
 * ({@link Worker.ackAndClaim}). The first row carries the ids the ack completed
 * (as text, like {@link ACK_BATCH_SQL}; NULL on the other rows, which would
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
const ACK_CLAIM_SQL = `SELECT CASE WHEN coalesce(p.ordinality, 1) = 1 THEN a.acked::text[] END AS acked, p.after_the_ack, p.id, p.queue, p.payload, p.priority, p.serial_group,
       p.attempt, p.max_attempts, p.lease_until, p.created_at, p.lease_ms
  FROM (SELECT queue_ack_batch($1::bigint[], $2::int[], $3::jsonb[]) AS acked) AS a
  LEFT JOIN LATERAL (SELECT q.id::text AS id, q.queue, q.payload, q.priority, q.serial_group, q.attempt, q.max_attempts,
                            q.lease_until, q.created_at,
                            (extract(epoch FROM q.lease_until - now()) * 1000)::float8 AS lease_ms,
                            a.acked IS NOT NULL AS after_the_ack, q.ordinality
                       FROM queue_pop($4::text, $5::text, $6::int) WITH ORDINALITY AS q OFFSET 0) AS p ON true`;
/** The most acks one `queue_ack_batch` carries (the rest go into the next call): bounds the statement's size and its row locks. */
const ACK_BATCH_MAX = 1000;
/**
 * And the most result text one call carries (UTF-16 code units, at most 3 bytes
 * each in UTF-8), past its first ack: a thousand large results in one Bind
 * message could pass the server's 1 GB message limit, which drops the
 * connection, and a batch that can never get through would be retried forever.
 */
const ACK_BATCH_MAX_CHARS = 8 * 1024 * 1024;
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

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function errorText(err: unknown): string {
  let text: string;
  if (err instanceof Error) {
    text = err.stack && err.stack.includes(err.message) ? err.stack : `${err.name}: ${err.message}`;
  } else if (typeof err === 'string') {
    text = err;
  } else {
    try {
      text = JSON.stringify(err) ?? String(err);
    } catch {
      text = String(err);
    }
  }
  return text.length > MAX_ERROR_CHARS ? text.slice(0, MAX_ERROR_CHARS) + '…' : text;
}

function isPermanent(err: unknown): boolean {
  return (err as { permanent?: unknown })?.permanent === true;
}

function retryDelayOf(err: unknown): string | null {
  if (err instanceof RetryIn) return intervalToSql(err.retryIn, 'RetryIn delay');
  const ms = (err as { retryInMs?: unknown })?.retryInMs;
  if (typeof ms === 'number' && Number.isFinite(ms)) return `${ms} milliseconds`;
  return null;
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
  readonly signal: AbortSignal;

  constructor(row: ClaimRow, signal: AbortSignal, worker: string, private readonly pool: Pool) {
    this.id = row.id;
    this.queue = row.queue;
    this.payload = row.payload;
    this.priority = row.priority;
    this.serialGroup = row.serial_group;
    this.attempt = row.attempt;
    this.maxAttempts = row.max_attempts;
    this.createdAt = row.created_at;
    this.leaseUntil = row.lease_until;
    this.worker = worker;
    this.signal = signal;
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
 *   heartbeats with `queue_heartbeat`.
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

  private readonly handlers: Map<string, Handler>;
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
  private readonly running = new Map<string, Entry>();
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
  /** False once the server said it has no `queue_ack_batch` (42883: an older extension): every ack is then a `queue_ack` of its own. */
  private ackBatchAvailable = true;

  /**
   * Makes a worker; nothing connects before {@link Worker.start}.
   *
   * @param options - connection, handlers, concurrency and the rest of {@link WorkerOptions}
   * @throws TypeError for a bad queue name, a missing handler or a bad number
   */
  constructor(options: WorkerOptions) {
    super();
    if (!options || typeof options !== 'object') throw new TypeError('Worker options are required');
    const handlers = options.handlers;
    if (!handlers || typeof handlers !== 'object' || Object.keys(handlers).length === 0) {
      throw new TypeError('Worker needs at least one handler: { handlers: { queueName: async (job) => ... } }');
    }
    for (const [queue, fn] of Object.entries(handlers)) {
      if (!QUEUE_NAME.test(queue)) throw new TypeError(`bad queue name "${queue}": 1-57 characters of [A-Za-z0-9_.:-]`);
      if (typeof fn !== 'function') throw new TypeError(`the handler of queue "${queue}" is not a function`);
    }
    const positiveInt = (v: number | undefined, dflt: number, what: string, max = 1_000_000_000): number => {
      if (v === undefined) return dflt;
      if (!Number.isInteger(v) || v < 1 || v > max) throw new TypeError(`${what} must be an integer from 1 to ${max}, got ${v}`);
      return v;
    };
    this.handlers = new Map(Object.entries(handlers));
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
        await Promise.all(rows.map((row) => this.giveBack(this.newEntry(row))));
        break;
      }
      for (const row of rows) this.startJob(row);
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

  private newEntry(row: ClaimRow): Entry {
    const controller = new AbortController();
    return {
      key: `${row.id}:${row.attempt}`,
      job: new JobImpl(row, controller.signal, this.name, this.pool),
      controller,
      leaseMs: Number.isFinite(row.lease_ms) && row.lease_ms > 0 ? row.lease_ms : 60_000,
      phase: 'running',
      released: false,
      finished: false,
      touchTimer: null,
      done: Promise.resolve(),
    };
  }

  private startJob(row: ClaimRow): void {
    const entry = this.newEntry(row);
    this.running.set(entry.key, entry);
    entry.done = this.execute(entry)
      .catch((err) => this.emitError(err, `job ${entry.job.id} failed inside the worker`))
      .finally(() => {
        entry.finished = true;
        if (entry.touchTimer) clearTimeout(entry.touchTimer);
        if (this.running.get(entry.key) === entry) this.running.delete(entry.key);
        this.wake();
      });
  }

  private async execute(entry: Entry): Promise<void> {
    const { job } = entry;
    const handler = this.handlers.get(job.queue)!;
    this.safeEmit('job:start', { job });
    this.scheduleTouch(entry);
    const t0 = performance.now();
    type Outcome = { ok: true; result: unknown } | { ok: false; error: unknown };
    const outcome = await withJobSpan<Outcome>({ id: job.id, queue: job.queue, attempt: job.attempt, worker: this.name }, async () => {
      try {
        const result = await handler(job);
        return { ok: true, value: { ok: true, result } };
      } catch (error) {
        return { ok: false, error, value: { ok: false, error } };
      }
    });
    const durationMs = performance.now() - t0;
    entry.phase = 'settling';
    if (entry.released) return; // given back at a hard stop: its outcome no longer counts
    if (outcome.ok) {
      let json: string | null = null;
      let serializeError: Error | null = null;
      try {
        json = outcome.result === undefined ? null : (JSON.stringify(outcome.result) ?? null);
      } catch (err) {
        serializeError = new TypeError(`the handler's result is not JSON-serializable: ${asError(err).message}`);
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
  }

  private async fail(entry: Entry, error: unknown, durationMs: number): Promise<void> {
    const { job } = entry;
    const permanent = isPermanent(error);
    let retryIn: string | null = null;
    let text = errorText(error);
    try {
      retryIn = retryDelayOf(error);
    } catch (err) {
      text += `\n(retry delay ignored: ${asError(err).message})`;
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

  /** A call that must get through: retried with backoff on connection trouble until the worker stops hard. */
  private async call<T>(sql: string, values: unknown[], what: string): Promise<CallResult<T>> {
    for (let failures = 1; ; failures++) {
      try {
        const res = await this.pool.query(this.statement(sql, values));
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
      this.ackQueue.push({ id, attempt, json, settle, entry });
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
      this.ackerActive = false;
    }
  }

  /**
   * Takes the next batch off the ack queue: oldest first, up to
   * {@link ACK_BATCH_MAX} acks and {@link ACK_BATCH_MAX_CHARS} of results
   * (always at least one ack), and each job id once. `queue_ack_batch`
   * returns the ids it completed, so two acks of one id in one call (a stale
   * claim and the job's new claim, both by this worker) could not be told
   * apart: the second stays queued for the next call.
   */
  private takeAckBatch(): PendingAck[] {
    const batch: PendingAck[] = [];
    const rest: PendingAck[] = [];
    const ids = new Set<string>();
    let chars = 0;
    for (const a of this.ackQueue) {
      const size = a.json?.length ?? 0;
      const fits = batch.length < ACK_BATCH_MAX && (batch.length === 0 || chars + size <= ACK_BATCH_MAX_CHARS);
      if (fits && !ids.has(a.id)) {
        ids.add(a.id);
        chars += size;
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
        [batch.map((a) => a.id), batch.map((a) => a.attempt), batch.map((a) => a.json)],
        `queue_ack_batch(${batch.length} job${batch.length === 1 ? '' : 's'})`);
      if (r.kind === 'ok') {
        // The ids completed; any other was stale or unknown. A reply that is not
        // a list of ids (not expected) completes nobody we can vouch for.
        const ids = r.value?.ids;
        const completed = new Set(Array.isArray(ids) ? ids.filter((x): x is string => typeof x === 'string') : []);
        for (const a of batch) a.settle({ kind: 'ok', value: completed.has(a.id) });
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
      const res = await this.pool.query<AckClaimRow>(this.statement(ACK_CLAIM_SQL, [
        batch.map((a) => a.id), batch.map((a) => a.attempt), batch.map((a) => a.json), queue, this.name, want,
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
    // The ids completed; any other was stale or unknown. A reply that is not
    // a list of ids (not expected) completes nobody we can vouch for.
    const ids = rows.find((r) => r.acked != null)?.acked; // on the first row only
    const completed = new Set(Array.isArray(ids) ? ids.filter((x): x is string => typeof x === 'string') : []);
    const claimed = rows.filter((r): r is AckClaimRow & { id: string } => typeof r.id === 'string');
    if (claimed.length > 0) this.dirty.add(queue); // there may be more; an empty claim marked the sleeper instead

    // From here to the settles: one synchronous step. The acked jobs' slots pass
    // to the claimed ones (never more of those than the batch frees).
    let freed = 0;
    for (const a of batch) {
      const entry = a.entry;
      entry.finished = true; // its ack committed (or was stale): no more touches
      if (entry.touchTimer) clearTimeout(entry.touchTimer);
      entry.touchTimer = null;
      if (this.running.get(entry.key) === entry) {
        this.running.delete(entry.key);
        freed++;
      }
    }
    const unstarted: ClaimRow[] = [];
    for (const row of claimed) {
      // Claimed while stop() began (or, not expected, more than the batch freed): give them back untouched.
      if (this.currentState === 'running' && freed > 0) {
        freed--;
        this.startJob(row);
      } else {
        unstarted.push(row);
      }
    }
    for (const a of batch) a.settle({ kind: 'ok', value: completed.has(a.id) });
    this.wake(); // a slot left free, or a queue marked again: the claim loop may go on
    if (unstarted.length > 0) await Promise.all(unstarted.map((row) => this.giveBack(this.newEntry(row))));
    return true;
  }

  /** One `queue_ack(id, result, attempt)`, retried like every call; `value` is whether it completed the job. */
  private async ackOne(id: string, attempt: number, json: string | null): Promise<CallResult<boolean>> {
    const r = await this.call<{ ok: boolean }>(ACK_SQL, [id, json, attempt], `queue_ack(${id})`);
    return r.kind === 'ok' ? { kind: 'ok', value: r.value?.ok === true } : r;
  }

  /** Extends the lease at half the job's timeout, while the job is running or being acked. */
  private scheduleTouch(entry: Entry, delayMs = Math.max(50, entry.leaseMs / 2)): void {
    if (entry.finished) return;
    entry.touchTimer = setTimeout(() => {
      entry.touchTimer = null;
      if (entry.finished) return;
      const started = Date.now();
      this.pool.query<{ ok: boolean }>(TOUCH_SQL, [entry.job.id, null, entry.job.attempt]).then(
        (res) => {
          if (entry.finished) return;
          if (res.rows[0]!.ok !== true) {
            this.safeEmit('job:lost', { job: entry.job });
            entry.controller.abort(new LeaseLostError());
            return; // whatever the handler returns, the ack with this attempt changes nothing
          }
          entry.job.leaseUntil = new Date(started + entry.leaseMs);
          this.scheduleTouch(entry);
        },
        (err) => {
          if (entry.finished) return;
          this.emitError(err, `queue_touch(${entry.job.id}) failed; retrying`);
          this.scheduleTouch(entry, Math.max(50, Math.min(1000, entry.leaseMs / 8)));
        },
      );
    }, delayMs);
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
      const allDone = Promise.all([...this.running.values()].map((e) => e.done));
      await Promise.race([allDone, graceOver]);
      if (this.graceTimer) clearTimeout(this.graceTimer);
      this.graceTimer = null;

      // The grace is over: give back what still runs; stop retrying acks.
      this.hard = true;
      const unfinished = [...this.running.values()].filter((e) => e.phase === 'running');
      await Promise.all(unfinished.map((e) => this.giveBack(e)));
      const settling = [...this.running.values()].filter((e) => !e.released);
      if (settling.length) {
        await Promise.race([Promise.all(settling.map((e) => e.done)), new Promise((r) => setTimeout(r, 5000))]);
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
    if (entry.touchTimer) clearTimeout(entry.touchTimer);
    entry.touchTimer = null;
    this.running.delete(entry.key);
    if (!entry.controller.signal.aborted) entry.controller.abort(new WorkerStoppedError());
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

  private emitError(err: unknown, context: string): void {
    const cause = asError(err);
    const error = new Error(`${context}: ${cause.message}`, { cause });
    if (this.listenerCount('error') > 0) {
      try {
        this.emit('error', error);
        return;
      } catch {
        /* fall through to the logger */
      }
    }
    this.logger.error(`[${LIBRARY_NAME} ${this.name}] ${error.message}`);
  }
}
