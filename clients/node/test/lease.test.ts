import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { push, Worker } from '../dist';
import { adminPool, uniqueQueue, sleep, waitForStatus, collectErrors, DATABASE_URL } from './helpers';

const pool = adminPool();
after(() => pool.end());

test('a handler running longer than its timeout keeps its lease and completes in attempt 1', async (t) => {
  const q = uniqueQueue('lease');
  const runs: Array<{ worker: string; attempt: number }> = [];
  const make = (name: string): Worker => {
    const w = new Worker({
      connectionString: DATABASE_URL,
      name,
      handlers: { [q]: async (job) => { runs.push({ worker: job.worker, attempt: job.attempt }); await sleep(5000); return 'slow but done'; } },
      pollIntervalMs: 200,
    });
    collectErrors(w);
    t.after(() => w.stop({ graceMs: 0 }));
    return w;
  };
  const a = make(`lease-a-${q}`);
  await a.start();
  const touches: number[] = [];
  const id = await push(pool, q, {}, { timeout: '2 seconds', backoffBase: 0, maxAttempts: 3 });
  // A second, idle worker that would take the job over the moment its lease lapsed
  // (queue.tick = 100 ms expires leases promptly, backoff 0 retries at once).
  await sleep(100);
  const b = make(`lease-b-${q}`);
  await b.start();
  const sampler = setInterval(async () => {
    const r = await pool.query(`SELECT (queue_job($1::bigint) ->> 'lease_until')::timestamptz AS l`, [id]).catch(() => null);
    if (r?.rows[0]?.l) touches.push(new Date(r.rows[0].l).getTime());
  }, 250);
  const j = await waitForStatus(pool, id, ['completed', 'failed', 'expired'], 15_000);
  clearInterval(sampler);
  assert.equal(j.status, 'completed');
  assert.equal(j.attempts, 1);
  assert.equal(j.result, 'slow but done');
  assert.deepEqual(runs, [{ worker: a.name, attempt: 1 }], 'the job ran once, in attempt 1');
  assert.ok(new Set(touches).size >= 3, `the lease was extended while running (saw ${new Set(touches).size} distinct lease ends)`);
});
