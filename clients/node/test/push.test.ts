import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { push, pushBatch, Worker, PRIORITY } from '../dist';
import { adminPool, jobOf, uniqueQueue, sleep, DATABASE_URL } from './helpers';

const pool = adminPool();
after(() => pool.end());

test('push maps every option of queue_push', async () => {
  const q = uniqueQueue('push');
  const runAt = new Date(Date.now() + 3_600_000);
  const id = await push(pool, q, { to: 'a@example.com' }, {
    priority: 'high', runAt, serialGroup: `${q}:g`, maxAttempts: 7, timeout: 90_000,
    backoffBase: '2 seconds', backoffMax: '3 minutes', retryDelays: [1000, '5 minutes'], dedupeKey: 'k-1',
  });
  assert.match(id, /^\d+$/);
  const j = await jobOf(pool, id);
  assert.ok(j);
  assert.equal(j.queue, q);
  assert.deepEqual(j.payload, { to: 'a@example.com' });
  assert.equal(j.priority, PRIORITY.high);
  assert.equal(j.status, 'scheduled');
  assert.equal(new Date(j.run_at).getTime(), runAt.getTime());
  assert.equal(j.serial_group, `${q}:g`);
  assert.equal(j.max_attempts, 7);
  assert.equal(j.timeout, '00:01:30');
  assert.equal(j.backoff_base, '00:00:02');
  assert.equal(j.backoff_max, '00:03:00');
  assert.deepEqual(j.retry_delays, ['00:00:01', '00:05:00']);
  assert.equal(j.dedupe_key, 'k-1');

  // Same dedupe key while the first is live: the same id, nothing added.
  const again = await push(pool, q, { to: 'b@example.com' }, { dedupeKey: 'k-1' });
  assert.equal(again, id);
});

test('priority names, integers and delays', async () => {
  const q = uniqueQueue('prio');
  const ids = await Promise.all([
    push(pool, q, { n: 1 }, { priority: 'low' }),
    push(pool, q, { n: 2 }, { priority: 'CRITICAL' }),
    push(pool, q, { n: 3 }, { priority: -3 }),
    push(pool, q, { n: 4 }, { priority: '7' }),
    push(pool, q, { n: 5 }, { delay: 60_000 }),
    push(pool, q, { n: 6 }, { delay: '2 hours' }),
  ]);
  const jobs = await Promise.all(ids.map((id) => jobOf(pool, id)));
  assert.deepEqual(jobs.slice(0, 4).map((j) => j!.priority), [10, -20, -3, 7]);
  assert.equal(jobs[4]!.status, 'scheduled');
  const delay5 = new Date(jobs[4]!.run_at).getTime() - new Date(jobs[4]!.created_at).getTime();
  assert.ok(Math.abs(delay5 - 60_000) < 1000, `delay of 60000 ms gave ${delay5}`);
  const delay6 = new Date(jobs[5]!.run_at).getTime() - new Date(jobs[5]!.created_at).getTime();
  assert.ok(Math.abs(delay6 - 7_200_000) < 1000, `delay of 2 hours gave ${delay6}`);
  await assert.rejects(push(pool, q, {}, { priority: 'urgent' }), /unknown priority/);
});

test('pushBatch returns the ids in payload order, with the options applied', async () => {
  const q = uniqueQueue('batch');
  const payloads = [{ n: 0 }, [1, 2, 'three'], 'a "quoted" \\ string', 42, null, { nested: { '{': '}' } }];
  const ids = await pushBatch(pool, q, payloads, { priority: 'low', maxAttempts: 2 });
  assert.equal(ids.length, payloads.length);
  assert.deepEqual([...ids].sort((a, b) => Number(a) - Number(b)), ids, 'ids ascend with the payloads');
  for (const [i, id] of ids.entries()) {
    const j = await jobOf(pool, id);
    assert.deepEqual(j!.payload, payloads[i]);
    assert.equal(j!.priority, 10);
    assert.equal(j!.max_attempts, 2);
  }
  assert.deepEqual(await pushBatch(pool, q, []), []);
});

test('a push inside a rolled-back transaction creates no job; a committed one does', async () => {
  const q = uniqueQueue('tx');
  const seen: string[] = [];
  const worker = new Worker({ connectionString: DATABASE_URL, handlers: { [q]: (job) => { seen.push(job.id); } }, pollIntervalMs: 100 });
  await worker.start();
  try {
    const client = await pool.connect();
    let rolledBack: string;
    let batch: string[];
    try {
      await client.query('BEGIN');
      rolledBack = await push(client, q, { n: 1 });
      batch = await pushBatch(client, q, [{ n: 2 }, { n: 3 }]);
      // Visible inside the transaction...
      const inside = await client.query('SELECT queue_job($1::bigint) AS j', [rolledBack]);
      assert.equal(inside.rows[0].j.status, 'pending');
      await sleep(300); // ...but not to the worker, polling every 100 ms.
      assert.equal(seen.length, 0);
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
    for (const id of [rolledBack, ...batch]) assert.equal(await jobOf(pool, id), null, `job ${id} must not exist`);
    const size = await pool.query('SELECT queue_size($1) AS n', [q]);
    assert.equal(Number(size.rows[0].n), 0);
    await sleep(300);
    assert.equal(seen.length, 0, 'the worker ran a job of a rolled-back transaction');

    const c2 = await pool.connect();
    let committed: string;
    try {
      await c2.query('BEGIN');
      committed = await push(c2, q, { n: 4 });
      await c2.query('COMMIT');
    } finally {
      c2.release();
    }
    const deadline = Date.now() + 5000;
    while (!seen.includes(committed) && Date.now() < deadline) await sleep(20);
    assert.deepEqual(seen, [committed]);
  } finally {
    await worker.stop({ graceMs: 1000 });
  }
});

test('misuse fails fast, before any SQL', async () => {
  const q = uniqueQueue('misuse');
  await assert.rejects(push(pool, q, {}, { dedupKey: 'x' } as never), /unknown push option "dedupKey"/);
  await assert.rejects(push(pool, q, {}, { priority: 1.5 }), /priority must be an integer/);
  await assert.rejects(push(pool, q, {}, { runAt: new Date('nope') }), /runAt must be a valid Date/);
  await assert.rejects(push(pool, q, {}, { timeout: Number.NaN }), /timeout must be a finite number/);
  await assert.rejects(push(pool, q, { big: 1n } as never), /BigInt/);
  assert.throws(() => new Worker({ handlers: { 'bad name!': () => 1 } }), /bad queue name/);
  assert.throws(() => new Worker({ handlers: {} }), /at least one handler/);
  assert.throws(() => new Worker({ handlers: { ok: () => 1 }, concurrency: 0 }), /concurrency/);
  // The server's own checks come through with their SQLSTATE.
  await assert.rejects(push(pool, 'no spaces allowed', {}), (err: { code?: string }) => err.code === '22023');
});
