/*
 * OpenTelemetry spans, when `@opentelemetry/api` is installed (an optional peer
 * dependency). Without it, or without a registered tracer provider, every
 * helper just runs its function.
 */
import { LIBRARY_NAME, VERSION } from './version';

/* A minimal view of @opentelemetry/api, so that the package compiles and runs without it. */
interface Span {
  setAttribute(key: string, value: string | number | boolean): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  recordException(exception: unknown): unknown;
  end(): void;
}
interface Tracer {
  startActiveSpan<T>(name: string, options: { kind?: number; attributes?: Record<string, string | number | boolean> }, fn: (span: Span) => T): T;
}
interface OtelApi {
  trace: { getTracer(name: string, version?: string): Tracer };
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
      span.setStatus({ code: a.SpanStatusCode.OK });
      return out;
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: a.SpanStatusCode.ERROR, message: String((err as Error)?.message ?? err) });
      throw err;
    } finally {
      span.end();
    }
  });
}

/** What a job span needs to know. @internal */
export interface JobSpanInfo {
  id: string;
  queue: string;
  attempt: number;
  worker: string;
}

/**
 * @internal Runs a handler inside a CONSUMER span `process <queue>` (the
 * handler's own spans become its children). `fn` resolves to whether the job
 * succeeded, and the error if not.
 */
export async function withJobSpan<T>(info: JobSpanInfo, fn: () => Promise<{ ok: boolean; error?: unknown; value: T }>): Promise<T> {
  const a = otel();
  if (!a) return (await fn()).value;
  return tracer(a).startActiveSpan(`process ${info.queue}`, {
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
        span.setStatus({ code: a.SpanStatusCode.OK });
      } else {
        span.recordException(out.error as Error);
        span.setStatus({ code: a.SpanStatusCode.ERROR, message: String((out.error as Error)?.message ?? out.error) });
      }
      return out.value;
    } finally {
      span.end();
    }
  });
}
