import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { push, Worker, MaxRuntimeExceededError, type JobFailEvent, type JobCompleteEvent, type WorkerOptions } from '../dist';
import { adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, collectErrors, deferred, DATABASE_URL } from './helpers';

// maxRuntimeMs: a hard limit on a handler's run time. Past it the job's lease
// is no longer extended, job.signal aborts, and the attempt is failed at once
// (an ordinary, retryable failure); the slot stays taken until the handler
// returns. Without it a handler keeps its lease however long it runs
// (test/lease.test.ts).

const pool = adminPool();
after(() => pool.end());

async function startWorker(t: { after(fn: () => unknown): void }, opts: Omit<WorkerOptions, 'connectionString'>): Promise<{ worker: Worker; errors: Error[]; fails: JobFailEvent[]; completes: JobCompleteEvent[] }> {
  const worker = new Worker({ connectionString: DATABASE_URL, ...opts });
  const errors = collectErrors(worker);
  const fails: JobFailEvent[] = [];
  const completes: JobCompleteEvent[] = [];
  worker.on('job:fail', (ev) => fails.push(ev));
  worker.on('job:complete', (ev) => completes.push(ev));
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  return { worker, errors, fails, completes };
}

test('maxRuntimeMs is checked: positive, finite, a number, on the worker and per queue', () => {
  const handlers = { q: () => 1 };
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, '500']) {
    assert.throws(() => new Worker({ connectionString: DATABASE_URL, handlers, maxRuntimeMs: bad as number }),
      (err: Error) => err instanceof TypeError && /^maxRuntimeMs must be a positive, finite number of milliseconds/.test(err.message),
      `maxRuntimeMs ${String(bad)}`);
    assert.throws(() => new Worker({ connectionString: DATABASE_URL, handlers: { q: { handler: () => 1, maxRuntimeMs: bad as number } } }),
      (err: Error) => err instanceof TypeError && /^the maxRuntimeMs of queue "q" must be a positive, finite number/.test(err.message),
      `per-queue maxRuntimeMs ${String(bad)}`);
  }
  assert.throws(() => new Worker({ connectionString: DATABASE_URL, handlers: { q: { maxRuntimeMs: 5 } as never } }), /handler of queue "q" is not a function/);
  // The error text's durations, as the other clients print them.
  assert.equal(new MaxRuntimeExceededError(500).message, 'max_runtime exceeded: the handler ran longer than 500ms');
  assert.equal(new MaxRuntimeExceededError(1500).message, 'max_runtime exceeded: the handler ran longer than 1.5s');
  assert.equal(new MaxRuntimeExceededError(2000).message, 'max_runtime exceeded: the handler ran longer than 2s');
  assert.equal(new MaxRuntimeExceededError(90_000).message, 'max_runtime exceeded: the handler ran longer than 90s');
  assert.equal(new MaxRuntimeExceededError(0.5).message, 'max_runtime exceeded: the handler ran longer than 0.5ms');
});

test('(a) a handler past maxRuntimeMs: the attempt is failed at once with the exact error, then retried; the late return changes nothing', async (t) => {
  const q = uniqueQueue('maxrt');
  const started = new Map<number, number>();
  let firstReturned = false;
  const { worker, errors, fails, completes } = await startWorker(t, {
    maxRuntimeMs: 500,
    handlers: {
      [q]: async (job) => {
        started.set(job.attempt, performance.now());
        if (job.attempt >= 2) return { attempt: job.attempt };
        await sleep(3000); // ignores its signal
        firstReturned = true;
        return 'too late';
      },
    },
  });
  const id = await push(pool, q, {}, { backoffBase: 0, maxAttempts: 3 });
  await waitFor(() => fails.length === 1, 'the failure of attempt 1', 5000, 5);
  const failedAt = performance.now();
  const ev = fails[0]!;
  const took = failedAt - started.get(1)!;
  assert.ok(took >= 490 && took < 1500, `attempt 1 was failed ${took.toFixed(0)} ms after its start (max runtime 500 ms)`);
  assert.ok(ev.error instanceof MaxRuntimeExceededError);
  assert.equal((ev.error as Error).message, 'max_runtime exceeded: the handler ran longer than 500ms');
  assert.equal(ev.job.attempt, 1);
  assert.equal(ev.permanent, false);
  assert.ok(ev.durationMs >= 490 && ev.durationMs < 1500, `durationMs ${ev.durationMs}`);
  assert.ok(ev.status === 'pending' || ev.status === 'retrying', `status ${ev.status}`);
  // The second attempt (returns at once) completes it while the first handler still sleeps.
  const j = await waitForStatus(pool, id, ['completed'], 5000);
  assert.equal(firstReturned, false, 'the retry ran while the first handler was still running');
  assert.equal(j.attempts, 2);
  assert.deepEqual(j.result, { attempt: 2 });
  assert.equal(j.last_error, 'max_runtime exceeded: the handler ran longer than 500ms');
  assert.deepEqual(j.errors.map((e: { attempt: number; error: string }) => [e.attempt, e.error]),
    [[1, 'max_runtime exceeded: the handler ran longer than 500ms']]);
  // The first handler returns late: nothing is acked or failed a second time.
  await waitFor(() => firstReturned, 'the first handler to return', 5000);
  await sleep(200);
  assert.equal(fails.length, 1);
  assert.deepEqual(completes.map((c) => c.job.attempt), [2]);
  const after = await jobOf(pool, id);
  assert.equal(after!.status, 'completed');
  assert.deepEqual(after!.result, { attempt: 2 });
  await waitFor(() => worker.runningCount === 0, 'the slot to free once the late handler returned', 2000);
  assert.deepEqual(errors, []);
});

