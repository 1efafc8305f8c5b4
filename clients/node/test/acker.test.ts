import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { pushBatch, Worker, type JobCompleteEvent, type JobFailEvent, type WorkerOptions } from '../dist';
import { adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, deferred, collectErrors, DATABASE_URL } from './helpers';

// The acker: finished jobs are acked in batches (queue_ack_batch), one call in
// flight at a time, and claim the next jobs in the same statement when a queue
// may have work. These tests count the calls the server saw
// (pg_stat_user_functions; run-tests.sh starts the cluster with
// track_functions = 'all'), so they fail if acks go back to one call per job.

const pool = adminPool();
after(() => pool.end());

interface Calls {
  /** queue_ack_batch calls so far (the whole cluster). */
  batch: number;
  /** queue_ack calls so far. */
  single: number;
}

async function functionCalls(): Promise<Calls> {
  // Each statement here is its own transaction, but clear the cached stats snapshot anyway.
  await pool.query('SELECT pg_stat_clear_snapshot()');
  const res = await pool.query<Calls>(`
    SELECT coalesce(sum(calls) FILTER (WHERE funcname = 'queue_ack_batch'), 0)::int AS batch,
           coalesce(sum(calls) FILTER (WHERE funcname = 'queue_ack'), 0)::int AS single
      FROM pg_stat_user_functions`);
  return res.rows[0]!;
}

/**
 * The call counts once they stopped moving: a backend reports its function
 * stats when it exits or at most about once a second while it runs, so read
 * after the workers stopped, until two reads agree.
 */
async function settledCalls(): Promise<Calls> {
  let prev = await functionCalls();
  for (let i = 0; i < 20; i++) {
    await sleep(400);
    const cur = await functionCalls();
    if (cur.batch === prev.batch && cur.single === prev.single) return cur;
    prev = cur;
  }
  return prev;
}

/** The test cluster's server log from now on (run-tests.sh says where it is); since() is null without it. */
function serverLog(): { since(): string | null } {
  const dir = process.env.QUEUE_TEST_CLUSTER_DIR;
  const file = dir ? join(dir, 'server.log') : null;
  const start = file && existsSync(file) ? statSync(file).size : null;
  return {
    since: () => (file && start !== null ? readFileSync(file).subarray(start).toString('utf8') : null),
  };
}

function newWorker(opts: Omit<WorkerOptions, 'connectionString'>): { worker: Worker; errors: Error[] } {
  const worker = new Worker({ connectionString: DATABASE_URL, backoff: { initialMs: 50, maxMs: 1000 }, ...opts });
  return { worker, errors: collectErrors(worker) };
}

test('track_functions is on (run-tests.sh): the acker tests count calls', async () => {
  const res = await pool.query<{ v: string }>(`SELECT current_setting('track_functions') AS v`);
  assert.equal(res.rows[0]!.v, 'all', 'start the cluster with track_functions = all (clients/node/run-tests.sh does)');
});

