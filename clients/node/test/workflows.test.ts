import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  push, pushBatch, dependencies, openBatch, closeBatch, cancelBatch, getBatch, Worker, type Job,
} from '../dist';
import { adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, DATABASE_URL } from './helpers';

const pool = adminPool();
after(() => pool.end());

/** Claims one job of q directly (queue_pop), or null. */
async function claim(q: string): Promise<{ id: string; attempt: number } | null> {
  const res = await pool.query<{ id: string; attempt: number }>(
    `SELECT id::text AS id, attempt FROM queue_pop($1::text, 'workflows-test'::text, 1)`, [q]);
  return res.rows[0] ?? null;
}

async function ack(id: string, attempt: number, result: unknown): Promise<void> {
  await pool.query('SELECT queue_ack($1::bigint, $2::jsonb, $3::int)', [id, JSON.stringify(result), attempt]);
}

/** A worker on these handlers that polls fast; stopped after the test. */
async function worker(t: { after(fn: () => unknown): void }, handlers: Record<string, (job: Job) => unknown>): Promise<Worker> {
  const w = new Worker({ connectionString: DATABASE_URL, handlers, pollIntervalMs: 100, backoff: { initialMs: 50, maxMs: 500 } });
  w.on('error', () => undefined);
  await w.start();
  t.after(() => w.stop({ graceMs: 1000 }));
  return w;
}

test('dependsOn: blocked until the dependency is acked, then claimable', async () => {
  const q = uniqueQueue('deps');
  const a = await push(pool, q, { step: 'a' });
  const b = await push(pool, q, { step: 'b' }, { dependsOn: [a] });
  assert.equal((await jobOf(pool, b))!.status, 'blocked');
  assert.deepEqual((await jobOf(pool, b))!.depends_on, [Number(a)]);

  const first = await claim(q);
  assert.equal(first?.id, a, 'only the dependency is claimable');
  assert.equal(await claim(q), null, 'the dependent must not be claimable while its dependency runs');
  assert.equal((await jobOf(pool, b))!.status, 'blocked');

  await ack(a, first!.attempt, { rows: 3 });
  assert.equal((await jobOf(pool, b))!.status, 'pending');
  const second = await claim(q);
  assert.equal(second?.id, b);

  // The helper shows the edge, resolved, with the dependency's result.
  const deps = await dependencies(pool, b);
  assert.equal(deps.length, 1);
  assert.equal(deps[0]!.id, a);
  assert.equal(deps[0]!.queue, q);
  assert.equal(deps[0]!.status, 'completed');
  assert.deepEqual(deps[0]!.result, { rows: 3 });
  assert.ok(deps[0]!.finishedAt instanceof Date);
  assert.equal(deps[0]!.resolved, true);
  assert.equal(deps[0]!.runAnyway, false);
  assert.deepEqual(await dependencies(pool, a), [], 'a job without dependencies has none');

  // Ids as numbers and bigints work too; a dependency already completed counts as done.
  const c = await push(pool, q, {}, { dependsOn: [Number(a), BigInt(a)] });
  assert.equal((await jobOf(pool, c))!.status, 'pending');
});