test('(b) a job whose handler always hangs ends in the dead letters after max_attempts', async (t) => {
  const q = uniqueQueue('maxrt-dead');
  const { fails, errors } = await startWorker(t, {
    maxRuntimeMs: 300,
    handlers: { [q]: () => new Promise(() => undefined) }, // never settles
  });
  const id = await push(pool, q, {}, { backoffBase: 0, maxAttempts: 2 });
  const j = await waitForStatus(pool, id, ['failed'], 5000);
  assert.equal(j.attempts, 2);
  assert.equal(j.last_error, 'max_runtime exceeded: the handler ran longer than 300ms');
  const dead = await pool.query('SELECT id::text AS id, attempts, last_error FROM queue_dead($1)', [q]);
  assert.deepEqual(dead.rows, [{ id, attempts: 2, last_error: 'max_runtime exceeded: the handler ran longer than 300ms' }]);
  assert.deepEqual(fails.map((f) => [f.job.attempt, f.status, (f.error as Error).message]), [
    [1, 'pending', 'max_runtime exceeded: the handler ran longer than 300ms'],
    [2, 'failed', 'max_runtime exceeded: the handler ran longer than 300ms'],
  ]);
  assert.deepEqual(errors, []);
});

test('(c) a cooperative handler sees job.signal abort with MaxRuntimeExceededError; what it throws then is ignored; its slot frees at once', async (t) => {
  const q = uniqueQueue('maxrt-coop');
  const seen = deferred<{ aborted: boolean; reason: unknown; at: number }>();
  let t0 = 0;
  const { worker, fails, errors } = await startWorker(t, {
    maxRuntimeMs: 400,
    handlers: {
      [q]: (job) => {
        t0 = performance.now();
        return new Promise((_resolve, reject) => {
          job.signal.addEventListener('abort', () => {
            seen.resolve({ aborted: job.signal.aborted, reason: job.signal.reason, at: performance.now() });
            reject(new Error('stopped as asked')); // discarded: the job is failed with the max runtime's error
          });
        });
      },
    },
  });
  const id = await push(pool, q, {}, { maxAttempts: 1 });
  const s = await seen.promise;
  assert.equal(s.aborted, true);
  assert.ok(s.reason instanceof MaxRuntimeExceededError);
  assert.equal((s.reason as Error).message, 'max_runtime exceeded: the handler ran longer than 400ms');
  assert.ok(s.at - t0 >= 390 && s.at - t0 < 1400, `aborted after ${(s.at - t0).toFixed(0)} ms`);
  const j = await waitForStatus(pool, id, ['failed'], 3000);
  assert.equal(j.last_error, 'max_runtime exceeded: the handler ran longer than 400ms');
  await waitFor(() => worker.runningCount === 0, 'the slot to free', 1000);
  await sleep(200);
  assert.equal(fails.length, 1, 'one failure only: the handler\'s own rejection was discarded');
  assert.ok(fails[0]!.error instanceof MaxRuntimeExceededError);
  assert.deepEqual(errors, []);
});