test('acks are batched: 300 jobs at concurrency 20 take far fewer queue_ack_batch calls than jobs; each completes once with its result', async (t) => {
  const q = uniqueQueue('ackbatch');
  const jobs = 300;
  const ids = await pushBatch(pool, q, Array.from({ length: jobs }, (_, n) => ({ n })));
  const before = await settledCalls();
  const runs = new Map<string, number>();
  const completes = new Map<string, JobCompleteEvent[]>();
  const { worker, errors } = newWorker({
    concurrency: 20,
    handlers: {
      [q]: async (job) => {
        runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
        await sleep(2 + Math.random() * 4);
        return { n: (job.payload as { n: number }).n, attempt: job.attempt, text: 'quote " backslash \\ brace { comma ,' };
      },
    },
  });
  worker.on('job:complete', (ev) => completes.set(ev.job.id, [...(completes.get(ev.job.id) ?? []), ev]));
  t.after(() => worker.stop({ graceMs: 0 }));
  const t0 = Date.now();
  await worker.start();
  await waitFor(() => completes.size === jobs, `${jobs} job:complete events`, 60_000, 20);
  const tookMs = Date.now() - t0;
  await worker.stop({ graceMs: 5000 }); // its connections close: their backends report their stats
  const calls = await settledCalls();
  const batchCalls = calls.batch - before.batch;
  const singleCalls = calls.single - before.single;
  t.diagnostic(`${jobs} jobs in ${tookMs} ms: ${batchCalls} queue_ack_batch calls (${(jobs / Math.max(1, batchCalls)).toFixed(1)} acks per call), ${singleCalls} queue_ack calls`);
  assert.ok(batchCalls >= 1, 'no queue_ack_batch call was counted: the acks were not batched');
  assert.ok(batchCalls <= jobs / 3, `${batchCalls} queue_ack_batch calls for ${jobs} jobs: not batched`);
  // A queue_ack_batch of one id runs queue_ack inside the server (its fast path),
  // so queue_ack is counted at most once per batch call; acks sent one per job
  // by the client would count one per job.
  assert.ok(singleCalls <= batchCalls, `${singleCalls} queue_ack calls: jobs were acked with a queue_ack of their own`);
  assert.deepEqual(errors, []);

  for (const id of ids) {
    assert.equal(runs.get(id), 1, `job ${id} ran ${runs.get(id) ?? 0} times`);
    const evs = completes.get(id) ?? [];
    assert.equal(evs.length, 1, `job ${id}: ${evs.length} job:complete events`);
    assert.equal(evs[0]!.acked, true, `job ${id} was not acked`);
  }
  const rows = await pool.query<{ id: string; status: string; attempts: number; n: number }>(
    'SELECT id::text AS id, status::text AS status, attempts, count(*) OVER (PARTITION BY id)::int AS n FROM queue.all_jobs WHERE queue = $1',
    [q]);
  assert.equal(rows.rows.length, jobs);
  for (const r of rows.rows) {
    assert.equal(r.n, 1, `job ${r.id} has ${r.n} rows`);
    assert.equal(r.status, 'completed', `job ${r.id} is ${r.status}`);
    assert.equal(r.attempts, 1, `job ${r.id} took ${r.attempts} attempts`);
  }
  for (const [n, id] of ids.entries()) {
    const j = await jobOf(pool, id);
    assert.deepEqual(j!.result, { n, attempt: 1, text: 'quote " backslash \\ brace { comma ,' }, `the result of job ${id}`);
  }
});

test('at concurrency 1 each ack claims the next job in its own commit', async (t) => {
  const q = uniqueQueue('ackclaim');
  const jobs = 60;
  await pushBatch(pool, q, Array.from({ length: jobs }, (_, n) => ({ n })));
  let runningNow = 0;
  let maxRunning = 0;
  const completes: JobCompleteEvent[] = [];
  const { worker, errors } = newWorker({
    concurrency: 1,
    handlers: {
      [q]: async (job) => {
        runningNow++;
        maxRunning = Math.max(maxRunning, runningNow);
        await sleep(2);
        runningNow--;
        return { n: (job.payload as { n: number }).n };
      },
    },
  });
  worker.on('job:complete', (ev) => completes.push(ev));
  t.after(() => worker.stop({ graceMs: 0 }));
  const t0 = Date.now();
  await worker.start();
  await waitFor(() => completes.length === jobs, `${jobs} job:complete events`, 30_000, 10);
  const tookMs = Date.now() - t0;
  await worker.stop({ graceMs: 5000 });
  // started_at (the claim's) and finished_at (the ack's) are both the
  // transaction's now(): equal exactly when an ack and the next claim were one transaction.
  const res = await pool.query<{ handed_on: number; max_attempts: number; total: number }>(`
    SELECT (count(*) FILTER (WHERE EXISTS (SELECT FROM queue.all_jobs b
                                            WHERE b.queue = a.queue AND b.id <> a.id AND b.started_at = a.finished_at)))::int AS handed_on,
           max(attempts)::int AS max_attempts, count(*)::int AS total
      FROM queue.all_jobs a WHERE a.queue = $1`, [q]);
  const { handed_on: handedOn, max_attempts: maxAttempts, total } = res.rows[0]!;
  t.diagnostic(`${jobs} jobs at concurrency 1 in ${tookMs} ms: ${handedOn} acks claimed the next job in their own commit`);
  assert.equal(total, jobs);
  assert.equal(maxAttempts, 1);
  assert.ok(maxRunning <= 1, `${maxRunning} handlers ran at once`);
  assert.ok(completes.every((ev) => ev.acked), 'every job should have been acked');
  assert.ok(handedOn >= Math.ceil(jobs * 0.9), `only ${handedOn} of ${jobs} acks claimed the next job in the same commit`);
  assert.deepEqual(errors, []);
});

