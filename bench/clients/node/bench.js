#!/usr/bin/env node
// The Node client's driver of bench/clients/run.sh (public API of @queue/client only,
// as built in clients/node/dist).
//
//   node bench/clients/node/bench.js latency DSN QUEUE JOBS INTERVAL_MS
//   node bench/clients/node/bench.js drain   DSN QUEUE JOBS CONCURRENCY
//
// latency: an idle Worker (concurrency 1, LISTEN mode) in this process; a producer
// pg.Client of this process pushes JOBS jobs one at a time, INTERVAL_MS apart, with
// push(). Latency = performance.now() at the handler's start minus the push's return.
// Prints one JSON line with every sample (ms).
//
// drain: JOBS jobs prefilled with one pushBatch, then a Worker with a no-op handler at
// CONCURRENCY; the time from start() until 'job:complete' (emitted after the ack) has
// fired JOBS times, checked against queue_stats(queue). Prints one JSON line with jobs/s.
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

async function latency(dsn, queue, jobs, intervalMs) {
  const started = new Map();
  const worker = new Worker({
    connectionString: dsn,
    concurrency: 1,
    handlers: { [queue]: async (job) => { started.set(job.id, performance.now()); } },
  });
  const listening = new Promise((res) => worker.once('listen', res));
  const done = untilCount(worker, jobs, 60_000);
  await worker.start();
  await listening;
  await sleep(300);
  const producer = new Client({ connectionString: dsn });
  await producer.connect();
  const pushed = new Map();
  let nextAt = performance.now();
  for (let n = 0; n < jobs; n++) {
    nextAt += intervalMs;
    const wait = nextAt - performance.now();
    if (wait > 0) await sleep(wait);
    const id = await push(producer, queue, payload(n));
    pushed.set(id, performance.now());
  }
  await done;
  await worker.stop();
  await producer.end();
  const ms = [...pushed].map(([id, t]) => started.get(id) - t);
  console.log(JSON.stringify({ client: 'node', kind: 'latency', jobs, ms }));
}

async function drain(dsn, queue, jobs, concurrency) {
  const producer = new Client({ connectionString: dsn });
  await producer.connect();
  const ids = await pushBatch(producer, queue, Array.from({ length: jobs }, (_, n) => payload(n)));
  if (ids.length !== jobs) throw new Error('pushBatch returned the wrong number of ids');
  const worker = new Worker({ connectionString: dsn, concurrency, handlers: { [queue]: async () => undefined } });
  const done = untilCount(worker, jobs, 600_000);
  const t0 = performance.now();
  await worker.start();
  await done;
  const seconds = (performance.now() - t0) / 1000;
  await worker.stop();
  const { rows } = await producer.query('SELECT queue_stats($1) AS s', [queue]);
  await producer.end();
  if (Number(rows[0].s.completed) !== jobs) {
    throw new Error(`queue_stats says ${rows[0].s.completed} completed, expected ${jobs}`);
  }
  console.log(JSON.stringify({ client: 'node', kind: 'drain', concurrency, jobs, seconds, rate: jobs / seconds }));
}

async function main() {
  const [mode, dsn, queue, jobs, n] = process.argv.slice(2);
  if (!['latency', 'drain'].includes(mode) || n === undefined) {
    throw new Error('usage: bench.js latency|drain DSN QUEUE JOBS INTERVAL_MS|CONCURRENCY');
  }
  await (mode === 'latency' ? latency : drain)(dsn, queue, Number(jobs), Number(n));
}

main().catch((err) => { console.error(err); process.exit(1); });