test('pushBatch with dependsOn: every job waits for the same dependencies', async () => {
  const q = uniqueQueue('fanout');
  const client = await pool.connect();
  let root: string;
  let kids: string[];
  try {
    await client.query('BEGIN');
    root = await push(client, q, { root: true });
    kids = await pushBatch(client, q, [{ n: 1 }, { n: 2 }], { dependsOn: [root], tags: ['fan'] });
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  for (const id of kids) {
    const j = await jobOf(pool, id);
    assert.equal(j!.status, 'blocked');
    assert.deepEqual(j!.tags, ['fan']);
  }
  const r = await claim(q);
  assert.equal(r?.id, root);
  await ack(root, r!.attempt, null);
  for (const id of kids) assert.equal((await jobOf(pool, id))!.status, 'pending');
});

test('a diamond in a real Worker: each handler reads its dependencies\' results', async (t) => {
  const q = uniqueQueue('diamond');
  const seen: Record<string, unknown> = {};
  const order: string[] = [];
  await worker(t, {
    [q]: async (job: Job<{ step: string }>) => {
      order.push(job.payload.step);
      const inputs = await job.dependencies<{ value: number }>(); // the worker's own pool
      seen[job.payload.step] = inputs.map((d) => ({ status: d.status, result: d.result }));
      const sum = inputs.reduce((n, d) => n + d.result!.value, 0);
      return { value: job.payload.step === 'a' ? 1 : sum + 1 };
    },
  });
  const client = await pool.connect();
  let d: string;
  try {
    await client.query('BEGIN');
    const a = await push(client, q, { step: 'a' });
    const b = await push(client, q, { step: 'b' }, { dependsOn: [a] });
    const c = await push(client, q, { step: 'c' }, { dependsOn: [a] });
    d = await push(client, q, { step: 'd' }, { dependsOn: [b, c] });
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  const done = await waitForStatus(pool, d, ['completed', 'failed', 'cancelled']);
  assert.equal(done.status, 'completed');
  assert.deepEqual(done.result, { value: 5 }, 'd = (b = a + 1) + (c = a + 1) + 1');
  assert.equal(order[0], 'a');
  assert.equal(order[3], 'd');
  assert.deepEqual(seen.a, []);
  assert.deepEqual(seen.b, [{ status: 'completed', result: { value: 1 } }]);
  assert.deepEqual(seen.d, [{ status: 'completed', result: { value: 2 } }, { status: 'completed', result: { value: 2 } }]);
});

test('a failed dependency cancels its dependent; with runAnyway it runs', async (t) => {
  const q = uniqueQueue('anyway');
  const ran: string[] = [];
  await worker(t, {
    [q]: async (job: Job<{ step: string }>) => {
      ran.push(job.payload.step);
      if (job.payload.step === 'bad') throw new Error('boom');
      return { deps: (await dependencies(pool, job.id)).map((d) => [d.status, d.resolved, d.runAnyway]) };
    },
  });
  const bad = await push(pool, q, { step: 'bad' }, { maxAttempts: 1 });
  const strict = await push(pool, q, { step: 'strict' }, { dependsOn: [bad] });
  const anyway = await push(pool, q, { step: 'anyway' }, { dependsOn: [bad], runAnyway: true });
  assert.equal((await waitForStatus(pool, bad, ['failed'])).status, 'failed');
  const a = await waitForStatus(pool, anyway, ['completed', 'cancelled']);
  assert.equal(a.status, 'completed');
  assert.deepEqual(a.result, { deps: [['failed', true, true]] });
  const s = await waitForStatus(pool, strict, ['completed', 'cancelled']);
  assert.equal(s.status, 'cancelled');
  assert.match(s.last_error, new RegExp(`dependency ${bad} ended failed`));
  await sleep(200);
  assert.ok(!ran.includes('strict'), 'the cancelled dependent must never run');

  // runAnyway: false is the default, sent explicitly as a boolean.
  const off = await push(pool, q, { step: 'off' }, { dependsOn: [bad], runAnyway: false });
  assert.equal((await jobOf(pool, off))!.status, 'cancelled');
});

test('dependsOn misuse: the client checks types, the server the ids', async () => {
  const q = uniqueQueue('depsbad');
  await assert.rejects(push(pool, q, {}, { dependsOn: '1' as never }), /dependsOn must be an array/);
  await assert.rejects(push(pool, q, {}, { dependsOn: [1.5] }), /dependsOn\[0\] must be an integer id/);
  await assert.rejects(push(pool, q, {}, { dependsOn: [null as never] }), /dependsOn\[0\] must be an id/);
  await assert.rejects(push(pool, q, {}, { runAnyway: 'yes' as never }), /runAnyway must be a boolean/);
  // An id that is neither live nor in history: 22023 from the server, nothing pushed.
  await assert.rejects(push(pool, q, {}, { dependsOn: ['999999999999'] }),
    (err: { code?: string; message?: string }) => err.code === '22023' && /unknown job: 999999999999/.test(err.message ?? ''));
  await assert.rejects(push(pool, q, {}, { dependsOn: ['x1'] }), (err: { code?: string }) => err.code === '22P02');
  const size = await pool.query('SELECT count(*)::int AS n FROM queue_jobs($1)', [q]);
  assert.equal(size.rows[0].n, 0);
});

test('tags are stored sorted and deduplicated; a bad tag is the server\'s 22023', async () => {
  const q = uniqueQueue('tags');
  const odd = 'with "quotes", {braces} and \\ backslash';
  const id = await push(pool, q, {}, { tags: ['zeta', 'alpha', 'zeta', odd] });
  const listed = await pool.query<{ id: string; tags: string[] }>(
    `SELECT id::text AS id, tags FROM queue_jobs($1, tag => 'alpha')`, [q]);
  assert.deepEqual(listed.rows, [{ id, tags: [odd, 'alpha', 'zeta'].sort() }]);
  assert.deepEqual((await pool.query('SELECT tags FROM queue.jobs WHERE id = $1', [id])).rows[0].tags, [odd, 'alpha', 'zeta'].sort());
  const none = await push(pool, q, {}, { tags: [] });
  assert.equal((await jobOf(pool, none))!.tags, null, 'an empty list stores none');

  const isBadTag = (err: { code?: string; message?: string }) => err.code === '22023' && /tag/.test(err.message ?? '');
  await assert.rejects(push(pool, q, {}, { tags: ['x'.repeat(65)] }), isBadTag);
  await assert.rejects(push(pool, q, {}, { tags: [''] }), isBadTag);
  await assert.rejects(push(pool, q, {}, { tags: Array.from({ length: 21 }, (_, i) => `t${i}`) }), isBadTag);
  await assert.rejects(pushBatch(pool, q, [{}], { tags: ['x'.repeat(65)] }), isBadTag);
  await assert.rejects(push(pool, q, {}, { tags: 'alpha' as never }), /tags must be an array/);
  await assert.rejects(push(pool, q, {}, { tags: [1 as never] }), /tags\[0\] must be a string/);
  const count = await pool.query('SELECT count(*)::int AS n FROM queue_jobs($1)', [q]);
  assert.equal(count.rows[0].n, 2, 'a refused push adds nothing');
});

test('a batch: opened, filled, closed, drained by a Worker; onComplete pushed once with the summary', async (t) => {
  const q = uniqueQueue('batch');
  const reports = uniqueQueue('reports');
  const callbacks: Job[] = [];
  const batch = await openBatch(pool, { onComplete: { queue: reports, payload: { report: 7 }, priority: 'high' } });
  assert.match(batch, /^\d+$/);

  const open = await getBatch(pool, batch);
  assert.equal(open!.state, 'open');
  assert.equal(open!.total, 0);
  assert.deepEqual(open!.onComplete, { queue: reports, payload: { report: 7 }, priority: -10 });
  assert.equal(open!.onFailure, null);

  // Jobs join it from separate transactions, one of them rolled back.
  const one = await push(pool, q, { n: 1 }, { batch });
  const more = await pushBatch(pool, q, [{ n: 2 }, { n: 3 }], { batch: BigInt(batch) });
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await push(client, q, { n: 4 }, { batch });
    await client.query('ROLLBACK');
  } finally {
    client.release();
  }
  assert.equal((await jobOf(pool, one))!.batch_id, Number(batch));
  assert.equal((await getBatch(pool, batch))!.total, 3);

  const closed = await closeBatch(pool, batch);
  assert.equal(closed.state, 'closed');
  assert.equal(closed.total, 3);
  assert.equal(closed.pending, 3);
  assert.equal(closed.progress, 0);
  assert.ok(closed.closedAt instanceof Date);
  assert.equal(closed.completeJob, null);
  // Closed: no more jobs join it, and it cannot be closed twice.
  await assert.rejects(push(pool, q, { n: 5 }, { batch }), (err: { code?: string; message?: string }) =>
    err.code === '22023' && /batch \d+ is closed/.test(err.message ?? ''));
  await assert.rejects(closeBatch(pool, batch), (err: { code?: string }) => err.code === '22023');

  await worker(t, {
    [q]: (job: Job<{ n: number }>) => ({ doubled: job.payload.n * 2 }),
    [reports]: (job: Job) => { callbacks.push(job); },
  });
  await waitFor(() => callbacks.length > 0, 'the onComplete callback to run');
  const done = await waitFor(async () => {
    const b = await getBatch(pool, batch);
    return b?.state === 'done' ? b : null;
  }, 'the batch to be done');
  assert.equal(done.total, 3);
  assert.equal(done.completed, 3);
  assert.equal(done.pending, 0);
  assert.equal(done.progress, 1);
  assert.ok(done.finishedAt instanceof Date);
  assert.equal(done.failureJob, null);
  assert.equal(callbacks[0]!.id, done.completeJob);
  assert.equal(callbacks[0]!.priority, -10);
  assert.deepEqual(callbacks[0]!.payload, {
    report: 7, batch: { id: Number(batch), total: 3, completed: 3, failed: 0, cancelled: 0 },
  });
  for (const id of [one, ...more]) assert.equal((await jobOf(pool, id))!.status, 'completed');

  // Exactly once: nothing else ever reaches the callback queue.
  await sleep(500);
  assert.equal(callbacks.length, 1);
  const inQueue = await pool.query('SELECT count(*)::int AS n FROM queue_jobs($1)', [reports]);
  assert.equal(inQueue.rows[0].n, 1);
  assert.equal(await cancelBatch(pool, batch), false, 'a done batch cannot be cancelled');
});

test('a batch with a failure: onFailure too; cancelBatch; misuse', async (t) => {
  const q = uniqueQueue('batchfail');
  const cbq = uniqueQueue('callbacks');
  const got: Job[] = [];
  const batch = await openBatch(pool, {
    onComplete: { queue: cbq, payload: { kind: 'complete' } },
    onFailure: { queue: cbq, payload: { kind: 'failure' } },
  });
  await pushBatch(pool, q, [{ ok: true }, { ok: false }], { batch, maxAttempts: 1 });
  await closeBatch(pool, batch);
  await worker(t, {
    [q]: (job: Job<{ ok: boolean }>) => { if (!job.payload.ok) throw new Error('no'); return 1; },
    [cbq]: (job: Job) => { got.push(job); },
  });
  await waitFor(() => got.length >= 2, 'both callbacks');
  await sleep(300);
  assert.deepEqual(got.map((j) => j.payload.kind).sort(), ['complete', 'failure']);
  for (const j of got) assert.deepEqual(j.payload.batch, { id: Number(batch), total: 2, completed: 1, failed: 1, cancelled: 0 });

  // Cancelled: the waiting jobs are cancelled, no callback.
  const cq = uniqueQueue('cancelled');
  const b2 = await openBatch(pool, { onComplete: { queue: cbq } });
  const [j1] = await pushBatch(pool, cq, [{}, {}], { batch: b2 });
  assert.equal(await cancelBatch(pool, b2), true);
  assert.equal(await cancelBatch(pool, b2), false);
  assert.equal((await jobOf(pool, j1!))!.status, 'cancelled');
  const s2 = await getBatch(pool, b2);
  assert.equal(s2!.state, 'cancelled');
  assert.equal(s2!.cancelled, 2);
  assert.equal(s2!.completeJob, null);

  assert.equal(await getBatch(pool, '999999999'), null);
  await assert.rejects(push(pool, q, {}, { batch: '999999999' }), (err: { code?: string }) => err.code === '22023');
  await assert.rejects(openBatch(pool, { onComplete: { queue: 'bad name!' } }), (err: { code?: string }) => err.code === '22023');
  await assert.rejects(openBatch(pool, { onComplete: { queue: cbq, extra: 1 } as never }), (err: { code?: string }) => err.code === '22023');
  await assert.rejects(openBatch(pool, { onComplete: { queue: cbq, payload: [1] } as never }), (err: { code?: string }) => err.code === '22023');
  await assert.rejects(openBatch(pool, { oncomplete: { queue: cbq } } as never), /unknown openBatch option "oncomplete"/);
  await assert.rejects(openBatch(pool, { onComplete: 'reports' as never }), /onComplete must be an object/);
  await assert.rejects(push(pool, q, {}, { batch: 1.5 }), /batch must be an integer id/);
  await assert.rejects(closeBatch(pool, {} as never), /batchId must be an id/);
});

test('workflow helpers run inside the caller\'s transaction', async () => {
  const q = uniqueQueue('txwf');
  const client = await pool.connect();
  let batch: string;
  let id: string;
  try {
    await client.query('BEGIN');
    batch = await openBatch(client, {});
    id = await push(client, q, {}, { batch });
    const inside = await closeBatch(client, batch);
    assert.equal(inside.total, 1);
    await client.query('ROLLBACK');
  } finally {
    client.release();
  }
  assert.equal(await getBatch(pool, batch), null, 'a rolled-back open leaves no batch');
  assert.equal(await jobOf(pool, id), null);
});
