import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { Client, Pool } from 'pg';
import { push, Worker, type WorkerOptions } from '../dist';
import { adminPool, uniqueQueue, sleep, waitFor, waitForStatus, jobOf, collectErrors, DATABASE_URL } from './helpers';
import { startBouncer, type Bouncer } from './bouncer';

// pooler: true: no LISTEN connection, no named prepared statements, and an idle
// worker claims with queue_pop(..., wait => '5 seconds') in a loop. Most tests
// go through a real PgBouncer in transaction mode (test/bouncer.ts, port 25482).

const pool = adminPool();
let bouncer: Bouncer;
before(async () => {
  bouncer = await startBouncer();
});
after(async () => {
  await pool.end();
  bouncer?.stop();
});

/** A pooler-mode worker, stopped when the test ends. */
async function startPooler(t: { after(fn: () => unknown): void }, opts: Omit<WorkerOptions, 'pooler'>): Promise<{ worker: Worker; errors: Error[] }> {
  const worker = new Worker({ connectionString: bouncer.url, ...opts, pooler: true });
  const errors = collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  return { worker, errors };
}

/** How many of the worker's backends are inside a waiting queue_pop (seen from the backend, not the pooler). */
async function waitingClaims(name: string): Promise<number> {
  const res = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE application_name = $1 AND state = 'active' AND query LIKE '%queue_pop%wait =>%'`, [name]);
  return res.rows[0]!.n;
}

/** Samples the worker's backends (through the pooler, they are the pooler's server connections): their pids, and any LISTEN. */
function watchBackends(name: string): { pids: Set<number>; listens: string[]; stop: () => Promise<void> } {
  const pids = new Set<number>();
  const listens: string[] = [];
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const res = await pool.query<{ pid: number; query: string }>(
        `SELECT pid, coalesce(query, '') AS query FROM pg_stat_activity WHERE application_name = $1`, [name]);
      for (const r of res.rows) {
        pids.add(r.pid);
        if (/^\s*(UN)?LISTEN/i.test(r.query)) listens.push(r.query);
      }
      await sleep(20);
    }
  })();
  return { pids, listens, stop: async () => { stopped = true; await done; } };
}

/**
 * pg_listening_channels() of every server connection of the pooler: n (the
 * pool size) transactions held open at once take each one it has. A LISTEN
 * run through the pooler would have stayed on one of them.
 */
async function channelsOfEveryServerConnection(n = 20): Promise<Map<number, string[]>> {
  const clients = Array.from({ length: n }, () => new Client({ connectionString: bouncer.url }));
  const out = new Map<number, string[]>();
  try {
    for (const c of clients) await c.connect();
    for (const c of clients) {
      await c.query('BEGIN');
      const r = await c.query<{ pid: number; ch: string[] }>('SELECT pg_backend_pid() AS pid, array(SELECT pg_listening_channels()) AS ch');
      out.set(r.rows[0]!.pid, r.rows[0]!.ch);
    }
  } finally {
    for (const c of clients) {
      await c.query('ROLLBACK').catch(() => undefined);
      await c.end().catch(() => undefined);
    }
  }
  return out;
}

function percentiles(xs: number[]): { p50: number; p99: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)]!, p99: s[Math.max(0, Math.floor(s.length * 0.99) - 1)]!, max: s[s.length - 1]! };
}

test('through pgbouncer: concurrency 4, 200 lone pushes, each run exactly once, woken inside queue_pop; never a LISTEN', async (t) => {
  const q = uniqueQueue('bouncer');
  const name = `pooler-${q}`.slice(0, 60);
  const starts = new Map<string, number[]>();
  const { worker, errors } = await startPooler(t, {
    name, concurrency: 4, pollIntervalMs: 60_000, // only the server-side wait can start the jobs in time
    handlers: { [q]: (job) => { starts.set(job.id, [...(starts.get(job.id) ?? []), performance.now()]); return { attempt: job.attempt }; } },
  });
  let listened = false;
  worker.on('listen', () => (listened = true));
  const watch = watchBackends(name);
  const committed = new Map<string, number>();
  try {
    await waitFor(async () => (await waitingClaims(name)) === 1, 'the worker to wait in queue_pop');
    const producer = new Pool({ connectionString: bouncer.url, max: 1 }); // the producer goes through the pooler too
    try {
      for (let i = 0; i < 200; i++) {
        const id = await push(producer, q, { i }); // one statement: committed when it returns
        committed.set(id, performance.now());
        await sleep(10);
      }
    } finally {
      await producer.end();
    }
    await waitFor(() => starts.size === 200, '200 jobs to start', 15_000);
    await waitFor(async () => {
      const r = await pool.query(`SELECT count(*)::int AS n FROM queue.all_jobs WHERE queue = $1 AND status = 'completed'`, [q]);
      return r.rows[0].n === 200;
    }, '200 jobs to complete', 15_000);
  } finally {
    await watch.stop();
  }
  // Exactly once: one handler start per job, one attempt each, its result stored.
  assert.deepEqual([...starts.keys()].sort(), [...committed.keys()].sort());
  assert.ok([...starts.values()].every((v) => v.length === 1), 'a job started twice');
  const rows = await pool.query(
    `SELECT status::text, attempts, result, count(*)::int AS n FROM queue.all_jobs WHERE queue = $1 GROUP BY 1, 2, 3`, [q]);
  assert.deepEqual(rows.rows, [{ status: 'completed', attempts: 1, result: { attempt: 1 }, n: 200 }]);

  const lat = [...committed].map(([id, at]) => starts.get(id)![0]! - at);
  const p = percentiles(lat);
  const line = `push commit → handler start through pgbouncer (pooler: true, concurrency 4, 200 jobs): p50 ${p.p50.toFixed(2)} ms, p99 ${p.p99.toFixed(2)} ms, max ${p.max.toFixed(2)} ms`;
  console.log(line);
  t.diagnostic(line);
  assert.ok(p.p99 < 50, line);

  // No LISTEN, ever: none seen on its backends, none left on any server connection of the pooler.
  assert.equal(listened, false);
  assert.deepEqual(watch.listens, []);
  assert.ok(watch.pids.size > 0, 'the worker\'s backends were seen');
  await worker.stop({ graceMs: 1000 });
  const channels = await channelsOfEveryServerConnection();
  const alive = new Set((await pool.query<{ pid: number }>('SELECT pid FROM pg_stat_activity')).rows.map((r) => r.pid));
  // Every server connection the worker used is inspected (or is gone: then it listens on nothing).
  for (const pid of watch.pids) assert.ok(channels.has(pid) || !alive.has(pid), `server connection ${pid} not inspected`);
  for (const [pid, ch] of channels) assert.deepEqual(ch, [], `server connection ${pid} listens on ${ch}`);
  assert.deepEqual(errors, []);
});

test('through pgbouncer: stop() while a claim waits in the server returns at once, and that claim took nothing', async (t) => {
  const q = uniqueQueue('bstop');
  const name = `pooler-${q}`.slice(0, 60);
  const { worker, errors } = await startPooler(t, { name, poolerWaitMs: 5000, graceMs: 3000, handlers: { [q]: () => null } });
  await waitFor(async () => (await waitingClaims(name)) === 1, 'the worker to wait in queue_pop');
  await sleep(300); // well inside the 5 s wait
  const t0 = performance.now();
  await worker.stop();
  const took = performance.now() - t0;
  t.diagnostic(`stop() took ${took.toFixed(0)} ms with a 5 s wait in flight (grace 3 s)`);
  assert.ok(took < 1500, `stop took ${took.toFixed(0)} ms: it sat out the server-side wait`);
  assert.equal(await waitingClaims(name), 0);
  const later = await push(pool, q, {});
  await sleep(300);
  const j = await jobOf(pool, later);
  assert.deepEqual([j!.status, j!.attempts], ['pending', 0]);
  assert.deepEqual(errors, [], 'the cancelled wait is not an error');
});

test('through pgbouncer: past the grace a running job is given back (attempt not burned) while the free slot waits; stop stays within the grace', async (t) => {
  const q = uniqueQueue('bgrace');
  const name = `pooler-${q}`.slice(0, 60);
  const { worker } = await startPooler(t, {
    name, concurrency: 2, graceMs: 1000,
    handlers: { [q]: (job) => new Promise((resolve) => job.signal.addEventListener('abort', () => resolve(null))) },
  });
  const id = await push(pool, q, {}, { maxAttempts: 3 });
  await waitForStatus(pool, id, ['processing']);
  await waitFor(async () => (await waitingClaims(name)) === 1, 'the free slot\'s claim to wait in queue_pop');
  const t0 = performance.now();
  await worker.stop();
  const took = performance.now() - t0;
  assert.ok(took > 900 && took < 2500, `stop took ${took.toFixed(0)} ms with a grace of 1 s`);
  const j = await jobOf(pool, id);
  assert.deepEqual([j!.status, j!.attempts, j!.max_attempts], ['pending', 1, 4]);
  const seen: string[] = [];
  await startPooler(t, { handlers: { [q]: (job) => { seen.push(`${job.attempt}/${job.maxAttempts}`); } } });
  await waitForStatus(pool, id, ['completed'], 5000);
  assert.deepEqual(seen, ['2/4']);
});

test('through pgbouncer: a worker with no free capacity does not wait in the server', async (t) => {
  const q = uniqueQueue('bfull');
  const name = `pooler-${q}`.slice(0, 60);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const { worker } = await startPooler(t, { name, concurrency: 1, pollIntervalMs: 200, handlers: { [q]: () => gate } });
  await waitFor(async () => (await waitingClaims(name)) === 1, 'the idle worker to wait in queue_pop');
  const first = await push(pool, q, {});
  await waitFor(() => worker.runningCount === 1, 'the job to run');
  const second = await push(pool, q, {});
  const samples: number[] = [];
  for (let i = 0; i < 20; i++) {
    samples.push(await waitingClaims(name));
    await sleep(50);
  }
  release();
  assert.deepEqual(samples, Array(20).fill(0));
  await waitForStatus(pool, first, ['completed'], 5000);
  await waitForStatus(pool, second, ['completed'], 5000);
});

test('through pgbouncer: several queues, each looked at within pollIntervalMs', async (t) => {
  const qs = [uniqueQueue('bmulti'), uniqueQueue('bmulti'), uniqueQueue('bmulti')];
  const done: string[] = [];
  await startPooler(t, { pollIntervalMs: 300, handlers: Object.fromEntries(qs.map((q) => [q, (job: { queue: string }) => { done.push(job.queue); }])) });
  await sleep(500);
  const t0 = performance.now();
  const ids = await Promise.all(qs.map((q) => push(pool, q, {})));
  for (const id of ids) await waitForStatus(pool, id, ['completed'], 5000);
  assert.ok(performance.now() - t0 < 3000);
  assert.deepEqual([...done].sort(), [...qs].sort());
});

test('pooler: true on a direct connection: woken inside queue_pop (no polling), no LISTEN connection', async (t) => {
  const q = uniqueQueue('pooler');
  const name = `pooler-${q}`.slice(0, 40);
  const worker = new Worker({ connectionString: DATABASE_URL, name, pooler: true, pollIntervalMs: 60_000, handlers: { [q]: (job) => job.payload } });
  const errors = collectErrors(worker);
  let listened = false;
  worker.on('listen', () => (listened = true));
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  await waitFor(async () => (await waitingClaims(name)) === 1, 'the worker to wait in queue_pop');
  const ids = await Promise.all([1, 2, 3].map((n) => push(pool, q, { n })));
  for (const id of ids) await waitForStatus(pool, id, ['completed'], 3000);
  const conns = await pool.query(
    `SELECT application_name, query FROM pg_stat_activity WHERE application_name LIKE $1 || '%'`, [name]);
  assert.ok(conns.rows.length >= 1, 'the worker has its connections');
  assert.ok(conns.rows.every((r) => !String(r.application_name).endsWith(' listen') && !/^\s*LISTEN/i.test(r.query)), JSON.stringify(conns.rows));
  assert.equal(listened, false);
  assert.deepEqual(errors, []);
});
