import { Pool } from 'pg';
import { randomBytes } from 'node:crypto';
import { Worker, type WorkerEventMap } from '../dist';

/** The throwaway cluster run-tests.sh starts (with the extension created in it). */
export const DATABASE_URL: string = (() => {
  const url = process.env.QUEUE_TEST_DATABASE_URL;
  if (!url) {
    throw new Error('QUEUE_TEST_DATABASE_URL is not set: run the tests with clients/node/run-tests.sh (it starts a cluster)');
  }
  return url;
})();

/** A pool for the test itself (superuser), separate from any worker's. */
export function adminPool(): Pool {
  const pool = new Pool({ connectionString: DATABASE_URL, max: 4, application_name: 'node-client-tests' });
  pool.on('error', () => undefined);
  return pool;
}

/** A queue name no other test uses. */
export function uniqueQueue(prefix: string): string {
  return `${prefix}.${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
}

/** Resolves after ms. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls fn until it returns something truthy; throws after timeoutMs. */
export async function waitFor<T>(fn: () => Promise<T> | T, what: string, timeoutMs = 10_000, intervalMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Everything about a job (`queue_job`), or null. */
export async function jobOf(pool: Pool, id: string): Promise<Record<string, any> | null> {
  const res = await pool.query<{ j: Record<string, any> | null }>('SELECT queue_job($1::bigint) AS j', [id]);
  return res.rows[0]!.j;
}

/** Waits until a job has one of these statuses; returns it. */
export function waitForStatus(pool: Pool, id: string, statuses: string[], timeoutMs = 10_000): Promise<Record<string, any>> {
  return waitFor(async () => {
    const j = await jobOf(pool, id);
    return j && statuses.includes(j.status) ? j : null;
  }, `job ${id} to become ${statuses.join('/')}`, timeoutMs);
}

/** The next emission of a worker event matching pred. */
export function nextEvent<K extends keyof WorkerEventMap>(
  worker: Worker, event: K, pred: (...args: WorkerEventMap[K]) => boolean = () => true, timeoutMs = 10_000,
): Promise<WorkerEventMap[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.off(event, listener as never);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${String(event)}`));
    }, timeoutMs);
    const listener = (...args: WorkerEventMap[K]): void => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      worker.off(event, listener as never);
      resolve(args);
    };
    worker.on(event, listener as never);
  });
}

/** A promise with its resolve function. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Collects a worker's error events (so that expected connection errors are not logged as noise). */
export function collectErrors(worker: Worker): Error[] {
  const errors: Error[] = [];
  worker.on('error', (e) => errors.push(e));
  return errors;
}

/** A worker that only a notification can wake within a test's bounds (poll: 60 s). */
export async function listeningWorker(
  t: { after(fn: () => unknown): void }, q: string, name: string, handler: () => Promise<unknown>,
): Promise<{ worker: Worker; errors: Error[] }> {
  const worker = new Worker({
    connectionString: DATABASE_URL, name, handlers: { [q]: handler }, pollIntervalMs: 60_000,
    backoff: { initialMs: 50, maxMs: 1000 },
  });
  const errors: Error[] = [];
  worker.on('error', (e) => errors.push(e));
  await worker.start();
  t.after(() => worker.stop({ graceMs: 0 }));
  return { worker, errors };
}

