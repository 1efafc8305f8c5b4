import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { push, pushBatch, Worker, PermanentError, RetryIn, LeaseLostError, WorkerStoppedError, VERSION, type Job, type WorkerOptions } from '../dist';
import {
  adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, nextEvent, deferred, collectErrors, DATABASE_URL,
} from './helpers';

const pool = adminPool();
after(() => pool.end());

/** A started worker that is stopped when the test ends. */
async function startWorker(t: { after(fn: () => unknown): void }, opts: Omit<WorkerOptions, 'connectionString'>): Promise<Worker> {
  const worker = new Worker({ connectionString: DATABASE_URL, ...opts });
  collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  return worker;
}

test('an idle worker is woken by NOTIFY: pushed jobs start at once, not at the next poll', async (t) => {
  const q = uniqueQueue('wake');
  const started = new Map<string, number>();
  const worker = await startWorker(t, {
    handlers: { [q]: (job) => { started.set(job.id, performance.now()); } },
    pollIntervalMs: 60_000, // only a notification can start a job within the test's bound
  });
  await sleep(300); // idle: the first claim found nothing
  const latencies: number[] = []; // commit (push returned) → handler start
  const pushes: number[] = []; // the push's own round trip
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    const id = await push(pool, q, { i });
    const t1 = performance.now();
    await waitFor(() => started.has(id), `job ${id} to start`, 5000, 1);
    pushes.push(t1 - t0);
    latencies.push(Math.max(0, started.get(id)! - t1));
    await sleep(50);
  }
  const stat = (xs: number[]): string => {
    const s = [...xs].sort((a, b) => a - b);
    return `p50 ${s[Math.floor(s.length / 2)]!.toFixed(2)} ms, max ${s[s.length - 1]!.toFixed(2)} ms`;
  };
  const line = `wake-up latency, push committed → handler started, 10 jobs: ${stat(latencies)} (the push itself: ${stat(pushes)})`;
  console.log(line);
  t.diagnostic(line);
  const max = Math.max(...latencies);
  assert.ok(max < 1000, `a job waited ${max} ms although the worker LISTENs (poll is 60 s)`);
  assert.equal(worker.state, 'running');
});

test('the handler result is stored by queue_ack with the claim attempt; events carry durations', async (t) => {
  const q = uniqueQueue('ack');
  const worker = await startWorker(t, {
    handlers: { [q]: async (job: Job<{ n: number }>) => { await sleep(120); return [job.payload.n, { ok: true }]; } },
  });
  const starts: string[] = [];
  worker.on('job:start', ({ job }) => starts.push(job.id));
  const done = nextEvent(worker, 'job:complete');
  const id = await push(pool, q, { n: 5 });
  const [ev] = await done;
  assert.equal(ev.job.id, id);
  assert.equal(ev.job.attempt, 1);
  assert.equal(ev.acked, true);
  assert.ok(ev.durationMs >= 100, `durationMs ${ev.durationMs}`);
  assert.deepEqual(starts, [id]);
  const j = await jobOf(pool, id);
  assert.equal(j!.status, 'completed');
  assert.deepEqual(j!.result, [5, { ok: true }]);
  assert.equal(j!.worker, worker.name);
});

test('a handler error fails the attempt with the error recorded, and the retry succeeds', async (t) => {
  const q = uniqueQueue('retry');
  const attempts: number[] = [];
  const worker = await startWorker(t, {
    handlers: {
      [q]: (job) => {
        attempts.push(job.attempt);
        if (job.attempt === 1) throw new Error(`boom on ${job.id}`);
        return { recovered: true };
      },
    },
  });
  const failSeen = deferred<Record<string, any>>();
  worker.on('job:fail', async (ev) => failSeen.resolve({ ev, job: await jobOf(pool, ev.job.id) }));
  const id = await push(pool, q, {}, { backoffBase: '300 milliseconds', maxAttempts: 3 });
  const { ev, job: afterFail } = await failSeen.promise;
  assert.equal(ev.status, 'retrying');
  assert.equal(ev.permanent, false);
  assert.ok(ev.error instanceof Error);
  assert.ok(['retrying', 'pending', 'processing'].includes(afterFail.status), afterFail.status);
  assert.match(afterFail.last_error, new RegExp(`boom on ${id}`));
  const j = await waitForStatus(pool, id, ['completed']);
  assert.equal(j.attempts, 2);
  assert.deepEqual(j.result, { recovered: true });
  assert.match(j.last_error ?? '', /boom/, 'the error of attempt 1 stays recorded');
  assert.deepEqual(attempts, [1, 2]);
});

