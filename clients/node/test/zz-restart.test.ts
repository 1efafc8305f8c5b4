import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { promisify } from 'node:util';
import { push } from '../dist';
import { adminPool, uniqueQueue, waitForStatus, nextEvent, deferred, listeningWorker } from './helpers';

// Last of the files (zz-): it restarts the cluster the other tests share.
const pool = adminPool();
after(() => pool.end());

test('a server restart: the worker reconnects with backoff and goes on; the job running across it completes once', async (t) => {
  const dir = process.env.QUEUE_TEST_CLUSTER_DIR;
  const script = process.env.QUEUE_CLUSTER_SCRIPT;
  if (!dir || !script) {
    t.skip('QUEUE_TEST_CLUSTER_DIR / QUEUE_CLUSTER_SCRIPT not set (run-tests.sh sets them)');
    return;
  }
  // A build installed since the cluster started would be loaded by the restart (another engineer may be
  // running `make install`): then this test would test that build's upgrade, not this client.
  const lib = (await pool.query(`SELECT setting || '/queue.so' AS f FROM pg_config() WHERE name = 'PKGLIBDIR'`)).rows[0]?.f as string;
  const since = (await pool.query('SELECT pg_postmaster_start_time() AS t')).rows[0].t as Date;
  if (statSync(lib).mtimeMs > since.getTime()) {
    t.skip(`${lib} was reinstalled after the cluster started; a restart would load a different build`);
    return;
  }
  const q = uniqueQueue('restart');
  const gate = deferred();
  let runs = 0;
  const { worker } = await listeningWorker(t, q, `restart-${q}`.slice(0, 40), async () => { runs++; await gate.promise; return 'across a restart'; });
  const started = nextEvent(worker, 'job:start');
  const id = await push(pool, q, {});
  await started;
  const relistened = nextEvent(worker, 'listen', (e) => e.reconnect, 60_000);
  await promisify(execFile)(script, ['restart', dir]);
  await relistened;
  gate.resolve();
  const j = await waitForStatus(pool, id, ['completed'], 20_000);
  assert.equal(j.attempts, 1);
  assert.equal(runs, 1);
  const next = await push(pool, q, {});
  await waitForStatus(pool, next, ['completed'], 5000);
  assert.equal(runs, 2);
  assert.equal(worker.state, 'running');
});
