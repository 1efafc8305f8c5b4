// Browser test of the queuectl dashboard: a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) against `queuectl serve` on a
// real cluster. Run by queuectl/run-tests.sh, which sets:
//   QUEUECTL_BIN   the built binary
//   DATABASE_URL   the test cluster
//   QUEUECTL_PORT  where the dashboard listens (default 25493)
//   SCREENSHOT_DIR where screenshots go (default ../../../.run)
// Exits non-zero on any failure; prints "N passed, M failed".
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.QUEUECTL_BIN || resolve(here, '../../../target/debug/queuectl');
const PORT = Number(process.env.QUEUECTL_PORT || 25493);
const SHOTS = process.env.SCREENSHOT_DIR || resolve(here, '../../../.run');
const BASE = `http://127.0.0.1:${PORT}`;
const tag = `b${process.pid}`;
const Q_MAIL = `browser.${tag}.emails`;
const Q_REPORTS = `browser.${tag}.reports`;
const Q_FLOW = `browser.${tag}.flow`;
const Q_BATCH = `browser.${tag}.batch`;
const Q_BATCH_DONE = `browser.${tag}.batch-done`;
const TAG_A = `customer-${tag}`, TAG_B = `pdf-${tag}`;
const SCHEDULE = `browser-${tag}-nightly`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function qc(...args) {
  return execFileSync(BIN, args, { encoding: 'utf8', env: process.env, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}
const qcJson = (...args) => JSON.parse(qc(...args, '--json'));
async function until(what, fn, timeoutMs = 15000) {
  const start = Date.now();
  for (;;) {
    try { if (await fn()) return; } catch (_) { /* not yet */ }
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(150);
  }
}

let passed = 0, failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}\n  ${String(e && e.stack || e).split('\n').slice(0, 6).join('\n  ')}`);
  }
}

const children = [];
function start(args, opts) {
  const child = spawn(BIN, args, Object.assign({ env: process.env, stdio: ['ignore', 'ignore', 'pipe'] }, opts || {}));
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  child.log = () => err;
  children.push(child);
  return child;
}
function stop(child) {
  return new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res(child.exitCode);
    child.once('exit', (code) => res(code));
    child.kill('SIGTERM');
  });
}

const profile = mkdtempSync(join(tmpdir(), 'queuectl-chromium-'));
let context = null;
let server = null;
try {
  // ---- data, through the CLI only ------------------------------------------
  const failing = join(profile, 'fail.sh');
  writeFileSync(failing, '#!/bin/sh\ncat >/dev/null\necho \'no such recipient <img src=x onerror="window.__xss=1">\' >&2\nexit 1\n');
  chmodSync(failing, 0o755);
  const dead = [
    Number(qc('push', Q_MAIL, '{"to": "<b>bold@example.com</b>"}', '--max-attempts', '1')),
    Number(qc('push', Q_MAIL, '{"to": "b@example.com"}', '--max-attempts', '1')),
  ];
  const failer = start(['work', Q_MAIL, '--poll-interval', '1s', '--', failing]);
  await until('the jobs to fail', () => qcJson('failed', Q_MAIL).length === 2, 20000);
  await stop(failer); // so that a retried job stays pending
  // An idle worker on a queue of its own, for the worker panel.
  const worker = start(['work', `browser.${tag}.idle`, '--name', `browser-worker-${tag}`, '--', 'true']);
  // One job it completes, for the job browser's completed list.
  qc('push', `browser.${tag}.idle`, '{"done": true}');
  await until('a completed job', () => qcJson('jobs', `browser.${tag}.idle`, '--status', 'completed').length === 1, 20000);
  qc('push', Q_REPORTS, '{"report": 1}', '--priority', 'high');
  qc('push', Q_REPORTS, '{"report": 2}');
  qc('push', Q_REPORTS, '{"report": 3}', '--priority', 'low');
  qc('schedule', SCHEDULE, '0 2 * * *', Q_REPORTS, '{"kind": "nightly"}');
  // A job that waits for another one (queue_push's depends_on).
  const upstream = Number(qc('push', Q_FLOW, '{"step": "extract"}'));
  const downstream = Number(qc('push', Q_FLOW, '{"step": "load"}', '--depends-on', String(upstream)));
  // Queue defaults (queue_configure) for the flow queue's card.
  qc('configure', Q_FLOW, '--max-attempts', '7', '--timeout', '30s', '--priority', 'low');
  // A closed batch of two tagged jobs, the second depending on the first, with a callback.
  const batchId = Number(qc('batch', 'open', '--on-complete', JSON.stringify({ queue: Q_BATCH_DONE, payload: { report: 9 } })));
  const part1 = Number(qc('push', Q_BATCH, '{"part": 1}', '--batch', String(batchId), '--tag', TAG_B, '--tag', TAG_A));
  const part2 = Number(qc('push', Q_BATCH, '{"part": 2}', '--batch', String(batchId), '--tag', TAG_B, '--depends-on', String(part1)));
  qc('batch', 'close', String(batchId));
  // A newer batch left open (and empty), for the Batches list.
  const openBatch = Number(qc('batch', 'open'));

  server = start(['serve', '--listen', `127.0.0.1:${PORT}`]);
  await until('the dashboard', async () => (await fetch(`${BASE}/api/info`)).ok);

  context = await chromium.launchPersistentContext(profile + '/chromium', {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A failed fetch is reported below with its URL; anything else is a problem (CSP violations included).
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() < 400) return;
    problems.push(`HTTP ${r.status()} from ${r.url()}`);
  });

  const apiCalls = [];
  page.on('request', (r) => { if (r.url().includes('/api/')) apiCalls.push({ url: r.url(), at: Date.now() }); });

  await page.goto(BASE + '/');
  const card = page.locator(`#stats [data-queue="${Q_REPORTS}"]`);

  await check('the stats panel shows the pushed queue with its depth and priorities', async () => {
    await card.waitFor({ timeout: 10000 });
    assert.equal(await card.locator('[data-field=waiting]').textContent(), '3');
    const chips = await card.locator('.chip').allTextContents();
    assert.deepEqual(chips, ['high 1', 'normal 1', 'low 1']);
    // The jobs were pushed before the page loaded: the chart draws them
    // from queue_throughput (a flush every 100 ms; the panel every 5 s).
    await card.locator('.chart svg polyline').waitFor({ timeout: 12000 });
    const chartText = await card.locator('.chart').textContent();
    assert.ok(chartText.includes('pushed'), chartText);
  });

  await check('the failed-jobs panel lists the dead jobs with error and payload, escaped', async () => {
    for (const id of dead) await page.locator(`#failed tr[data-job-id="${id}"]`).waitFor({ timeout: 10000 });
    const row = page.locator(`#failed tr[data-job-id="${dead[0]}"]`);
    assert.ok((await row.locator('td.err').textContent()).includes('no such recipient <img src=x onerror="window.__xss=1">'));
    assert.ok((await row.locator('td.payload').textContent()).includes('<b>bold@example.com</b>'));
    assert.equal(await page.evaluate(() => window.__xss), undefined, 'no markup from the data ran');
    assert.equal(await page.locator('#failed td.err img, #failed td.payload b').count(), 0);
    assert.ok(await page.locator(`#failed-retry-all button[data-queue="${Q_MAIL}"]`).isVisible());
  });

  await check('the worker panel shows the worker, healthy, with its host', async () => {
    const row = page.locator(`#workers tr[data-worker="browser-worker-${tag}"]`);
    await row.waitFor({ timeout: 10000 });
    assert.ok((await row.textContent()).includes('healthy'));
  });

  await check('the scheduler timeline shows the schedule with its type badge and relative time', async () => {
    const item = page.locator(`#timeline [data-schedule="${SCHEDULE}"]`);
    await item.waitFor({ timeout: 10000 });
    const text = await item.textContent();
    assert.ok(text.includes('CRON'), text);
    assert.match(text, /in \d+ (hours?|min|s)/);
    assert.ok(await item.locator('button.run-now').isVisible());
  });

  await check('a push shows up in the stats panel without a reload', async () => {
    await page.evaluate(() => { window.__sameDocument = 42; });
    qc('push', Q_REPORTS, '{"report": 4}');
    await until('the new depth', async () => (await card.locator('[data-field=waiting]').textContent()) === '4', 12000);
    assert.equal(await page.evaluate(() => window.__sameDocument), 42, 'the page was not reloaded');
  });

  await check('Pause pauses the queue in the database and shows the badge without a reload; Resume clears it', async () => {
    await page.evaluate(() => { window.__sameDocument = 43; });
    const badge = card.locator('[data-badge=paused]');
    assert.equal(await badge.count(), 0, 'not paused yet');
    assert.equal(await card.getAttribute('data-paused'), 'false');
    await card.locator('button.queue-pause').click();
    await until('the queue to be paused in the database', () => qcJson('status', Q_REPORTS).stats.paused === true, 10000);
    await badge.waitFor({ timeout: 12000 });
    assert.equal(await badge.textContent(), 'paused');
    // Since when and by whom, from queue_settings().
    const since = card.locator('[data-field=paused-since]');
    await since.waitFor({ timeout: 12000 });
    assert.match(await since.textContent(), /^paused (now|.+ ago) by postgres$/);
    assert.equal(await card.getAttribute('data-paused'), 'true');
    assert.ok((await page.locator('#toast').textContent()).includes(`paused ${Q_REPORTS}`));
    assert.equal(await page.locator(`#stats [data-queue="${Q_MAIL}"] [data-badge=paused]`).count(), 0, 'only that queue');
    assert.equal(await card.locator('button.queue-pause').count(), 0, 'Pause became Resume');
    await card.locator('button.queue-resume').click();
    await until('the queue to be resumed in the database', () => qcJson('status', Q_REPORTS).stats.paused === false, 10000);
    await badge.waitFor({ state: 'detached', timeout: 12000 });
    assert.equal(await card.getAttribute('data-paused'), 'false');
    assert.ok(await card.locator('button.queue-pause').isVisible(), 'Resume became Pause');
    assert.equal(await page.evaluate(() => window.__sameDocument), 43, 'the page was not reloaded');
  });

  await check('Retry on a failed job takes it off the failed list and back to pending', async () => {
    const row = page.locator(`#failed tr[data-job-id="${dead[0]}"]`);
    await row.locator('button.retry').click();
    await row.waitFor({ state: 'detached', timeout: 12000 });
    assert.equal(qcJson('job', String(dead[0])).status, 'pending');
    assert.ok((await page.locator('#toast').textContent()).includes('pending again'));
    assert.ok(await page.locator(`#failed tr[data-job-id="${dead[1]}"]`).isVisible(), 'the other one stays');
  });

  await check('Run now triggers the schedule', async () => {
    const before = qcJson('status', Q_REPORTS).stats.total_pushed;
    await page.locator(`#timeline [data-schedule="${SCHEDULE}"] button.run-now`).click();
    await until('the triggered job', () => qcJson('status', Q_REPORTS).stats.total_pushed === before + 1, 10000);
  });

  await check('the job page shows payload, status, timings and the error history', async () => {
    await page.goto(`${BASE}/#/job/${dead[1]}`);
    await page.locator('#job [data-status]').waitFor({ timeout: 10000 });
    assert.equal(await page.locator('#job [data-status]').textContent(), 'failed');
    const text = await page.locator('#job').textContent();
    assert.ok(text.includes('b@example.com') && text.includes('Timings') && text.includes('no such recipient'), text);
    // The error history: one row per failed attempt (this job had one).
    const attempts = await page.locator('#job table.errors tr[data-attempt]').evaluateAll((rows) => rows.map((r) => r.dataset.attempt));
    assert.deepEqual(attempts, ['1']);
  });

  await check('the job browser lists pending jobs of a queue in claim order', async () => {
    await page.selectOption('#browse-queue', Q_REPORTS);
    await page.selectOption('#browse-status', 'pending');
    await page.click('#browse-jobs button[type=submit]');
    await page.locator('#browse-body tr[data-job-id]').first().waitFor({ timeout: 10000 });
    assert.ok(await page.locator('#browse-body tr[data-job-id]').count() >= 4);
    const first = await page.locator('#browse-body tr[data-job-id] td:nth-child(3)').first().textContent();
    assert.equal(first, '-10', 'the high-priority job first');
  });

  await check('the job browser lists completed jobs of any queue, newest first (queue_jobs)', async () => {
    await page.selectOption('#browse-queue', '');
    await page.selectOption('#browse-status', 'completed');
    await page.click('#browse-jobs button[type=submit]');
    // The rows of the previous listing stay until the answer arrives: wait
    // for the new rows, not for any row.
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll('#browse-body tr[data-job-id] td:nth-child(3)')];
      return cells.length > 0 && cells.every((td) => td.textContent !== '' && Number.isNaN(Number(td.textContent)));
    }, null, { timeout: 10000 });
    const statuses = await page.locator('#browse-body tr[data-job-id] td:nth-child(3)').allTextContents();
    assert.ok(statuses.length >= 1 && statuses.every((t) => t === 'completed'), statuses.join(','));
    const ids = (await page.locator('#browse-body tr[data-job-id]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.jobId))));
    assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
  });

  const flowCard = page.locator(`#stats [data-queue="${Q_FLOW}"]`);
  await check('a job pushed with a dependency shows as blocked 1 in its queue card and the summary', async () => {
    await flowCard.waitFor({ timeout: 10000 });
    await until('the blocked count', async () => (await flowCard.locator('[data-field=blocked]').textContent()) === '1', 12000);
    // The dependency waits; the blocked job is not counted as waiting.
    assert.equal(await flowCard.locator('[data-field=waiting]').textContent(), '1');
    const summary = await page.locator('#stats-summary').textContent();
    assert.match(summary, /\d+blocked/, summary);
    assert.equal(await card.locator('[data-field=blocked]').textContent(), '0', 'a queue without dependencies shows 0');
  });

  await check('the job page shows the blocked job with its dependency, and both done once it completed', async () => {
    await page.evaluate(() => { window.__sameDocument = 44; });
    await page.evaluate((id) => { location.hash = `#/job/${id}`; }, downstream);
    await until('the job page', async () => (await page.locator('#job-title').textContent()) === `Job #${downstream}` &&
      (await page.locator('#job [data-status]').textContent()) === 'blocked', 10000);
    assert.ok((await page.locator('#job [data-field=blocked-by]').textContent()).includes('1 of 1 dependency not resolved'));
    assert.equal(await page.locator('#job [data-field=depends-on] a').textContent(), `#${upstream}`);
    const dep = page.locator(`#job tr[data-dependency="${upstream}"]`);
    assert.equal(await dep.getAttribute('data-resolved'), 'false');
    const cells = await dep.locator('td').allTextContents();
    assert.deepEqual(cells.slice(0, 4), [`#${upstream}`, Q_FLOW, 'pending', 'no']);
    assert.ok((await page.locator('#job button').allTextContents()).includes('Cancel'), 'a blocked job can be cancelled');
    // A worker completes the dependency, then the job it released.
    const flowWorker = start(['work', Q_FLOW, '--poll-interval', '1s', '--', 'true']);
    try {
      await until('both jobs to complete', () => qcJson('job', String(downstream)).status === 'completed', 20000);
    } finally {
      await stop(flowWorker);
    }
    // The job page polls every 5 s while not final; the stats panel every 5 s.
    await until('the job page to show it completed', async () => (await page.locator('#job [data-status]').textContent()) === 'completed', 12000);
    assert.equal(await dep.getAttribute('data-resolved'), 'true');
    await until('the blocked count to drop', async () => (await flowCard.locator('[data-field=blocked]').textContent()) === '0', 12000);
    assert.equal(await page.evaluate(() => window.__sameDocument), 44, 'the page was not reloaded');
  });

  await check('a queue card shows its defaults from queue_configure, another one the global defaults', async () => {
    await flowCard.locator('[data-field=settings]').waitFor({ timeout: 10000 });
    assert.equal(await flowCard.locator('[data-setting=max_attempts] b').textContent(), '7');
    assert.equal(await flowCard.locator('[data-setting=timeout] b').textContent(), '30 s');
    assert.equal(await flowCard.locator('[data-setting=priority] b').textContent(), 'low (10)');
    assert.equal(await flowCard.locator('[data-setting=backoff_base]').count(), 0, 'not set: not shown');
    assert.equal(await card.locator('[data-field=settings] [data-setting=none]').textContent(), 'global');
    assert.equal(await card.locator('[data-field=paused-since]').count(), 0, 'not paused');
  });

  await check('the job page shows tags, the batch and the dependencies of a batch job', async () => {
    await page.evaluate((id) => { location.hash = `#/job/${id}`; }, part2);
    await until('the job page', async () => (await page.locator('#job-title').textContent()) === `Job #${part2}` &&
      (await page.locator('#job [data-status]').textContent()) === 'blocked', 10000);
    assert.deepEqual(await page.locator('#job [data-field=tags] .chip').allTextContents(), [TAG_B]);
    const batch = page.locator('#job [data-field=batch]');
    assert.equal(await batch.locator('a').textContent(), `batch #${batchId}`);
    assert.equal(await batch.locator('a').getAttribute('href'), `#/batch/${batchId}`);
    assert.ok((await batch.textContent()).includes('closed · 0 of 2 final'), await batch.textContent());
    const dep = page.locator(`#job tr[data-dependency="${part1}"]`);
    assert.deepEqual((await dep.locator('td').allTextContents()).slice(0, 4), [`#${part1}`, Q_BATCH, 'pending', 'no']);
    // The other job: both tags, sorted; no dependencies.
    await page.evaluate((id) => { location.hash = `#/job/${id}`; }, part1);
    await until('the other job', async () => (await page.locator('#job-title').textContent()) === `Job #${part1}` &&
      (await page.locator('#job [data-field=tags] .chip').count()) === 2, 10000);
    assert.deepEqual(await page.locator('#job [data-field=tags] .chip').allTextContents(), [TAG_A, TAG_B].sort());
    assert.equal(await page.locator('#job table.deps').count(), 0);
  });

  await check('the batch link opens the batch view: state, progress and counts, then done with its callback', async () => {
    await page.evaluate(() => { window.__sameDocument = 45; });
    await page.locator('#job [data-field=batch] a').click();
    await until('the batch view', async () => (await page.locator('#batch-title').textContent()) === `Batch #${batchId}` &&
      (await page.locator('#batch [data-state]').count()) === 1, 10000);
    assert.equal(await page.locator('#job').isHidden(), true, 'the job page made way');
    assert.equal(await page.locator('#batch [data-state]').textContent(), 'closed');
    assert.equal(await page.locator('#batch [data-field=progress]').textContent(), '0 of 2 final (0.0%)');
    for (const [k, v] of [['total', '2'], ['pending', '2'], ['completed', '0'], ['failed', '0'], ['cancelled', '0']]) {
      assert.equal(await page.locator(`#batch b[data-field=${k}]`).textContent(), v, k);
    }
    const onComplete = page.locator('#batch [data-field=on-complete]');
    assert.ok((await onComplete.textContent()).includes(Q_BATCH_DONE) && (await onComplete.textContent()).includes('(not pushed)'));
    assert.equal(await page.locator('#batch [data-field=on-failure]').textContent(), '–');
    // A worker completes both jobs; the view polls while the batch is not done.
    const batchWorker = start(['work', Q_BATCH, '--poll-interval', '1s', '--', 'true']);
    try {
      await until('the batch to be done', () => qcJson('batch', 'show', String(batchId)).state === 'done', 20000);
    } finally {
      await stop(batchWorker);
    }
    const callbackJob = qcJson('batch', 'show', String(batchId)).complete_job;
    assert.ok(Number.isInteger(callbackJob), 'the callback was pushed');
    await until('the view to show it done', async () => (await page.locator('#batch [data-state]').textContent()) === 'done', 12000);
    assert.equal(await page.locator('#batch [data-field=progress]').textContent(), '2 of 2 final (100.0%)');
    assert.equal(await page.locator('#batch b[data-field=completed]').textContent(), '2');
    assert.equal(await onComplete.locator('a').textContent(), `#${callbackJob}`);
    assert.equal(await page.evaluate(() => window.__sameDocument), 45, 'the page was not reloaded');
  });

  await check('the Batches list shows the batches, done and open, filters by state, and a click opens the batch page', async () => {
    await page.evaluate(() => { window.__sameDocument = 46; });
    const shown = qcJson('batch', 'show', String(batchId));
    await page.click('nav a[href="#batches"]');
    await until('the batch page to make way', () => page.locator('#batch').isHidden(), 5000);
    const row = page.locator(`#batches tr[data-batch-id="${batchId}"]`);
    // The list refreshes every 10 s: it may still show the batch closed.
    await until('the batch listed as done', async () => (await row.getAttribute('data-state')) === 'done', 15000);
    assert.equal(await row.locator('.badge').textContent(), 'done');
    assert.equal(await row.locator('[data-field=progress]').textContent(), '2/2');
    for (const [k, v] of [['total', '2'], ['pending', '0'], ['completed', '2'], ['failed', '0'], ['cancelled', '0']]) {
      assert.equal(await row.locator(`td[data-field=${k}]`).textContent(), v, k);
    }
    assert.equal(await row.locator('[data-field=complete-job] a').textContent(), `#${shown.complete_job}`);
    assert.equal(await row.locator('[data-field=complete-job] a').getAttribute('href'), `#/job/${shown.complete_job}`);
    assert.equal(await row.locator('[data-field=failure-job]').count(), 0, 'no failure callback');
    assert.ok((await row.locator('time').count()) === 3, 'created, closed and finished');
    // The open batch: newer, listed first, not counted yet.
    const openRow = page.locator(`#batches tr[data-batch-id="${openBatch}"]`);
    assert.equal(await openRow.getAttribute('data-state'), 'open');
    assert.equal(await openRow.locator('[data-field=progress]').textContent(), 'not counted yet');
    assert.equal(await openRow.locator('td[data-field=total]').textContent(), '–');
    assert.equal(await openRow.locator('[data-field=callbacks]').textContent(), '–');
    const ids = await page.locator('#batches tr[data-batch-id]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.batchId)));
    assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
    assert.ok(ids.indexOf(openBatch) < ids.indexOf(batchId));
    // The state filter: only open batches, then every state again.
    await page.selectOption('#batches-state', 'open');
    await row.waitFor({ state: 'detached', timeout: 10000 });
    assert.ok(await openRow.isVisible());
    const states = await page.locator('#batches tr[data-batch-id]').evaluateAll((rows) => rows.map((r) => r.dataset.state));
    assert.ok(states.length >= 1 && states.every((st) => st === 'open'), states.join(','));
    await page.selectOption('#batches-state', '');
    await row.waitFor({ timeout: 10000 });
    // A click on the batch opens its page.
    await row.locator('a[data-batch]').click();
    await until('the batch page', async () => (await page.locator('#batch').isVisible()) &&
      (await page.locator('#batch-title').textContent()) === `Batch #${batchId}`, 10000);
    assert.equal(new URL(page.url()).hash, `#/batch/${batchId}`);
    assert.equal(await page.locator('#batch [data-state]').textContent(), 'done');
    assert.equal(await page.locator('#batch [data-field=progress]').textContent(), '2 of 2 final (100.0%)');
    assert.equal(await page.evaluate(() => window.__sameDocument), 46, 'the page was not reloaded');
  });

  await check('the job browser filters by tag (queue_jobs tag) and shows the tags', async () => {
    await page.selectOption('#browse-queue', '');
    await page.selectOption('#browse-status', 'all');
    await page.fill('#browse-tag', TAG_A);
    await page.click('#browse-jobs button[type=submit]');
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('#browse-body tr[data-job-id]')];
      return rows.length === 1 && rows[0].dataset.jobId === String(id);
    }, part1, { timeout: 10000 });
    const chips = await page.locator(`#browse-body tr[data-job-id="${part1}"] [data-field=tags] .chip`).allTextContents();
    assert.deepEqual(chips, [TAG_A, TAG_B].sort());
    await page.fill('#browse-tag', TAG_B);
    await page.click('#browse-jobs button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#browse-body tr[data-job-id]').length === 2, null, { timeout: 10000 });
    const ids = await page.locator('#browse-body tr[data-job-id]').evaluateAll((rows) => rows.map((r) => Number(r.dataset.jobId)));
    assert.deepEqual(ids, [part2, part1], 'both, newest first');
    await page.fill('#browse-tag', '');
  });

  await check('polling pauses while the tab is hidden and resumes when visible', async () => {
    const setHidden = (hidden) => page.evaluate((h) => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
    await setHidden(true);
    await sleep(300);
    const mark = Date.now();
    await sleep(6500);
    const during = apiCalls.filter((c) => c.at > mark).length;
    assert.equal(during, 0, `no API call while hidden (saw ${during})`);
    assert.equal(await page.locator('#live-text').textContent(), 'paused');
    await setHidden(false);
    await until('polling to resume', () => apiCalls.some((c) => c.at > mark + 6500), 3000);
  });

  await check('the page raised no script error, no CSP violation and no failed API call', async () => {
    assert.deepEqual(problems, []);
  });

  mkdirSync(SHOTS, { recursive: true });
  await page.goto(BASE + '/');
  await card.waitFor({ timeout: 10000 });
  await page.locator('#timeline [data-schedule]').first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: join(SHOTS, 'queuectl-dashboard.png'), fullPage: true });
  await check('readable on a phone: no horizontal overflow of the page', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `page is ${overflow}px wider than the phone`);
    await page.screenshot({ path: join(SHOTS, 'queuectl-dashboard-phone.png'), fullPage: true });
  });
  console.log(`screenshots: ${join(SHOTS, 'queuectl-dashboard.png')}, ${join(SHOTS, 'queuectl-dashboard-phone.png')}`);

  // Tidy the data this run made.
  await stop(worker);
  qc('unschedule', SCHEDULE);
  qc('batch', 'cancel', String(openBatch));
} catch (e) {
  failed++;
  console.log(`not ok - set-up: ${e && e.stack || e}`);
} finally {
  if (context) await context.close().catch(() => {});
  for (const c of children) await stop(c);
  if (server && failed) console.log(`server log:\n${server.log()}`);
  rmSync(profile, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