test('RetryIn and retryInMs choose the retry delay', async (t) => {
  const q = uniqueQueue('retryin');
  const worker = await startWorker(t, {
    handlers: {
      [q]: (job: Job<{ kind: string }>) => {
        if (job.payload.kind === 'later') throw new RetryIn('1 hour', 'rate limited');
        if (job.attempt === 1) throw Object.assign(new Error('flaky'), { retryInMs: 0 });
        return 'second try';
      },
    },
  });
  const fails: Array<{ id: string; status: string | null; retryIn: string | null }> = [];
  worker.on('job:fail', (ev) => fails.push({ id: ev.job.id, status: ev.status, retryIn: ev.retryIn }));
  const later = await push(pool, q, { kind: 'later' }, { backoffBase: '1 second' });
  const now = await push(pool, q, { kind: 'now' }, { backoffBase: '1 hour' });
  const j1 = await waitForStatus(pool, later, ['retrying']);
  const wait = new Date(j1.run_at).getTime() - Date.now();
  assert.ok(wait > 55 * 60_000 && wait <= 3_600_000 + 5000, `RetryIn('1 hour') gave a retry in ${wait} ms`);
  assert.match(j1.last_error, /rate limited/);
  const j2 = await waitForStatus(pool, now, ['completed'], 5000); // retryInMs 0: at once, not after the 1 hour backoff
  assert.equal(j2.attempts, 2);
  assert.equal(j2.result, 'second try');
  assert.deepEqual(fails.find((f) => f.id === now), { id: now, status: 'pending', retryIn: '0 milliseconds' });
  assert.deepEqual(fails.find((f) => f.id === later), { id: later, status: 'retrying', retryIn: '1 hour' });
});

test('PermanentError skips the retries: the job is a dead letter at once', async (t) => {
  const q = uniqueQueue('perm');
  let calls = 0;
  const worker = await startWorker(t, {
    handlers: { [q]: () => { calls++; throw new PermanentError('bad address nobody@nowhere'); } },
  });
  const failed = nextEvent(worker, 'job:fail');
  const id = await push(pool, q, { to: 'nobody@nowhere' }, { maxAttempts: 5, backoffBase: 0 });
  const [ev] = await failed;
  assert.equal(ev.status, 'failed');
  assert.equal(ev.permanent, true);
  const dead = await pool.query('SELECT * FROM queue_dead($1)', [q]);
  assert.equal(dead.rows.length, 1);
  assert.equal(String(dead.rows[0].id), id);
  assert.equal(dead.rows[0].status, 'failed');
  assert.equal(dead.rows[0].attempts, 1);
  assert.match(dead.rows[0].last_error, /PermanentError: bad address nobody@nowhere/);
  await sleep(300);
  assert.equal(calls, 1);
});

test('a job that keeps failing ends in the dead letters after max_attempts', async (t) => {
  const q = uniqueQueue('exhaust');
  const worker = await startWorker(t, { handlers: { [q]: (job) => { throw new Error(`attempt ${job.attempt} failed`); } } });
  const id = await push(pool, q, {}, { maxAttempts: 2, backoffBase: 0 });
  const j = await waitForStatus(pool, id, ['failed']);
  assert.equal(j.attempts, 2);
  assert.match(j.last_error, /attempt 2 failed/);
  assert.equal(worker.state, 'running');
});