/**
 * Claims `count` jobs with a worker whose handlers all wait for one gate
 * (concurrency = count: nothing else is claimed meanwhile), so that they
 * finish in the same turn and their acks share one queue_ack_batch.
 */
async function gatedWorker(
  t: { after(fn: () => unknown): void }, q: string, count: number, maxAttempts: number, opts: Partial<WorkerOptions>,
  result: (n: number) => unknown,
): Promise<{ worker: Worker; errors: Error[]; ids: string[]; open: () => void; completes: JobCompleteEvent[]; fails: JobFailEvent[] }> {
  const gate = deferred();
  const started = new Set<string>();
  const { worker, errors } = newWorker({
    concurrency: count,
    ...opts,
    handlers: {
      [q]: async (job) => {
        started.add(job.id);
        await gate.promise;
        return result((job.payload as { n: number }).n);
      },
    },
  });
  const completes: JobCompleteEvent[] = [];
  const fails: JobFailEvent[] = [];
  worker.on('job:complete', (ev) => completes.push(ev));
  worker.on('job:fail', (ev) => fails.push(ev));
  t.after(() => worker.stop({ graceMs: 0 }));
  // A long lease: no touch happens during the test, nothing lapses on its own.
  const ids = await pushBatch(pool, q, Array.from({ length: count }, (_, n) => ({ n })), { timeout: '5 minutes', maxAttempts });
  await worker.start();
  await waitFor(() => started.size === count, `${count} handlers to start`, 10_000);
  return { worker, errors, ids, open: () => gate.resolve(), completes, fails };
}

test('in one batch a stale claim is refused (acked false) while the other acks complete', async (t) => {
  const q = uniqueQueue('ackstale');
  const before = await settledCalls();
  const { worker, errors, ids, open, completes } = await gatedWorker(t, q, 5, 3, {}, (n) => ({ n }));
  const stale = ids[2]!;
  // Someone else takes the job over before its handler returns: the worker's claim (attempt 1) is stale.
  const failed = await pool.query('SELECT queue_fail($1::bigint, $2, 1, $3::interval) AS s', [stale, 'taken over', '0 seconds']);
  assert.equal(failed.rows[0].s, 'pending');
  const thief = await pool.query('SELECT id::text AS id, attempt FROM queue_pop($1, $2, 1)', [q, 'thief']);
  assert.deepEqual(thief.rows, [{ id: stale, attempt: 2 }]);
  open();
  await waitFor(() => completes.length === 5, '5 job:complete events');
  await worker.stop({ graceMs: 5000 });
  const calls = await settledCalls();
  for (const ev of completes) assert.equal(ev.acked, ev.job.id !== stale, `job ${ev.job.id}: acked ${ev.acked}`);
  for (const [n, id] of ids.entries()) {
    const j = await jobOf(pool, id);
    if (id === stale) {
      assert.equal(j!.status, 'processing', 'the late ack of attempt 1 must not complete attempt 2');
      assert.equal(j!.worker, 'thief');
      assert.equal(j!.result, null);
    } else {
      assert.equal(j!.status, 'completed');
      assert.deepEqual(j!.result, { n });
    }
  }
  assert.equal(calls.batch - before.batch, 1, 'the five acks should have shared one queue_ack_batch');
  assert.equal(calls.single - before.single, 0);
  assert.deepEqual(errors, []);
});

