"""Listeners, logging, OpenTelemetry spans, and pooler mode."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import pgqueue
from conftest import job_status, wait_until


def test_listener_sees_started_finished_failed_with_durations(conn, queue_name, start_worker):
    events = []
    lock = threading.Lock()

    class Recorder(pgqueue.WorkerListener):
        def on_started(self, event):
            with lock:
                events.append(event)

        def on_finished(self, event):
            with lock:
                events.append(event)

        def on_failed(self, event):
            with lock:
                events.append(event)

    def handler(job):
        time.sleep(0.2)
        if job.payload["fail"]:
            raise ValueError("nope")
        return {"fine": True}

    ok = pgqueue.push(conn, queue_name, {"fail": False})
    bad = pgqueue.push(conn, queue_name, {"fail": True}, max_attempts=1)
    start_worker({queue_name: handler}, listeners=[Recorder(), BrokenListener()])
    wait_until(lambda: len(events) == 4, what="four events")
    kinds = {(e.job.id, e.kind) for e in events}
    assert kinds == {(ok, "started"), (ok, "finished"), (bad, "started"), (bad, "failed")}
    finished = next(e for e in events if e.kind == "finished")
    failed = next(e for e in events if e.kind == "failed")
    assert finished.status == "completed" and finished.result == {"fine": True}
    assert failed.status == "failed" and isinstance(failed.error, ValueError)
    for e in (finished, failed):
        assert 0.2 <= e.duration < 2
    assert job_status(conn, ok) == "completed"


class BrokenListener(pgqueue.WorkerListener):
    """A listener that raises: the worker must carry on."""

    def on_started(self, event):
        raise RuntimeError("listener bug")


def test_failures_are_logged(conn, queue_name, start_worker, caplog):
    caplog.set_level(logging.INFO, logger="pgqueue")
    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=1)
    start_worker({queue_name: lambda job: 1 / 0})
    wait_until(lambda: job_status(conn, job_id) == "failed", what="failed")
    wait_until(lambda: any("ZeroDivisionError" in r.getMessage() for r in caplog.records), what="log record")
    record = next(r for r in caplog.records if "ZeroDivisionError" in r.getMessage())
    assert record.levelno == logging.WARNING and str(job_id) in record.getMessage()


_EXPORTER = []  # the in-memory exporter of the one tracer provider this process installs


def span_exporter():
    """Install an SDK tracer provider with an in-memory exporter (once per
    process: the global provider is set once) and return the exporter; skip
    when the SDK is missing or another provider was installed first."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not _EXPORTER:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            pytest.skip("another tracer provider was installed first")
        _EXPORTER.append(exporter)
    assert pgqueue.tracing_available()
    return _EXPORTER[0]


def spans_of(exporter, queue, n):
    """The ``n`` finished spans of ``queue``'s jobs, by job id."""
    def of_queue():
        return [s for s in exporter.get_finished_spans() if s.attributes.get("messaging.destination.name") == queue]
    wait_until(lambda: len(of_queue()) == n, what=f"{n} spans")
    return {int(s.attributes["messaging.message.id"]): s for s in of_queue()}


def check_spans(spans, queue, ok, bad, current):
    """One CONSUMER span per job, with its outcome; each handler ran with its
    job's span as the current one (``current``: job id -> span id seen)."""
    from opentelemetry import trace

    assert set(spans) == {ok, bad}
    assert spans[ok].name == f"process {queue}"
    assert spans[ok].kind == trace.SpanKind.CONSUMER
    assert spans[ok].attributes["pgqueue.job.status"] == "completed"
    assert spans[ok].status.status_code == trace.StatusCode.UNSET
    assert spans[bad].attributes["pgqueue.job.status"] == "failed"
    assert spans[bad].status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in spans[bad].events)
    assert current == {job_id: span.context.span_id for job_id, span in spans.items()}


def test_opentelemetry_span_per_job(conn, queue_name, start_worker):
    from opentelemetry import trace

    current = {}

    def handler(job):
        current[job.id] = trace.get_current_span().get_span_context().span_id
        if job.payload["fail"]:
            raise pgqueue.PermanentError("bad")
        return None

    in_listener = {}

    def on_finished(event):  # the job's span is current again for its listeners
        in_listener[event.job.id] = trace.get_current_span().get_span_context().span_id

    # Started before the provider is installed (when this test is the first to
    # install it): the jobs that start afterwards still get their spans.
    start_worker({queue_name: handler}, listeners=[pgqueue.CallbackListener(on_finished=on_finished)])
    exporter = span_exporter()
    ok = pgqueue.push(conn, queue_name, {"fail": False})
    bad = pgqueue.push(conn, queue_name, {"fail": True}, max_attempts=1)
    wait_until(lambda: job_status(conn, ok) == "completed" and job_status(conn, bad) == "failed", what="done")
    spans = spans_of(exporter, queue_name, 2)
    check_spans(spans, queue_name, ok, bad, current)
    assert in_listener == {ok: spans[ok].context.span_id}


def test_opentelemetry_span_per_job_async(conn, queue_name):
    import asyncio

    from opentelemetry import trace

    exporter = span_exporter()
    current = {}
    in_listener = {}

    async def handler(job):
        current[job.id] = trace.get_current_span().get_span_context().span_id
        if job.payload["fail"]:
            raise pgqueue.PermanentError("bad")
        await asyncio.sleep(0.001)
        return None

    def on_finished(event):  # runs in the job's context: its span is still the current one
        in_listener[event.job.id] = trace.get_current_span().get_span_context().span_id

    ok = pgqueue.push(conn, queue_name, {"fail": False})
    bad = pgqueue.push(conn, queue_name, {"fail": True}, max_attempts=1)

    async def main():
        async with pgqueue.AsyncWorker(conn.info.dsn, {queue_name: handler}, poll_interval=0.2,
                                       listeners=[pgqueue.CallbackListener(on_finished=on_finished)]):
            while not (job_status(conn, ok) == "completed" and job_status(conn, bad) == "failed"):
                await asyncio.sleep(0.02)

    asyncio.run(main())
    spans = spans_of(exporter, queue_name, 2)
    check_spans(spans, queue_name, ok, bad, current)
    assert in_listener == {ok: spans[ok].context.span_id}
    # Outside the jobs no span is left current.
    assert not trace.get_current_span().get_span_context().is_valid


def test_pooler_mode_waits_in_the_server_without_listen(conn, queue_name, start_worker):
    # Polling every 30 s: only the wait inside queue_pop can start the job in time.
    w = start_worker({queue_name: lambda job: job.attempt}, pooler=True, poll_interval=30, pooler_wait=5)
    app = f"pgqueue {w.name}"[:63]
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        " AND query LIKE '%%queue_pop%%wait =>%%'", (app,)).fetchone()[0] == 1, what="the worker waits in queue_pop")
    job_id = pgqueue.push(conn, queue_name, {})
    wait_until(lambda: job_status(conn, job_id) == "completed", timeout=3, what="completed by the waiting claim")
    assert not w.listening
    queries = conn.execute("SELECT query FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchall()
    assert queries, "the worker has connections"
    assert not [q for (q,) in queries if q.upper().startswith("LISTEN")]
    # No LISTEN connection at all: the pool and the claim connection are all there is.
    assert len(queries) <= w._pool._size + 1
