import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { push, Worker, WorkerStoppedError } from '../dist';
import {
  adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, collectErrors, DATABASE_URL,
} from './helpers';

const pool = adminPool();
after(() => pool.end());

/** Due now: `run_at` is not in the future (a given-back job is claimable at once). */
async function dueNow(id: string): Promise<boolean> {
  const res = await pool.query<{ due: boolean }>(`SELECT (queue_job($1::bigint) ->> 'run_at')::timestamptz <= now() AS due`, [id]);
  return res.rows[0]!.due;
}

interface Child {
  proc: ChildProcess;
  lines: Array<Record<string, any>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function spawnNode(script: string, env: Record<string, string>): Child {
  const proc = spawn(process.execPath, [script], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, any>> = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l));
    } catch {
      lines.push({ text: l });
    }
  });
  proc.stderr!.on('data', (d) => process.stderr.write(`[child] ${d}`));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal })));
  return { proc, lines, exited };
}

/** Another worker finishes whatever was given back: nothing is lost. Returns each job's claims by that worker (attempt/maxAttempts). */
async function drain(q: string, ids: string[]): Promise<Map<string, string[]>> {
  const claims = new Map<string, string[]>();
  const w = new Worker({
    connectionString: DATABASE_URL, pollIntervalMs: 200,
    handlers: {
      [q]: (job) => {
        claims.set(job.id, [...(claims.get(job.id) ?? []), `${job.attempt}/${job.maxAttempts}`]);
        return 'finished by the next worker';
      },
    },
  });
  collectErrors(w);
  await w.start();
  try {
    for (const id of ids) await waitForStatus(pool, id, ['completed'], 10_000);
  } finally {
    await w.stop({ graceMs: 1000 });
  }
  return claims;
}

test('SIGTERM mid-job: a job that finishes within the grace completes, a longer one is given back, none is lost', async (t) => {
  const q = uniqueQueue('sigterm');
  const graceMs = 1500;
  const child = spawnNode(join(__dirname, 'fixtures', 'worker-child.js'), {
    QUEUE_TEST_DATABASE_URL: DATABASE_URL, QUEUE: q, GRACE_MS: String(graceMs), WORKER_NAME: `sigterm-${q}`,
  });
  t.after(() => { child.proc.kill('SIGKILL'); });
  await waitFor(() => child.lines.some((l) => l.event === 'ready'), 'the child worker to start');
  const quick = await push(pool, q, { ms: 700 }, { maxAttempts: 3 });
  const slow = await push(pool, q, { ms: 30_000 }, { maxAttempts: 3 });
  await waitFor(() => child.lines.filter((l) => l.event === 'start').length === 2, 'both jobs to start');
  const t0 = Date.now();
  child.proc.kill('SIGTERM');
  const exit = await Promise.race([child.exited, sleep(graceMs + 8000).then(() => null)]);
  assert.ok(exit, `the worker did not exit within the grace (+8 s); its output: ${JSON.stringify(child.lines)}`);
  const took = Date.now() - t0;
  t.diagnostic(`the child exited ${took} ms after SIGTERM (grace ${graceMs} ms), ${JSON.stringify(exit)}`);
  assert.ok(took < graceMs + 5000, `stop took ${took} ms`);
  assert.ok(exit.signal === 'SIGTERM' || exit.code === 0, `exit ${JSON.stringify(exit)}`);

  // The quick job finished within the grace, in its first attempt.
  const jq = await jobOf(pool, quick);
  assert.equal(jq!.status, 'completed');
  assert.equal(jq!.attempts, 1);
  assert.ok(child.lines.some((l) => l.event === 'complete' && l.id === quick && l.acked === true));

  // The slow one was not finished: it is back in line, never lost, never left processing.
  const js = await jobOf(pool, slow);
  assert.ok(js, 'the slow job still exists');
  assert.equal(js.status, 'pending', `the slow job is ${js.status}, not back in line`);
  assert.equal(js.lease_until, null);
  assert.equal(js.last_error, null, 'a give-back records no failure');
  assert.ok(await dueNow(slow), 'claimable at once, not after a delay');
  const rel = child.lines.find((l) => l.event === 'release' && l.id === slow);
  assert.ok(rel, 'the worker reported giving the slow job back');
  assert.equal(rel.via, 'queue_release');
  assert.equal(rel.released, true);
  // Not burned: the claim counter moved on (1) and max_attempts grew by one (4), so 3 attempts are left, as before the claim.
  assert.equal(js.attempts, 1);
  assert.equal(js.max_attempts, 4);

  const t1 = Date.now();
  const claims = await drain(q, [slow]);
  assert.ok(Date.now() - t1 < 3000, 'picked up at once by the next worker');
  assert.deepEqual(claims.get(slow), ['2/4'], 'the next claim is attempt 2 of 4, run once');
  // Never double-run: the stopped worker never reported an outcome for it.
  assert.deepEqual(child.lines.filter((l) => l.id === slow).map((l) => l.event), ['start', 'release']);
  const done = await jobOf(pool, slow);
  assert.equal(done!.attempts, 2);
  assert.equal(done!.result, 'finished by the next worker');
});