test('two acks of one job in one turn (a stale claim and its new claim, both by this worker): only the new one completes it', async (t) => {
  const q = uniqueQueue('ackdup');
  const gate = deferred();
  const attempts: number[] = [];
  const { worker, errors } = newWorker({
    concurrency: 2,
    handlers: {
      [q]: async (job) => {
        attempts.push(job.attempt);
        await gate.promise;
        return { attempt: job.attempt };
      },
    },
  });
  const completes: JobCompleteEvent[] = [];
  worker.on('job:complete', (ev) => completes.push(ev));
  t.after(() => worker.stop({ graceMs: 0 }));
  const [id] = await pushBatch(pool, q, [{ n: 0 }], { timeout: '5 minutes', maxAttempts: 3 });
  await worker.start();
  await waitFor(() => attempts.length === 1, 'the first claim');
  // The first claim goes stale: the job is back in line at once, and this
  // worker, with a slot free, claims it again while the first handler waits.
  const failed = await pool.query('SELECT queue_fail($1::bigint, $2, 1, $3::interval) AS s', [id, 'taken back', '0 seconds']);
  assert.equal(failed.rows[0].s, 'pending');
  await waitFor(() => attempts.length === 2, 'the second claim of the same job', 10_000);
  assert.deepEqual(attempts, [1, 2]);
  gate.resolve(); // both handlers return in the same turn: their acks are queued together
  await waitFor(() => completes.length === 2, '2 job:complete events');
  await worker.stop({ graceMs: 5000 });
  const acked = new Map(completes.map((ev) => [ev.job.attempt, ev.acked]));
  assert.deepEqual([...acked.entries()].sort(), [[1, false], [2, true]], 'only the ack of attempt 2 completes the job');
  const j = await jobOf(pool, id!);
  assert.equal(j!.status, 'completed');
  assert.deepEqual(j!.result, { attempt: 2 });
  assert.deepEqual(errors, []);
});

