#!/usr/bin/env node
// The Node client's driver of bench/clients/run.sh (public API of @queue/client only,
// as built in clients/node/dist).
//
//   node bench/clients/node/bench.js latency DSN QUEUE JOBS INTERVAL_MS
//   node bench/clients/node/bench.js pickup  DSN QUEUE JOBS INTERVAL_US CONCURRENCY WORK_MS
//   node bench/clients/node/bench.js drain   DSN QUEUE JOBS CONCURRENCY
//   node bench/clients/node/bench.js drain-shared DSN QUEUE JOBS CONCURRENCY
//
// latency: an idle Worker (concurrency 1, LISTEN mode) in this process; a producer
// pg.Client of this process pushes JOBS jobs one at a time, INTERVAL_MS apart, with
// push(). Latency = performance.now() at the handler's start minus the push's return.
// Prints one JSON line with every sample (ms).
//
// pickup: the same at load: a Worker at CONCURRENCY whose handler takes WORK_MS, pushes
// INTERVAL_US apart (600 jobs/s is 1667). The JSON line also carries the rate reached.
// With BENCH_POOLER=1 the worker runs in pooler mode (server-side waits, no LISTEN), for
// a DSN that points at PgBouncer in transaction mode; BENCH_PRODUCER_URL, if set, is where
// the producer pushes.
//
// drain: JOBS jobs prefilled with one pushBatch, then a Worker with a no-op handler at
// CONCURRENCY; the time from start() until 'job:complete' (emitted after the ack) has
// fired JOBS times, checked against queue_stats(queue). Prints one JSON line with jobs/s
// and drain_cpu_us_per_job: this process's CPU (user + system, process.cpuUsage) over the
// same span, per job: the worker's own, without the process's start and the prefill
// (which run.sh's client_cpu_us_per_job, the whole process's, includes).
//
// drain-shared: one of several processes draining the same queue, which run.sh filled
// with JOBS jobs: a Worker at CONCURRENCY runs until queue_stats(queue) counts JOBS
// completed. Prints the wall clock (ms since the epoch, comparable between processes)
// at start() and at its last finished job, and how many it finished; run.sh takes the
// rate from the earliest start to the latest finish.
'use strict';
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const { setTimeout: sleep } = require('node:timers/promises');
const { Client } = require(require.resolve('pg', { paths: [path.join(__dirname, '../../../clients/node')] }));
const { Worker, push, pushBatch } = require('../../../clients/node/dist');

const payload = (n) => ({ n, s: 'x'.repeat(64) });

function untilCount(worker, jobs, timeoutMs) {
  let count = 0;
  let resolve;
  let reject;
  const done = new Promise((res, rej) => { resolve = res; reject = rej; });
  const timer = setTimeout(() => reject(new Error(`only ${count} of ${jobs} jobs finished in time`)), timeoutMs);
  worker.on('job:complete', ({ acked }) => {
    if (acked && ++count === jobs) { clearTimeout(timer); resolve(); }
  });
  worker.on('error', (err) => console.error('worker error:', err.message));
  return done;
}

async function latency(dsn, queue, jobs, intervalMs, concurrency = 1, workMs = 0) {
  const started = new Map();
  const pooler = process.env.BENCH_POOLER === '1';
  const worker = new Worker({
    connectionString: dsn,
    concurrency,
    pooler,
    handlers: {
      [queue]: async (job) => {
        started.set(job.id, performance.now());
        if (workMs > 0) await sleep(workMs);
      },
    },
  });
  const listening = new Promise((res) => worker.once('listen', res));
  const done = untilCount(worker, jobs, 60_000);
  await worker.start();
  if (pooler) {
    await sleep(1000); // no LISTEN to wait for: let the first claim reach its wait
  } else {
    await listening;
    await sleep(300);
  }
  const producer = new Client({ connectionString: process.env.BENCH_PRODUCER_URL || dsn });
  await producer.connect();
  const pushed = new Map();
  const t0 = performance.now();
  let nextAt = t0;
  for (let n = 0; n < jobs; n++) {
    nextAt += intervalMs;
    const wait = nextAt - performance.now();
    if (wait > 0) await sleep(wait);
    const id = await push(producer, queue, payload(n));
    pushed.set(id, performance.now());
  }
  const pushRate = jobs / ((performance.now() - t0) / 1000);
  await done;
  await worker.stop();
  await producer.end();
  const ms = [...pushed].map(([id, t]) => started.get(id) - t);
  if (concurrency === 1 && workMs === 0) {
    console.log(JSON.stringify({ client: 'node', kind: 'latency', jobs, ms }));
  } else {
    console.log(JSON.stringify({ client: 'node', kind: 'pickup', jobs, concurrency, work_ms: workMs, push_rate: pushRate, pooler, ms }));
  }
}