test('a result the server cannot store fails the job instead of losing it', async (t) => {
  const q = uniqueQueue('badresult');
  await startWorker(t, { handlers: { [q]: () => ({ n: 1n }) } }); // BigInt: not JSON
  const id = await push(pool, q, {}, { maxAttempts: 1 });
  const j = await waitForStatus(pool, id, ['failed']);
  assert.match(j.last_error, /not JSON-serializable/);
});

test('a stale claim: touch loses the lease, the signal fires, the late ack returns false and nothing throws', async (t) => {
  const q = uniqueQueue('stale');
  const aborted = deferred<unknown>();
  const worker = await startWorker(t, {
    concurrency: 1, // the running handler holds the only slot: the worker cannot take the job back itself
    handlers: {
      [q]: async (job) => {
        if (!(job.payload as { hold?: boolean }).hold) return 'next job';
        if (job.attempt > 1) return 'unexpected';
        await new Promise<void>((resolve) => job.signal.addEventListener('abort', () => resolve()));
        aborted.resolve(job.signal.reason);
        return 'late result';
      },
    },
  });
  const errors: Error[] = [];
  worker.on('error', (e) => errors.push(e));
  const lost = nextEvent(worker, 'job:lost');
  const complete = nextEvent(worker, 'job:complete');
  const started = nextEvent(worker, 'job:start');
  const id = await push(pool, q, { hold: true }, { timeout: '1 second', backoffBase: 0 });
  await started;
  // Someone else takes the job over: this claim (attempt 1) becomes stale.
  const failed = await pool.query('SELECT queue_fail($1::bigint, $2, 1, $3::interval) AS s', [id, 'taken over', '0 seconds']);
  assert.equal(failed.rows[0].s, 'pending');
  const thief = await pool.query('SELECT id, attempt FROM queue_pop($1, $2, 1)', [q, 'thief']);
  assert.equal(thief.rows.length, 1);
  assert.equal(thief.rows[0].attempt, 2);
  await pool.query(`SELECT queue_touch($1::bigint, '1 minute', 2)`, [id]); // the thief keeps its claim for the test
  await lost;
  assert.ok((await aborted.promise) instanceof LeaseLostError);
  const [ev] = await complete;
  assert.equal(ev.acked, false, 'the ack of attempt 1 must not complete attempt 2');
  const j = await jobOf(pool, id);
  assert.equal(j!.status, 'processing');
  assert.equal(j!.worker, 'thief');
  const ack = await pool.query('SELECT queue_ack($1::bigint, $2::jsonb, 2) AS ok', [id, '"thief result"']);
  assert.equal(ack.rows[0].ok, true);
  assert.deepEqual(errors, []);
  // The worker goes on.
  const next = nextEvent(worker, 'job:complete');
  const id2 = await push(pool, q, {});
  assert.equal((await next)[0].job.id, id2);
});

test('job.signal first read after the job was aborted is already aborted, with the reason', async () => {
  // The worker makes a job's AbortController only when the handler reads job.signal.
  const q = uniqueQueue('signal');
  const hold = deferred();
  const worker = new Worker({ connectionString: DATABASE_URL, concurrency: 1, handlers: { [q]: () => hold.promise } });
  collectErrors(worker);
  await worker.start();
  const started = nextEvent(worker, 'job:start');
  const released = nextEvent(worker, 'job:release');
  const id = await push(pool, q, {});
  const [{ job }] = await started;
  await worker.stop({ graceMs: 0 }); // the handler never looked at its signal
  const [ev] = await released;
  assert.equal(ev.job.id, id);
  assert.equal(ev.via, 'queue_release');
  assert.equal(job.signal.aborted, true);
  assert.ok(job.signal.reason instanceof WorkerStoppedError);
  assert.equal(job.signal, job.signal, 'one signal per job');
  hold.resolve();
  assert.equal((await jobOf(pool, id))!.status, 'pending');
});

