/*
 * OpenTelemetry spans, when `@opentelemetry/api` is installed (an optional peer
 * dependency). Without it, or without a registered tracer provider, every
 * helper just runs its function.
 */
import { errorMessage } from './errors';
import { LIBRARY_NAME, VERSION } from './version';

/* A minimal view of @opentelemetry/api, so that the package compiles and runs without it. */
interface Span {
  setAttribute(key: string, value: string | number | boolean): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  recordException(exception: unknown): unknown;
  end(): void;
}
/** @internal */
export interface Tracer {
  startActiveSpan<T>(name: string, options: { kind?: number; attributes?: Record<string, string | number | boolean> }, fn: (span: Span) => T): T;
}
interface TracerProvider {
  getTracer(name: string, version?: string): Tracer;
  /** The API's own ProxyTracerProvider only: the registered provider's tracer, undefined when none is registered. */
  getDelegateTracer?(name: string, version?: string): Tracer | undefined;
}
interface OtelApi {
  trace: { getTracer(name: string, version?: string): Tracer; getTracerProvider?(): TracerProvider };
  SpanKind: { PRODUCER: number; CONSUMER: number };
  SpanStatusCode: { OK: number; ERROR: number };
}

let api: OtelApi | null | undefined;

function otel(): OtelApi | null {
  if (api === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      api = require('@opentelemetry/api') as OtelApi;
    } catch {
      api = null;
    }
  }
  return api;
}

function tracer(a: OtelApi): Tracer {
  return a.trace.getTracer(LIBRARY_NAME, VERSION);
}

/** Calls a span's method; a tracer that throws (on an odd error, say) must not fail the push or the job it traces. */
function quietly(call: () => unknown): void {
  try {
    call();
  } catch {
    /* the span misses this detail; the work goes on */
  }
}

/** @internal Runs a push inside a PRODUCER span `publish <queue>`. */
export async function withPushSpan<T>(queue: string, count: number, fn: () => Promise<T>): Promise<T> {
  const a = otel();
  if (!a) return fn();
  return tracer(a).startActiveSpan(`publish ${queue}`, {
    kind: a.SpanKind.PRODUCER,
    attributes: {
      'messaging.system': 'queue',
      'messaging.operation': 'publish',
      'messaging.destination.name': queue,
      'messaging.batch.message_count': count,
    },
  }, async (span) => {
    try {
      const out = await fn();
      quietly(() => span.setStatus({ code: a.SpanStatusCode.OK }));
      return out;
    } catch (err) {
      quietly(() => span.recordException(err as Error));
      quietly(() => span.setStatus({ code: a.SpanStatusCode.ERROR, message: errorMessage(err) }));
      throw err;
    } finally {
      quietly(() => span.end());
    }
  });
}

/**
 * @internal The tracer for a job's span, or null when no span would record
 * anything: the API is not installed, or no tracer provider is registered (the
 * API's global provider is then its own proxy without a delegate, whose
 * tracers are no-ops). Looked up per job, so a provider registered after the
 * worker started is used from its next job on. Without a span there is no
 * span to make and no context to enter, which cost a noticeable part of a
 * short job's CPU in the worker.
 */
export function jobTracer(): Tracer | null {
  const a = otel();
  if (!a) return null;
  const provider = a.trace.getTracerProvider?.();
  if (provider && typeof provider.getDelegateTracer === 'function') {
    return provider.getDelegateTracer(LIBRARY_NAME, VERSION) ?? null;
  }
  return tracer(a);
}

/** What a job span needs to know. @internal */
export interface JobSpanInfo {
  id: string;
  queue: string;
  attempt: number;
  worker: string;
}

/**
 * @internal Runs a handler inside a CONSUMER span `process <queue>` of `jobTracer` ({@link jobTracer}; the
 * handler's own spans become its children). `fn` resolves to whether the job
 * succeeded, and the error if not; it must not reject. Nothing the tracer
 * does changes what this resolves to: a span method that throws is ignored,
 * and a `startActiveSpan` that throws before it calls back runs `fn` without a span.
 */
export async function withJobSpan<T>(jobTracer: Tracer, info: JobSpanInfo, fn: () => Promise<{ ok: boolean; error?: unknown; value: T }>): Promise<T> {
  const a = otel()!;
  let outcome: Promise<{ ok: boolean; error?: unknown; value: T }> | null = null;
  try {
    await startJobSpan(a, jobTracer, info, () => (outcome = fn()));
  } catch {
    /* the tracer failed: the handler's outcome stands, or it runs without a span */
  }
  return (await (outcome ?? fn())).value;
}

function startJobSpan<T>(a: OtelApi, jobTracer: Tracer, info: JobSpanInfo, fn: () => Promise<{ ok: boolean; error?: unknown; value: T }>): Promise<T> {
  return jobTracer.startActiveSpan(`process ${info.queue}`, {
    kind: a.SpanKind.CONSUMER,
    attributes: {
      'messaging.system': 'queue',
      'messaging.operation': 'process',
      'messaging.destination.name': info.queue,
      'messaging.message.id': info.id,
      'queue.attempt': info.attempt,
      'queue.worker': info.worker,
    },
  }, async (span) => {
    try {
      const out = await fn();
      if (out.ok) {
        quietly(() => span.setStatus({ code: a.SpanStatusCode.OK }));
      } else {
        quietly(() => span.recordException(out.error as Error));
        quietly(() => span.setStatus({ code: a.SpanStatusCode.ERROR, message: errorMessage(out.error) }));
      }
      return out.value;
    } finally {
      quietly(() => span.end());
    }
  });
}