async function drain(dsn, queue, jobs, concurrency) {
  const producer = new Client({ connectionString: dsn });
  await producer.connect();
  const ids = await pushBatch(producer, queue, Array.from({ length: jobs }, (_, n) => payload(n)));
  if (ids.length !== jobs) throw new Error('pushBatch returned the wrong number of ids');
  const worker = new Worker({ connectionString: dsn, concurrency, handlers: { [queue]: async () => undefined } });
  const done = untilCount(worker, jobs, 600_000);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await worker.start();
  await done;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await worker.stop();
  const { rows } = await producer.query('SELECT queue_stats($1) AS s', [queue]);
  await producer.end();
  if (Number(rows[0].s.completed) !== jobs) {
    throw new Error(`queue_stats says ${rows[0].s.completed} completed, expected ${jobs}`);
  }
  console.log(JSON.stringify({
    client: 'node', kind: 'drain', concurrency, jobs, seconds, rate: jobs / seconds,
    drain_cpu_us_per_job: (cpu.user + cpu.system) / jobs,
  }));
}

async function drainShared(dsn, queue, jobs, concurrency) {
  const conn = new Client({ connectionString: dsn });
  await conn.connect();
  const worker = new Worker({ connectionString: dsn, concurrency, handlers: { [queue]: async () => undefined } });
  let mine = 0;
  let last = 0;
  worker.on('job:complete', ({ acked }) => {
    if (acked) { mine++; last = performance.timeOrigin + performance.now(); }
  });
  worker.on('error', (err) => console.error('worker error:', err.message));
  const start = performance.timeOrigin + performance.now();
  await worker.start();
  const deadline = Date.now() + 600_000;
  for (;;) {
    const { rows } = await conn.query('SELECT queue_stats($1) AS s', [queue]);
    if (Number(rows[0].s.completed) >= jobs) break;
    if (Date.now() > deadline) throw new Error('drain-shared: not drained within 600 s');
    await sleep(10);
  }
  await worker.stop();
  await conn.end();
  console.log(JSON.stringify({ client: 'node', kind: 'drain_part', concurrency, jobs: mine, start_ms: start, end_ms: last }));
}

async function main() {
  const args = process.argv.slice(2);
  const [mode, dsn, queue, jobs, n] = args;
  if (mode === 'latency' && args.length === 5) {
    await latency(dsn, queue, Number(jobs), Number(n));
  } else if (mode === 'pickup' && args.length === 7) {
    await latency(dsn, queue, Number(jobs), Number(n) / 1000, Number(args[5]), Number(args[6]));
  } else if (mode === 'drain' && args.length === 5) {
    await drain(dsn, queue, Number(jobs), Number(n));
  } else if (mode === 'drain-shared' && args.length === 5) {
    await drainShared(dsn, queue, Number(jobs), Number(n));
  } else {
    throw new Error('usage: bench.js latency DSN QUEUE JOBS INTERVAL_MS | pickup DSN QUEUE JOBS INTERVAL_US CONCURRENCY WORK_MS | drain[-shared] DSN QUEUE JOBS CONCURRENCY');
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