test('(d) concurrency 1: a handler that ignores its signal keeps the slot; the next job starts only once it returned', async (t) => {
  const q = uniqueQueue('maxrt-slot');
  const log: Array<{ n: number; start: number; end?: number }> = [];
  let peak = 0;
  let now = 0;
  const { worker, errors } = await startWorker(t, {
    concurrency: 1,
    maxRuntimeMs: 300,
    pollIntervalMs: 100,
    handlers: {
      [q]: async (job) => {
        now++;
        peak = Math.max(peak, now);
        const rec: { n: number; start: number; end?: number } = { n: (job.payload as { n: number }).n, start: performance.now() };
        log.push(rec);
        if (rec.n === 0) await sleep(1500); // ignores its signal
        rec.end = performance.now();
        now--;
        return rec.n;
      },
    },
  });
  const first = await push(pool, q, { n: 0 }, { maxAttempts: 1 });
  await waitFor(() => log.length === 1, 'the first job to start');
  const second = await push(pool, q, { n: 1 });
  const j1 = await waitForStatus(pool, first, ['failed'], 3000);
  assert.equal(j1.last_error, 'max_runtime exceeded: the handler ran longer than 300ms');
  // Failed, but its handler still runs: the only slot is still taken.
  assert.equal(log.length, 1, 'the second job started while the first handler still ran');
  assert.equal(worker.runningCount, 1);
  assert.equal((await jobOf(pool, second))!.status, 'pending');
  await waitForStatus(pool, second, ['completed'], 5000);
  assert.equal(log.length, 2);
  assert.ok(log[1]!.start >= log[0]!.end!, 'the second job started before the first handler returned');
  assert.equal(peak, 1);
  assert.deepEqual(errors, []);
});

test('(e) a queue\'s own maxRuntimeMs wins over the worker\'s default', async (t) => {
  const byDefault = uniqueQueue('maxrt-default');
  const longer = uniqueQueue('maxrt-longer');
  const shorter = uniqueQueue('maxrt-shorter');
  const slow = async (): Promise<string> => {
    await sleep(800);
    return 'finished';
  };
  const { errors } = await startWorker(t, {
    maxRuntimeMs: 300,
    handlers: {
      [byDefault]: slow,
      [longer]: { handler: slow, maxRuntimeMs: 5000 },
      [shorter]: { handler: async () => { await sleep(3000); return 'finished'; }, maxRuntimeMs: 1500 },
    },
  });
  const a = await push(pool, byDefault, {}, { maxAttempts: 1 });
  const b = await push(pool, longer, {}, { maxAttempts: 1 });
  const c = await push(pool, shorter, {}, { maxAttempts: 1 });
  const ja = await waitForStatus(pool, a, ['failed', 'completed'], 5000);
  assert.equal(ja.status, 'failed');
  assert.equal(ja.last_error, 'max_runtime exceeded: the handler ran longer than 300ms');
  const jb = await waitForStatus(pool, b, ['failed', 'completed'], 5000);
  assert.equal(jb.status, 'completed');
  assert.equal(jb.result, 'finished');
  const jc = await waitForStatus(pool, c, ['failed', 'completed'], 5000);
  assert.equal(jc.status, 'failed');
  assert.equal(jc.last_error, 'max_runtime exceeded: the handler ran longer than 1.5s');
  assert.deepEqual(errors, []);
});

test('a graceful stop within the max runtime works as before: a job that finishes in the grace completes; one given back is not failed later', async (t) => {
  const q = uniqueQueue('maxrt-stop');
  const { worker, fails, errors } = await startWorker(t, {
    maxRuntimeMs: 1200,
    concurrency: 2,
    handlers: {
      [q]: async (job) => {
        await sleep((job.payload as { ms: number }).ms);
        return 'done';
      },
    },
  });
  const releases: string[] = [];
  worker.on('job:release', (ev) => releases.push(ev.job.id));
  const quick = await push(pool, q, { ms: 300 });
  const slow = await push(pool, q, { ms: 3000 });
  await waitFor(async () => (await jobOf(pool, slow))!.status === 'processing' && (await jobOf(pool, quick))!.status === 'processing', 'both jobs to start');
  await worker.stop({ graceMs: 600 });
  assert.equal((await jobOf(pool, quick))!.status, 'completed');
  assert.deepEqual(releases, [slow]);
  await sleep(1500); // past the slow one's max runtime: its clock was stopped when it was given back
  const js = await jobOf(pool, slow);
  assert.equal(js!.status, 'pending');
  assert.equal(js!.last_error, null);
  assert.equal(fails.length, 0);
  assert.deepEqual(errors, []);
});
