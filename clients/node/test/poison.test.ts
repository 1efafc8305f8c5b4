import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { push, Worker, type WorkerOptions } from '../dist';
import { adminPool, jobOf, uniqueQueue, sleep, waitFor, waitForStatus, collectErrors, DATABASE_URL } from './helpers';

// Poison pills that must fail only their own job: listeners and loggers that
// fail (async ones included), and handlers that throw values which cannot be
// described the usual way.

const pool = adminPool();
after(() => pool.end());

/** Records the process's unhandled rejections while a test runs (an unhandled rejection ends a Node >= 15 process). */
function watchUnhandled(t: { after(fn: () => unknown): void }): unknown[] {
  const seen: unknown[] = [];
  const listener = (reason: unknown): void => {
    seen.push(reason);
  };
  process.on('unhandledRejection', listener);
  t.after(() => process.off('unhandledRejection', listener));
  return seen;
}

async function startWorker(t: { after(fn: () => unknown): void }, opts: Omit<WorkerOptions, 'connectionString'>, listen = true): Promise<{ worker: Worker; errors: Error[] }> {
  const worker = new Worker({ connectionString: DATABASE_URL, ...opts });
  const errors = listen ? collectErrors(worker) : [];
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  return { worker, errors };
}

test('async job:start / job:complete / job:fail listeners that reject are reported as errors; no unhandled rejection; outcomes unchanged', async (t) => {
  const unhandled = watchUnhandled(t);
  const q = uniqueQueue('hooks');
  const { worker, errors } = await startWorker(t, {
    handlers: {
      [q]: (job) => {
        if ((job.payload as { bad?: boolean }).bad) throw new Error('the handler failed');
        return { n: (job.payload as { n: number }).n };
      },
    },
  });
  for (const ev of ['job:start', 'job:complete', 'job:fail'] as const) {
    worker.on(ev, async () => {
      await sleep(1);
      throw new Error(`${ev} hook is down`);
    });
  }
  const ok = await push(pool, q, { n: 7 });
  const bad = await push(pool, q, { bad: true }, { maxAttempts: 1 });
  const jok = await waitForStatus(pool, ok, ['completed']);
  const jbad = await waitForStatus(pool, bad, ['failed']);
  assert.deepEqual(jok.result, { n: 7 });
  assert.equal(jok.attempts, 1);
  assert.match(jbad.last_error, /the handler failed/);
  assert.equal(jbad.attempts, 1);
  await waitFor(() => errors.length >= 4, 'the 4 rejections reported as errors', 5000);
  await sleep(100); // a rejection nobody handled is reported after the microtasks drained
  assert.deepEqual(unhandled, []);
  for (const ev of ['job:start', 'job:complete', 'job:fail']) {
    assert.ok(errors.some((e) => e.message === `a listener of "${ev}" rejected: ${ev} hook is down`),
      `no error event for the ${ev} listener: ${errors.map((e) => e.message).join(' | ')}`);
  }
  assert.equal(worker.state, 'running');
  const next = await push(pool, q, { n: 8 });
  assert.deepEqual((await waitForStatus(pool, next, ['completed'])).result, { n: 8 });
});

test('an error listener that rejects and a logger that rejects or throws are contained; the jobs complete', async (t) => {
  const unhandled = watchUnhandled(t);
  // 1: a listener that throws goes to the error listener, which rejects: to the
  // logger, which rejects too.
  const q1 = uniqueQueue('hooks-log');
  const logged: string[] = [];
  const { worker: w1 } = await startWorker(t, {
    handlers: { [q1]: () => 'done' },
    logger: { error: async (m: string) => { logged.push(m); throw new Error('the logger is down'); } },
  }, false);
  w1.on('job:complete', () => { throw new Error('complete hook is down'); });
  w1.on('error', async () => { throw new Error('error hook is down'); });
  // 2: no error listener, and a logger that throws.
  const q2 = uniqueQueue('hooks-log2');
  let throws = 0;
  const { worker: w2 } = await startWorker(t, {
    handlers: { [q2]: () => 'done too' },
    logger: { error: () => { throws++; throw new Error('the logger is down'); } },
  }, false);
  w2.on('job:complete', () => { throw new Error('complete hook is down'); });

  const a = await push(pool, q1, {});
  const b = await push(pool, q2, {});
  const b2 = await push(pool, q2, {});
  assert.equal((await waitForStatus(pool, a, ['completed'])).result, 'done');
  assert.equal((await waitForStatus(pool, b, ['completed'])).result, 'done too');
  assert.equal((await waitForStatus(pool, b2, ['completed'])).result, 'done too');
  await waitFor(() => logged.some((m) => m.includes('a listener of "error" rejected: error hook is down')), 'the rejected error listener logged', 5000);
  await waitFor(() => throws >= 2, 'the throwing logger called for both jobs', 5000);
  await sleep(100);
  assert.deepEqual(unhandled, []);
  assert.equal(w1.state, 'running');
  assert.equal(w2.state, 'running');
  assert.equal(w2.runningCount, 0);
});

