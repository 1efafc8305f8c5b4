import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { push } from '../dist';
import { adminPool, uniqueQueue, waitForStatus, nextEvent, deferred, listeningWorker } from './helpers';

const pool = adminPool();
after(() => pool.end());

test("pg_terminate_backend on the worker's connections: it reconnects, acks the running job, and wakes on NOTIFY again", async (t) => {
  const q = uniqueQueue('kill');
  const name = `kill-${q}`.slice(0, 40);
  const gate = deferred();
  const { worker, errors } = await listeningWorker(t, q, name, async () => { await gate.promise; return 'survived'; });
  const started = nextEvent(worker, 'job:start');
  const first = await push(pool, q, {});
  await started;

  const killed = await pool.query(
    `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name LIKE $1 || '%'`, [name]);
  t.diagnostic(`terminated ${killed.rows[0].n} backends of the worker`);
  assert.ok(killed.rows[0].n >= 2, 'at least its LISTEN connection and one pooled connection');
  const relistened = nextEvent(worker, 'listen', (e) => e.reconnect, 15_000);
  await relistened;
  gate.resolve(); // the handler finishes after the connections died: the ack goes through a new one
  const j1 = await waitForStatus(pool, first, ['completed'], 10_000);
  assert.equal(j1.attempts, 1);
  assert.equal(j1.result, 'survived');
  assert.ok(errors.length >= 1, 'the lost connection was reported as an error event');

  const t0 = Date.now();
  const second = await push(pool, q, {});
  await waitForStatus(pool, second, ['completed'], 3000); // far sooner than the 60 s poll: LISTEN is back
  t.diagnostic(`after the reconnect a pushed job completed in ${Date.now() - t0} ms`);
  assert.equal(worker.state, 'running');
});