test('a result too large for the server fails only its own job; its batch neighbours complete', async (t) => {
  const q = uniqueQueue('ackbig');
  const big = randomBytes(4096).toString('hex'); // 8 kB of incompressible text: over 1 kB
  const before = await settledCalls();
  const log = serverLog();
  const { worker, errors, ids, open, completes, fails } = await gatedWorker(t, q, 4, 1,
    { pool: { options: '-c queue.max_result_size=1kB' } }, // SUSET: the test connects as a superuser
    (n) => (n === 1 ? { big } : { n }));
  open();
  await waitFor(() => completes.length === 3 && fails.length === 1, '3 job:complete and 1 job:fail events');
  await worker.stop({ graceMs: 5000 });
  const calls = await settledCalls();
  assert.equal(fails[0]!.job.id, ids[1]);
  assert.equal(fails[0]!.status, 'failed'); // maxAttempts 1
  for (const ev of completes) assert.equal(ev.acked, true);
  for (const [n, id] of ids.entries()) {
    const j = await waitForStatus(pool, id, n === 1 ? ['failed'] : ['completed']);
    if (n === 1) {
      assert.match(j.last_error, /queue_ack refused the result/);
      assert.match(j.last_error, /queue\.max_result_size/);
      assert.equal(j.result, null);
    } else {
      assert.deepEqual(j.result, { n });
    }
  }
  // The batch was refused as a whole, then each of its jobs was acked on its
  // own: three queue_ack calls counted (a call that raises, the big one's and
  // the batch's, is not counted in pg_stat_user_functions; the server logs it).
  assert.equal(calls.single - before.single, 3, 'the refused batch should fall back to one queue_ack per job');
  assert.equal(calls.batch - before.batch, 0, 'the refused batch does not count; nothing else should have been batched');
  const logged = log.since();
  if (logged !== null) {
    assert.match(logged, /more than queue\.max_result_size[^]*STATEMENT: +SELECT array_to_string\(queue_ack_batch\(/, 'the server did not log a refused queue_ack_batch');
  }
  assert.deepEqual(errors, []);
});

test('results of a few MB from concurrent handlers: at most 8 MB of results per statement (a larger one alone), each stored intact', async (t) => {
  const q = uniqueQueue('ackbytes');
  const CAP = 8 * 1024 * 1024;
  // Two-byte UTF-8 characters: 1.5 M of them are 3 MB (a cap counted in
  // characters would put five of them in one call). Job 5's 9.2 MB, under
  // queue.max_result_size's 10 MB, is over the cap on its own.
  const resultOf = (n: number): string => `${n}:` + 'é'.repeat(n === 5 ? 4_600_000 : 1_500_000);
  // What the acker sends, seen from the client: every statement with a queue_ack_batch.
  const sent: Array<{ acks: number; resultBytes: number }> = [];
  const original = Client.prototype.query;
  Client.prototype.query = function (this: Client, config: unknown, ...rest: unknown[]) {
    const c = config as { text?: unknown; values?: unknown[] } | null;
    if (c && typeof c === 'object' && typeof c.text === 'string' && c.text.includes('queue_ack_batch(')) {
      const values = c.values ?? (rest[0] as unknown[]);
      sent.push({ acks: String(values[0]).split(',').length, resultBytes: Buffer.byteLength(String(values[2])) });
    }
    return (original as (...a: unknown[]) => unknown).apply(this, [config, ...rest]);
  } as typeof original;
  t.after(() => { Client.prototype.query = original; });

  const { worker, errors, ids, open, completes } = await gatedWorker(t, q, 8, 1, {}, resultOf);
  open();
  await waitFor(() => completes.length === 8, '8 job:complete events', 60_000);
  await worker.stop({ graceMs: 5000 });
  Client.prototype.query = original;
  assert.ok(completes.every((ev) => ev.acked));
  t.diagnostic(`statements: ${sent.map((s) => `${s.acks} acks / ${(s.resultBytes / 1e6).toFixed(1)} MB`).join(', ')}`);
  // The array text escapes each result's two quotes (4 bytes) and adds a comma.
  for (const s of sent) {
    assert.ok(s.acks === 1 || s.resultBytes <= CAP + 8 * s.acks, `a statement of ${s.acks} acks carried ${s.resultBytes} bytes of results`);
  }
  assert.ok(sent.some((s) => s.acks > 1), 'results under the cap should still share statements');
  assert.ok(sent.some((s) => s.acks === 1 && s.resultBytes > CAP), 'the 9.2 MB result should have gone alone');
  const rows = await pool.query<{ id: string; status: string; h: string; len: number }>(
    `SELECT id::text AS id, status::text AS status, md5(result #>> '{}') AS h, octet_length(result #>> '{}') AS len
       FROM queue.all_jobs WHERE queue = $1`, [q]);
  const byId = new Map(rows.rows.map((r) => [r.id, r]));
  for (const [n, id] of ids.entries()) {
    const want = resultOf(n);
    const r = byId.get(id);
    assert.equal(r?.status, 'completed', `job ${id}`);
    assert.equal(r?.len, Buffer.byteLength(want), `job ${id}: the length of its stored result`);
    assert.equal(r?.h, createHash('md5').update(want, 'utf8').digest('hex'), `job ${id}: its stored result`);
  }
  assert.deepEqual(errors, []);
});

test('an extension without queue_ack_batch: one clear error, then every job is acked with queue_ack', async (t) => {
  const q = uniqueQueue('ackold');
  await pool.query('ALTER FUNCTION queue_ack_batch(bigint[], integer[], jsonb[]) RENAME TO queue_ack_batch_hidden_by_test');
  t.after(() => pool.query('ALTER FUNCTION queue_ack_batch_hidden_by_test(bigint[], integer[], jsonb[]) RENAME TO queue_ack_batch'));
  const { worker, errors } = newWorker({ concurrency: 5, handlers: { [q]: async (job) => { await sleep(5); return { id: job.id }; } } });
  const completes: JobCompleteEvent[] = [];
  worker.on('job:complete', (ev) => completes.push(ev));
  t.after(() => worker.stop({ graceMs: 0 }));
  await worker.start();
  const ids = await pushBatch(pool, q, Array.from({ length: 20 }, (_, n) => ({ n })));
  for (const id of ids) {
    const j = await waitForStatus(pool, id, ['completed']);
    assert.deepEqual(j.result, { id });
  }
  await waitFor(() => completes.length === 20, '20 job:complete events');
  assert.ok(completes.every((ev) => ev.acked));
  const said = errors.filter((e) => /no queue_ack_batch\(bigint\[\], integer\[\], jsonb\[\]\).*acking with queue_ack/.test(e.message));
  assert.equal(said.length, 1, `expected one error about the missing queue_ack_batch, got: ${errors.map((e) => e.message).join(' | ')}`);
  assert.equal(errors.length, 1, errors.map((e) => e.message).join(' | '));
});
