import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { push, Worker } from '../dist';
import { adminPool, uniqueQueue, sleep, waitForStatus, collectErrors, DATABASE_URL } from './helpers';

const pool = adminPool();
after(() => pool.end());

test('pooler: true polls and never opens a LISTEN connection', async (t) => {
  const q = uniqueQueue('pooler');
  const name = `pooler-${q}`.slice(0, 40);
  const worker = new Worker({ connectionString: DATABASE_URL, name, pooler: true, pollIntervalMs: 200, handlers: { [q]: (job) => job.payload } });
  const errors = collectErrors(worker);
  let listened = false;
  worker.on('listen', () => (listened = true));
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  await sleep(300);
  const ids = await Promise.all([1, 2, 3].map((n) => push(pool, q, { n })));
  for (const id of ids) await waitForStatus(pool, id, ['completed'], 5000);
  const conns = await pool.query(
    `SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1 || '%'`, [name]);
  assert.ok(conns.rows.length >= 1, 'the worker has its pooled connections');
  assert.ok(conns.rows.every((r) => !String(r.application_name).endsWith(' listen')), JSON.stringify(conns.rows));
  assert.equal(listened, false);
  assert.deepEqual(errors, []);
});
