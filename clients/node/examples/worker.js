// A complete worker: `node examples/worker.js` (after `npm run build`).
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node examples/worker.js
//
// Serves the queue "emails" (or $QUEUE) with 5 handlers at once, pushes
// $PUSH_DEMO_JOBS demo jobs first (default 3; in one transaction, to show
// that they exist only once it commits), and stops gracefully on SIGTERM or
// SIGINT (Ctrl-C): running handlers get 10 s, then their jobs are given back.
'use strict';

const { Client } = require('pg');
const { Worker, push, PermanentError, RetryIn } = require('@queue/client');

const connectionString = process.env.DATABASE_URL;
const queue = process.env.QUEUE || 'emails';

/** The handler: all a developer writes. Its return value is stored as the job's result. */
async function sendEmail(job) {
  const { to, subject } = job.payload;
  if (!to || !to.includes('@')) throw new PermanentError(`not an address: ${to}`); // no retry
  if (job.payload.rateLimited) throw new RetryIn('30 seconds', 'SMTP said 421');   // retry in 30 s
  await job.progress(1, 2, 'connecting');
  await new Promise((resolve) => setTimeout(resolve, 100)); // the "work"; job.signal fires at a hard stop or past maxRuntimeMs
  return { messageId: `<${job.id}@example.com>`, to, subject };
}

async function pushDemoJobs(n) {
  const client = new Client({ connectionString });
  await client.connect();
  try {
    await client.query('BEGIN');
    for (let i = 1; i <= n; i++) {
      await push(client, queue, { to: `user${i}@example.com`, subject: `Hello ${i}` }, { priority: i === 1 ? 'high' : 'normal' });
    }
    await client.query('COMMIT'); // the jobs exist, and the worker wakes, only now
  } finally {
    await client.end();
  }
}

async function main() {
  const worker = new Worker({
    connectionString,
    handlers: { [queue]: sendEmail },
    concurrency: 5,
    maxRuntimeMs: 30_000, // a hung handler's attempt fails after 30 s (and is retried) instead of holding its job forever
    graceMs: 10_000,
    handleSignals: true, // SIGTERM / SIGINT: stop gracefully; a second signal stops at once
  });
  worker.on('job:complete', (e) => console.log(`completed job ${e.job.id} in ${e.durationMs.toFixed(1)} ms`, e.result));
  worker.on('job:fail', (e) => console.log(`job ${e.job.id} failed (${e.status}): ${e.error.message}`));
  worker.on('error', (err) => console.error('worker error (retrying):', err.message));
  worker.on('stop', () => console.log('worker stopped'));

  await worker.start();
  console.log(`worker ${worker.name} serving "${queue}"`);
  await pushDemoJobs(Number(process.env.PUSH_DEMO_JOBS ?? 3));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