test('stop({ graceMs }): claims nothing more, waits for running handlers, gives back the rest at once', async (t) => {
  const q = uniqueQueue('stop');
  let reason: unknown = null;
  const worker = new Worker({
    connectionString: DATABASE_URL,
    concurrency: 2,
    handlers: {
      [q]: async (job) => {
        const ms = (job.payload as { ms: number }).ms;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ms);
          job.signal.addEventListener('abort', () => { reason = job.signal.reason; clearTimeout(timer); resolve(); });
        });
        return 'done';
      },
    },
  });
  collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  const releases: Array<{ id: string; via: string; released: boolean }> = [];
  worker.on('job:release', (e) => releases.push({ id: e.job.id, via: e.via, released: e.released }));
  const started = new Set<string>();
  worker.on('job:start', (e) => started.add(e.job.id));
  const quick = await push(pool, q, { ms: 300 });
  const slow = await push(pool, q, { ms: 60_000 });
  await waitFor(() => started.size === 2, 'both jobs to start');
  const t0 = Date.now();
  const stopped = worker.stop({ graceMs: 800 });
  await sleep(50);
  const late = await push(pool, q, { ms: 1 }); // pushed while stopping: must not be claimed
  await stopped;
  const took = Date.now() - t0;
  assert.ok(took >= 700 && took < 4000, `stop took ${took} ms with a grace of 800 ms`);
  assert.equal(worker.state, 'stopped');
  assert.ok(reason instanceof WorkerStoppedError, 'the running handler was told through its AbortSignal');
  assert.equal((await jobOf(pool, quick))!.status, 'completed');
  assert.equal((await jobOf(pool, late))!.status, 'pending', 'a stopping worker claimed a new job');
  assert.ok(!started.has(late));
  const js = await jobOf(pool, slow);
  assert.equal(js!.status, 'pending');
  assert.ok(await dueNow(slow));
  assert.deepEqual(releases, [{ id: slow, via: 'queue_release', released: true }]);
  // The attempt is not counted: 1 claim so far, and 3 + 1 allowed: the default budget of 3 is intact.
  assert.deepEqual([js!.attempts, js!.max_attempts], [1, 4]);
  const claims = await drain(q, [slow, late]);
  assert.deepEqual(claims.get(slow), ['2/4']);
  assert.deepEqual(claims.get(late), ['1/3']);
});

test('an extension without queue_release: a clear error, no attempt burned, the lease brings the job back', async (t) => {
  const q = uniqueQueue('norelease');
  const worker = new Worker({
    connectionString: DATABASE_URL,
    handlers: { [q]: (job) => new Promise((resolve) => job.signal.addEventListener('abort', () => resolve(null))) },
  });
  const errors = collectErrors(worker);
  const releases: Array<{ via: string; released: boolean }> = [];
  worker.on('job:release', (e) => releases.push({ via: e.via, released: e.released }));
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  const id = await push(pool, q, {}, { timeout: 1000 });
  await waitForStatus(pool, id, ['processing']);
  await sleep(100);
  await pool.query('ALTER FUNCTION queue_release(bigint, integer) RENAME TO queue_release_hidden_by_test');
  try {
    await worker.stop({ graceMs: 0 });
  } finally {
    await pool.query('ALTER FUNCTION queue_release_hidden_by_test(bigint, integer) RENAME TO queue_release');
  }
  assert.deepEqual(releases, [{ via: 'none', released: false }]);
  assert.ok(errors.some((e) => /no queue_release\(bigint, integer\).*older than 0\.2\.0/.test(e.message)),
    errors.map((e) => e.message).join('\n'));
  const j = await jobOf(pool, id);
  assert.equal(j!.last_error, null, 'nothing was failed in its place');
  await waitForStatus(pool, id, ['pending', 'retrying'], 15_000); // its 1 s lease ran out: not lost
});

test('examples/worker.js runs: pushes, processes and stops on SIGINT', async (t) => {
  const q = uniqueQueue('example');
  const child = spawnNode(join(__dirname, '..', 'examples', 'worker.js'), { DATABASE_URL, QUEUE: q, PUSH_DEMO_JOBS: '3' });
  t.after(() => { child.proc.kill('SIGKILL'); });
  const text = (): string => child.lines.map((l) => l.text ?? JSON.stringify(l)).join('\n');
  await waitFor(() => (text().match(/completed job/g) ?? []).length >= 3, 'the example to complete 3 jobs', 15_000);
  child.proc.kill('SIGINT');
  const exit = await Promise.race([child.exited, sleep(10_000).then(() => null)]);
  assert.ok(exit, `the example did not stop: ${text()}`);
  const done = await pool.query(`SELECT (queue_stats($1) ->> 'completed')::int AS n`, [q]);
  assert.equal(done.rows[0].n, 3);
});
