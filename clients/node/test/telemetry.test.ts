import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { trace, SpanKind, SpanStatusCode, type Tracer, type TracerProvider } from '@opentelemetry/api';
import { push, Worker } from '../dist';
import { adminPool, uniqueQueue, waitForStatus, collectErrors, DATABASE_URL } from './helpers';

const pool = adminPool();
after(() => pool.end());

interface Recorded { name: string; kind?: SpanKind; attributes: Record<string, unknown>; status?: number; ended: boolean; exceptions: unknown[] }

test('with @opentelemetry/api installed, pushes and jobs make PRODUCER and CONSUMER spans', async (t) => {
  const spans: Recorded[] = [];
  const tracer = {
    startActiveSpan(name: string, opts: { kind?: SpanKind; attributes?: Record<string, unknown> }, fn: (span: unknown) => unknown) {
      const rec: Recorded = { name, kind: opts.kind, attributes: { ...opts.attributes }, ended: false, exceptions: [] };
      spans.push(rec);
      return fn({
        setAttribute: (k: string, v: unknown) => { rec.attributes[k] = v; },
        setStatus: (s: { code: number }) => { rec.status = s.code; },
        recordException: (e: unknown) => { rec.exceptions.push(e); },
        end: () => { rec.ended = true; },
      });
    },
    startSpan() { throw new Error('not used'); },
  } as unknown as Tracer;
  const provider: TracerProvider = { getTracer: () => tracer };
  assert.ok(trace.setGlobalTracerProvider(provider));
  t.after(() => trace.disable());

  const q = uniqueQueue('otel');
  const worker = new Worker({ connectionString: DATABASE_URL, handlers: { [q]: (job) => { if ((job.payload as { bad?: boolean }).bad) throw new Error('nope'); return 1; } } });
  collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  const ok = await push(pool, q, {});
  const bad = await push(pool, q, { bad: true }, { maxAttempts: 1 });
  await waitForStatus(pool, ok, ['completed']);
  await waitForStatus(pool, bad, ['failed']);
  const consumer = (id: string) => spans.find((s) => s.kind === SpanKind.CONSUMER && s.attributes['messaging.message.id'] === id);
  const publish = spans.filter((s) => s.kind === SpanKind.PRODUCER && s.name === `publish ${q}`);
  assert.equal(publish.length, 2);
  assert.ok(publish.every((s) => s.ended && s.status === SpanStatusCode.OK));
  assert.equal(consumer(ok)?.name, `process ${q}`);
  assert.equal(consumer(ok)?.status, SpanStatusCode.OK);
  assert.equal(consumer(ok)?.attributes['queue.attempt'], 1);
  assert.equal(consumer(bad)?.status, SpanStatusCode.ERROR);
  assert.equal((consumer(bad)?.exceptions[0] as Error).message, 'nope');
  assert.ok(spans.every((s) => s.ended));
});

test('a tracer provider registered after the worker started gets the spans of the jobs that follow', async (t) => {
  const q = uniqueQueue('otel-late');
  const worker = new Worker({ connectionString: DATABASE_URL, handlers: { [q]: () => 1 } });
  collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  const before = await push(pool, q, {});
  await waitForStatus(pool, before, ['completed']); // no provider: no span, nothing else changes

  const names: string[] = [];
  const ids: unknown[] = [];
  const tracer = {
    startActiveSpan(name: string, opts: { attributes?: Record<string, unknown> }, fn: (span: unknown) => unknown) {
      names.push(name);
      ids.push(opts.attributes?.['messaging.message.id']);
      return fn({ setAttribute() {}, setStatus() {}, recordException() {}, end() {} });
    },
    startSpan() { throw new Error('not used'); },
  } as unknown as Tracer;
  assert.ok(trace.setGlobalTracerProvider({ getTracer: () => tracer }));
  t.after(() => trace.disable());
  const afterwards = await push(pool, q, {});
  await waitForStatus(pool, afterwards, ['completed']);
  assert.ok(ids.includes(afterwards), 'the job pushed after the registration ran in a span');
  assert.ok(!ids.includes(before));
  assert.ok(names.includes(`process ${q}`));
});

test('a tracer that throws, or an odd error in a span, fails no job: each job keeps its own outcome', async (t) => {
  let ended = 0;
  const tracer = {
    startActiveSpan(name: string, _opts: unknown, fn: (span: unknown) => unknown) {
      return fn({
        setAttribute() {},
        setStatus() { throw new Error('setStatus is down'); },
        recordException() { throw new Error('recordException is down'); },
        end() {
          if (name.startsWith('process ')) ended++;
          throw new Error('end is down');
        },
      });
    },
    startSpan() { throw new Error('not used'); },
  } as unknown as Tracer;
  assert.ok(trace.setGlobalTracerProvider({ getTracer: () => tracer }));
  t.after(() => trace.disable());
  const q = uniqueQueue('otel-odd');
  const worker = new Worker({
    connectionString: DATABASE_URL,
    handlers: {
      [q]: (job) => {
        const { kind } = job.payload as { kind: string };
        if (kind === 'nullproto') throw Object.create(null); // String() of it throws
        if (kind === 'error') throw new Error('plain');
        return 'ok';
      },
    },
  });
  const errors = collectErrors(worker);
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  const ok = await push(pool, q, { kind: 'ok' });
  const odd = await push(pool, q, { kind: 'nullproto' }, { maxAttempts: 1 });
  const plain = await push(pool, q, { kind: 'error' }, { maxAttempts: 1 });
  assert.equal((await waitForStatus(pool, ok, ['completed'])).result, 'ok');
  assert.equal((await waitForStatus(pool, odd, ['failed'])).last_error, '{}');
  assert.match((await waitForStatus(pool, plain, ['failed'])).last_error, /^Error: plain/);
  assert.equal(ended, 3, 'each job had its span');
  // The pushes went through as well, their spans' failures ignored (a push that
  // committed must not throw: its caller would push it again).
  assert.deepEqual(errors, []);
});