/** Values a handler may throw that are hard to describe, and what last_error must say of each. */
const ODD_THROWS: Array<{ name: string; make: () => unknown; expect: RegExp }> = [
  {
    name: 'an Error whose message getter throws',
    make: () => {
      const e = new Error('unused');
      // The stack first: replacing it formats the old one, which reads the message.
      Object.defineProperty(e, 'stack', { get() { throw new Error('no stack for you'); } });
      Object.defineProperty(e, 'message', { get() { throw new Error('no message for you'); } });
      return e;
    },
    expect: /^Error: \(its message could not be read\)$/,
  },
  {
    name: 'an Error whose stack getter throws',
    make: () => {
      const e = new Error('the message is fine');
      Object.defineProperty(e, 'stack', { get() { throw new Error('no stack for you'); } });
      return e;
    },
    expect: /^Error: the message is fine$/,
  },
  {
    name: 'a Proxy of an Error whose every property throws',
    make: () => new Proxy(new Error('hidden'), { get() { throw new Error('trap'); } }),
    expect: /^Error: \(its message could not be read\)$/,
  },
  {
    name: 'a Proxy whose every trap throws',
    make: () => {
      const trap = (): never => { throw new Error('trap'); };
      return new Proxy({}, { get: trap, getPrototypeOf: trap, ownKeys: trap, has: trap, getOwnPropertyDescriptor: trap });
    },
    expect: /^a thrown object that could not be described$/,
  },
  {
    name: 'a revoked Proxy',
    make: () => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return proxy;
    },
    expect: /^a thrown object that could not be described$/,
  },
  {
    name: 'an object whose toString and toJSON throw',
    make: () => ({ toString() { throw new Error('no'); }, toJSON() { throw new Error('no JSON'); } }),
    expect: /^\[object Object\] \(thrown; it could not be described\)$/,
  },
  { name: 'Object.create(null)', make: () => Object.assign(Object.create(null), { code: 7 }), expect: /^\{"code":7\}$/ },
  { name: 'a Symbol', make: () => Symbol('odd'), expect: /^Symbol\(odd\)$/ },
  { name: 'a BigInt', make: () => 12345678901234567890n, expect: /^12345678901234567890$/ },
  { name: 'undefined', make: () => undefined, expect: /^undefined$/ },
  { name: 'an Error with a NUL in its message', make: () => new Error('before \u0000 after'), expect: /^Error: before \\x00 after\n/ },
  { name: 'a 1 MB message', make: () => new Error('x'.repeat(1_000_000)), expect: /^Error: x{15993}…$/ },
];

test('a handler that throws something odd (throwing getters, a Proxy, a Symbol, a BigInt, a NUL, 1 MB) fails only its own job, with a storable description', async (t) => {
  const unhandled = watchUnhandled(t);
  const q = uniqueQueue('oddthrow');
  const { worker, errors } = await startWorker(t, {
    concurrency: 4,
    handlers: {
      [q]: (job) => {
        const { kind } = job.payload as { kind: number | 'result' | 'fine' };
        if (kind === 'fine') return 'fine';
        // A result whose toJSON throws a value without a prototype: the serialisation error is odd too.
        if (kind === 'result') return { toJSON() { throw Object.create(null); } };
        throw ODD_THROWS[kind]!.make();
      },
    },
  });
  const ids = new Map<string, string>();
  for (const [kind, odd] of ODD_THROWS.entries()) ids.set(odd.name, await push(pool, q, { kind }, { maxAttempts: 1 }));
  const resultId = await push(pool, q, { kind: 'result' }, { maxAttempts: 1 });
  for (const odd of ODD_THROWS) {
    const j = await waitForStatus(pool, ids.get(odd.name)!, ['failed'], 10_000).catch(async (err: Error) => {
      throw new Error(`${odd.name}: ${err.message} (it is ${JSON.stringify(await jobOf(pool, ids.get(odd.name)!))})`);
    });
    assert.equal(j.attempts, 1, odd.name);
    assert.match(j.last_error, odd.expect, `${odd.name}: last_error ${JSON.stringify(String(j.last_error).slice(0, 200))}`);
  }
  const jr = await waitForStatus(pool, resultId, ['failed']);
  assert.equal(jr.last_error.split('\n')[0], "TypeError: the handler's result is not JSON-serializable: {}");
  const fine = await push(pool, q, { kind: 'fine' });
  assert.equal((await waitForStatus(pool, fine, ['completed'])).result, 'fine');
  assert.equal(worker.state, 'running');
  assert.deepEqual(unhandled, []);
  assert.deepEqual(errors.map((e) => e.message), [], 'every failure was recorded as given, none needed a fallback');
});