test('progress goes to queue_progress with the attempt; the worker registers with a heartbeat', async (t) => {
  const q = uniqueQueue('progress');
  const release = deferred();
  const reported = deferred<boolean>();
  const worker = await startWorker(t, {
    name: `progress-worker-${q}`,
    concurrency: 3,
    handlers: { [q]: async (job) => { reported.resolve(await job.progress(3, 10, 'three of ten')); await release.promise; } },
  });
  const id = await push(pool, q, {});
  assert.equal(await reported.promise, true);
  const j = await jobOf(pool, id);
  assert.equal(j!.progress.current, 3);
  assert.equal(j!.progress.total, 10);
  assert.equal(j!.progress.message, 'three of ten');
  const w = await pool.query('SELECT * FROM queue_workers() WHERE worker = $1', [worker.name]);
  assert.equal(w.rows.length, 1);
  const info = w.rows[0].info;
  assert.equal(info.pid, process.pid);
  assert.equal(info.version, VERSION);
  assert.notEqual(VERSION, 'unknown');
  assert.equal(info.library, '@queue/client');
  assert.deepEqual(info.queues, [q]);
  assert.equal(info.concurrency, 3);
  assert.equal(typeof info.host, 'string');
  assert.equal(w.rows[0].healthy, true);
  release.resolve();
  await waitForStatus(pool, id, ['completed']);
});

test('never more than `concurrency` handlers at once, claimed in batches up to the free capacity', async (t) => {
  const q = uniqueQueue('conc');
  let runningNow = 0;
  let maxRunning = 0;
  const name = `conc-${q}`;
  const worker = await startWorker(t, {
    name,
    concurrency: 4,
    handlers: {
      [q]: async () => {
        runningNow++;
        maxRunning = Math.max(maxRunning, runningNow);
        await sleep(60 + Math.random() * 60);
        runningNow--;
      },
    },
  });
  const ids = await pushBatch(pool, q, Array.from({ length: 30 }, (_, n) => ({ n })));
  let maxInDb = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const r = await pool.query('SELECT running_jobs::int AS n FROM queue_workers() WHERE worker = $1', [name]);
      maxInDb = Math.max(maxInDb, r.rows[0]?.n ?? 0);
      await sleep(5);
    }
  })();
  for (const id of ids) await waitForStatus(pool, id, ['completed'], 20_000);
  sampling = false;
  await sampler;
  assert.ok(maxRunning <= 4, `${maxRunning} handlers ran at once`);
  assert.equal(maxRunning, 4, 'the worker should use its whole capacity');
  assert.ok(maxInDb <= 4, `${maxInDb} jobs were processing at once`);
  assert.ok(maxInDb >= 1);
  assert.equal(worker.runningCount, 0);
});

test('a serial group runs one job at a time, in order, across several workers', async (t) => {
  const q = uniqueQueue('serial');
  const group = `${q}:customer-42`;
  const log: Array<{ id: string; worker: string; start: number; end: number }> = [];
  const workers: Worker[] = [];
  for (let w = 0; w < 3; w++) {
    workers.push(await startWorker(t, {
      name: `serial-${w}-${q}`,
      concurrency: 3,
      handlers: {
        [q]: async (job) => {
          const start = performance.now();
          await sleep(20 + Math.random() * 30);
          log.push({ id: job.id, worker: job.worker, start, end: performance.now() });
        },
      },
    }));
  }
  const ids: string[] = [];
  for (let i = 0; i < 15; i++) ids.push(await push(pool, q, { i }, { serialGroup: group }));
  const others = await pushBatch(pool, q, Array.from({ length: 10 }, (_, i) => ({ other: i }))); // ungrouped: run alongside
  for (const id of [...ids, ...others]) await waitForStatus(pool, id, ['completed'], 20_000);
  const grouped = log.filter((e) => ids.includes(e.id)).sort((a, b) => a.start - b.start);
  assert.deepEqual(grouped.map((e) => e.id), ids, 'the group ran in push order');
  for (let i = 1; i < grouped.length; i++) {
    assert.ok(grouped[i]!.start >= grouped[i - 1]!.end, `job ${grouped[i]!.id} started before ${grouped[i - 1]!.id} ended`);
  }
  t.diagnostic(`serial group served by ${new Set(grouped.map((e) => e.worker)).size} of 3 workers`);
});
