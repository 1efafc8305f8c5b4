"""``max_runtime``: a handler that runs too long fails its attempt (retryable)
instead of holding its job and its slot forever; both workers, a real cluster."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any, Dict, List

import pytest

import pgqueue
from conftest import DSN, job_info, job_status, wait_until
from test_hooks import span_exporter, spans_of

# The limit of most tests, and the error text every client records for it.
LIMIT = 0.5
TEXT = "max_runtime exceeded: the handler ran longer than 500ms"
# How late past the limit the failure may land (the box is shared with other suites).
MARGIN = 1.5


class Events:
    """The events of a worker's jobs, by kind (thread-safe enough: list appends)."""

    def __init__(self) -> None:
        self.failed: List[pgqueue.JobEvent] = []
        self.finished: List[pgqueue.JobEvent] = []
        self.released: List[pgqueue.JobEvent] = []
        self.listener = pgqueue.CallbackListener(on_failed=self.failed.append, on_finished=self.finished.append,
                                                 on_released=self.released.append)

    def of(self, kind: str, job_id: int) -> List[pgqueue.JobEvent]:
        return [e for e in getattr(self, kind) if e.job.id == job_id]


def check_expired(e: pgqueue.JobEvent, status: str, limit: float = LIMIT) -> None:
    """A failed event of a max_runtime failure."""
    assert isinstance(e.error, pgqueue.MaxRuntimeExceeded), repr(e.error)
    assert e.error.max_runtime == limit
    assert e.status == status
    assert limit <= e.duration < limit + MARGIN


def run_async(main: Any) -> Any:
    return asyncio.run(main())


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll a synchronous ``predicate`` (a quick query) from the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not reached within {timeout}s")


# ------------------------------------------------------------------ threaded


def test_a_handler_past_its_max_runtime_is_failed_at_once_and_retried(conn, queue_name, start_worker):
    """(a) The first attempt sleeps well past the limit, ignoring it: it is
    failed within the limit and a margin, with the text and attempt 1, and
    retried; the second attempt (another slot) completes the job while the
    first one's thread still sleeps: that thread keeps its slot, and what it
    returns at last is dropped."""
    started: Dict[int, float] = {}
    returned = threading.Event()
    events = Events()

    def handler(job):
        if job.attempt >= 2:
            return {"attempt": job.attempt}
        started[job.attempt] = time.monotonic()
        time.sleep(4)  # not interruptible, and it never looks at lease_lost
        returned.set()
        return {"late": True}

    job_id = pgqueue.push(conn, queue_name, {}, retry_delays=[1], max_attempts=3)
    w = start_worker({queue_name: handler}, concurrency=2, max_runtime=LIMIT, listeners=[events.listener],
                     poll_interval=0.2)
    wait_until(lambda: job_status(conn, job_id) == "retrying", timeout=LIMIT + MARGIN + 1, what="failed")
    took = time.monotonic() - started[1]
    assert LIMIT <= took < LIMIT + MARGIN, f"failed {took:.2f}s after the handler started"
    info = job_info(conn, job_id)
    assert (info["attempts"], info["last_error"], info["result"]) == (1, TEXT, None)
    [failed] = events.of("failed", job_id)
    check_expired(failed, "retrying")
    assert failed.job.attempt == 1 and failed.job.lease_lost

    wait_until(lambda: job_status(conn, job_id) == "completed", timeout=10, what="completed by attempt 2")
    assert not returned.is_set(), "attempt 1 was not meant to have returned yet"
    info = job_info(conn, job_id)
    assert (info["attempts"], info["result"]) == (2, {"attempt": 2})
    # Attempt 1's thread still runs: its slot is taken (the retry, same job id, took the other one).
    wait_until(lambda: w.running_jobs == 1, what="only the sleeping attempt 1 holds a slot")
    assert returned.wait(10)
    wait_until(lambda: w.running_jobs == 0, what="attempt 1's slot freed once it returned")
    time.sleep(0.3)
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["result"]) == ("completed", 2, {"attempt": 2})
    assert [e.job.attempt for e in events.of("failed", job_id)] == [1]
    assert [(e.job.attempt, e.status) for e in events.of("finished", job_id)] == [(2, "completed")]


def test_a_job_that_always_hangs_ends_in_the_dead_letters(conn, queue_name, start_worker):
    """(b) Every attempt hangs: max_attempts failures later it is a dead letter."""
    release = threading.Event()
    attempts: List[int] = []

    def handler(job):
        attempts.append(job.attempt)
        release.wait(30)

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=2, retry_delays=[0])
    try:
        start_worker({queue_name: handler}, concurrency=2, max_runtime=0.3, poll_interval=0.2)
        wait_until(lambda: job_status(conn, job_id) == "failed", timeout=10, what="dead letter")
        dead = conn.execute("SELECT id, attempts, last_error FROM queue_dead(%s)", (queue_name,)).fetchall()
        assert dead == [(job_id, 2, "max_runtime exceeded: the handler ran longer than 300ms")]
        assert attempts == [1, 2]
    finally:
        release.set()


def test_a_cooperative_handler_sees_lease_lost_and_its_result_is_dropped(conn, queue_name, start_worker):
    """(c) Threads cannot be interrupted: ``lease_lost`` turns true at the limit,
    which a handler can check; it returns, and that result is not recorded."""
    seen: Dict[str, float] = {}
    events = Events()

    def handler(job):
        start = time.monotonic()
        while not job.lease_lost:
            time.sleep(0.01)
            if time.monotonic() - start > 10:
                return {"never": "stopped"}
        seen["after"] = time.monotonic() - start
        seen["progress"] = job.progress(1, 2)  # refused: the claim is failed
        return {"stopped": True}

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=1)
    w = start_worker({queue_name: handler}, max_runtime=dt.timedelta(milliseconds=500),
                     listeners=[events.listener], poll_interval=0.2)
    wait_until(lambda: job_status(conn, job_id) == "failed", timeout=5, what="failed")
    wait_until(lambda: w.running_jobs == 0, what="the handler returned")
    assert LIMIT <= seen["after"] < LIMIT + MARGIN
    assert seen["progress"] is False
    info = job_info(conn, job_id)
    assert (info["attempts"], info["last_error"], info["result"]) == (1, TEXT, None)
    [failed] = events.of("failed", job_id)
    check_expired(failed, "failed")
    assert events.of("finished", job_id) == []


def test_with_concurrency_1_a_handler_past_its_max_runtime_keeps_its_slot_until_it_returns(conn, queue_name,
                                                                                           start_worker):
    """(d) The job is failed at the limit, but its thread is still busy: no
    second job starts (the concurrency limit holds) until it returns."""
    times: Dict[str, float] = {}

    def handler(job):
        if job.payload["n"] == 0:
            times["a_start"] = time.monotonic()
            time.sleep(2.5)
            times["a_end"] = time.monotonic()
            return None
        times["b_start"] = time.monotonic()
        return {"b": True}

    a = pgqueue.push(conn, queue_name, {"n": 0}, max_attempts=1)
    b = pgqueue.push(conn, queue_name, {"n": 1})
    w = start_worker({queue_name: handler}, concurrency=1, max_runtime=LIMIT, poll_interval=0.1)
    wait_until(lambda: job_status(conn, a) == "failed", timeout=5, what="a failed")
    failed_at = time.monotonic()
    assert "a_end" not in times and failed_at - times["a_start"] < LIMIT + MARGIN
    assert job_info(conn, a)["last_error"] == TEXT
    assert w.running_jobs == 1
    time.sleep(0.5)
    assert "b_start" not in times and job_status(conn, b) == "pending", "b started while a's thread ran"
    wait_until(lambda: job_status(conn, b) == "completed", timeout=10, what="b completed")
    assert times["b_start"] >= times["a_end"]


def test_a_handlers_max_runtime_overrides_the_workers(conn, queue_name, start_worker):
    """(e) The worker's default applies to a plain handler; a Handler's own
    wins, longer or shorter."""
    def sleepy(job):
        time.sleep(1.2)
        return {"done": job.queue}

    q_default, q_longer, q_shorter = (f"{queue_name}-{s}" for s in ("default", "longer", "shorter"))
    ids = {q: pgqueue.push(conn, q, {}, max_attempts=1) for q in (q_default, q_longer, q_shorter)}
    start_worker({q_default: sleepy, q_longer: pgqueue.Handler(sleepy, max_runtime=5),
                  q_shorter: pgqueue.Handler(sleepy, max_runtime=dt.timedelta(milliseconds=300))},
                 concurrency=3, max_runtime=0.6, poll_interval=0.2)
    for job_id in ids.values():
        wait_until(lambda: job_status(conn, job_id) in ("completed", "failed"), timeout=10, what="final")
    assert job_info(conn, ids[q_default])["last_error"] == "max_runtime exceeded: the handler ran longer than 600ms"
    assert job_info(conn, ids[q_shorter])["last_error"] == "max_runtime exceeded: the handler ran longer than 300ms"
    info = job_info(conn, ids[q_longer])
    assert (info["status"], info["result"]) == ("completed", {"done": q_longer})


def test_a_graceful_stop_lets_a_handler_within_its_max_runtime_finish(conn, queue_name, start_worker):
    def handler(job):
        time.sleep(1.0)
        return {"ok": True}

    job_id = pgqueue.push(conn, queue_name, {})
    w = start_worker({queue_name: handler}, max_runtime=5, grace=5)
    wait_until(lambda: job_status(conn, job_id) == "processing", what="running")
    w.stop()
    assert w.wait(10)
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["result"]) == ("completed", 1, {"ok": True})


def test_a_max_runtime_failure_ends_the_jobs_span_once_with_the_error(conn, queue_name, start_worker, caplog):
    from opentelemetry import trace

    exporter = span_exporter()
    in_listener: Dict[int, int] = {}
    release = threading.Event()

    def on_failed(event):  # the job's span is current for its listeners, as for any failure
        in_listener[event.job.id] = trace.get_current_span().get_span_context().span_id

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=1)
    try:
        start_worker({queue_name: lambda job: release.wait(10)}, max_runtime=0.3,
                     listeners=[pgqueue.CallbackListener(on_failed=on_failed)])
        wait_until(lambda: job_status(conn, job_id) == "failed", timeout=5, what="failed")
        span = spans_of(exporter, queue_name, 1)[job_id]
    finally:
        release.set()
    assert span.attributes["pgqueue.job.status"] == "failed"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "max_runtime exceeded" in span.status.description
    wait_until(lambda: in_listener, what="the failed event")
    assert in_listener == {job_id: span.context.span_id}
    time.sleep(0.3)  # the handler returned: its end touches the span no more
    assert len(spans_of(exporter, queue_name, 1)) == 1
    assert not [r for r in caplog.records if "ended span" in r.getMessage()]


def test_max_runtime_is_checked():
    async def coro(job):
        return None

    for bad in (0, -1, float("inf"), float("nan"), dt.timedelta(0), dt.timedelta(seconds=-1)):
        with pytest.raises(ValueError, match="max_runtime must be a positive, finite span"):
            pgqueue.Worker(DSN, {"q": lambda j: None}, max_runtime=bad)
        with pytest.raises(ValueError, match="max_runtime must be a positive, finite span"):
            pgqueue.AsyncWorker(DSN, {"q": coro}, max_runtime=bad)
        with pytest.raises(ValueError, match="max_runtime must be a positive, finite span"):
            pgqueue.Handler(coro, max_runtime=bad)
    for bad in ("5", True, [1]):
        with pytest.raises(TypeError, match="max_runtime must be a number of seconds or a timedelta"):
            pgqueue.Worker(DSN, {"q": lambda j: None}, max_runtime=bad)
        with pytest.raises(TypeError, match="max_runtime must be a number of seconds or a timedelta"):
            pgqueue.Handler(coro, max_runtime=bad)
    with pytest.raises(TypeError, match="callable"):
        pgqueue.Handler("not a function")
    with pytest.raises(TypeError, match="AsyncWorker"):
        pgqueue.Worker(DSN, {"q": pgqueue.Handler(coro)})
    with pytest.raises(TypeError, match="async"):
        pgqueue.AsyncWorker(DSN, {"q": pgqueue.Handler(lambda j: None)})
    assert pgqueue.Worker(DSN, {"q": lambda j: None}).max_runtime is None
    assert pgqueue.Worker(DSN, {"q": lambda j: None}, max_runtime=dt.timedelta(minutes=2)).max_runtime == 120.0
    assert pgqueue.Handler(coro, max_runtime=1.5).max_runtime == 1.5
    assert [str(pgqueue.MaxRuntimeExceeded(s)) for s in (2, 1.5, 0.5, 90)] == [
        f"max_runtime exceeded: the handler ran longer than {n}" for n in ("2s", "1.5s", "500ms", "90s")]


# ------------------------------------------------------------------ asyncio


def test_async_a_handler_past_its_max_runtime_is_cancelled_failed_and_retried(conn, queue_name):
    """(a) and (c): the handler's task is cancelled at the limit (the handler
    sees CancelledError), the job is failed at once with the text and
    attempt 1, its slot frees at once, and attempt 2 completes it."""
    seen: Dict[str, float] = {}
    events = Events()

    async def handler(job):
        if job.attempt >= 2:
            return {"attempt": job.attempt}
        start = time.monotonic()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["cancelled_after"] = time.monotonic() - start
            seen["lease_lost"] = job.lease_lost
            raise
        return {"late": True}

    job_id = pgqueue.push(conn, queue_name, {}, retry_delays=[1], max_attempts=3)

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=2, max_runtime=LIMIT,
                                       poll_interval=0.2, grace=5, listeners=[events.listener]) as w:
            t0 = time.monotonic()
            await until(lambda: job_status(conn, job_id) == "retrying", timeout=5, what="failed")
            assert time.monotonic() - t0 < LIMIT + MARGIN + 0.5
            assert w.running_jobs == 0, "a task that let the cancel through frees its slot at once"
            info = job_info(conn, job_id)
            assert (info["attempts"], info["last_error"], info["result"]) == (1, TEXT, None)
            await until(lambda: job_status(conn, job_id) == "completed", timeout=10, what="completed")

    run_async(main)
    assert LIMIT <= seen["cancelled_after"] < LIMIT + MARGIN
    assert seen["lease_lost"] is True
    info = job_info(conn, job_id)
    assert (info["attempts"], info["result"]) == (2, {"attempt": 2})
    [failed] = events.of("failed", job_id)
    check_expired(failed, "retrying")
    assert [(e.job.attempt, e.status) for e in events.of("finished", job_id)] == [(2, "completed")]
    assert events.released == []


def test_async_a_job_that_always_hangs_ends_in_the_dead_letters(conn, queue_name):
    """(b)"""
    async def handler(job):
        await asyncio.sleep(30)

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=2, retry_delays=[0])

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, max_runtime=0.3, poll_interval=0.2, grace=5):
            await until(lambda: job_status(conn, job_id) == "failed", timeout=10, what="dead letter")

    run_async(main)
    dead = conn.execute("SELECT id, attempts, last_error FROM queue_dead(%s)", (queue_name,)).fetchall()
    assert dead == [(job_id, 2, "max_runtime exceeded: the handler ran longer than 300ms")]


def test_async_a_handler_that_swallows_the_cancel_keeps_its_slot_until_it_returns(conn, queue_name):
    """(d) for asyncio: a handler that catches the CancelledError and goes on
    is failed at the limit all the same, but with concurrency 1 the next job
    starts only once it returned; what it returned is dropped."""
    times: Dict[str, float] = {}

    async def handler(job):
        if job.payload["n"] == 1:
            times["b_start"] = time.monotonic()
            return {"b": True}
        times["a_start"] = time.monotonic()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            times["a_cancelled"] = time.monotonic()
        await asyncio.sleep(1.5)  # goes on regardless
        times["a_end"] = time.monotonic()
        return {"late": True}

    a = pgqueue.push(conn, queue_name, {"n": 0}, max_attempts=1)
    b = pgqueue.push(conn, queue_name, {"n": 1})

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=1, max_runtime=LIMIT,
                                       poll_interval=0.1, grace=5) as w:
            await until(lambda: job_status(conn, a) == "failed", timeout=5, what="a failed")
            assert "a_end" not in times
            assert w.running_jobs == 1
            await asyncio.sleep(0.5)
            assert "b_start" not in times and job_status(conn, b) == "pending", "b started while a ran"
            await until(lambda: job_status(conn, b) == "completed", timeout=10, what="b completed")

    run_async(main)
    assert times["a_cancelled"] - times["a_start"] < LIMIT + MARGIN
    assert times["b_start"] >= times["a_end"]
    info = job_info(conn, a)
    assert (info["status"], info["last_error"], info["result"]) == ("failed", TEXT, None)


def test_async_a_handlers_max_runtime_overrides_the_workers(conn, queue_name):
    """(e)"""
    async def sleepy(job):
        await asyncio.sleep(1.2)
        return {"done": job.queue}

    q_default, q_longer, q_shorter = (f"{queue_name}-{s}" for s in ("default", "longer", "shorter"))
    ids = {q: pgqueue.push(conn, q, {}, max_attempts=1) for q in (q_default, q_longer, q_shorter)}

    async def main() -> None:
        handlers = {q_default: sleepy, q_longer: pgqueue.Handler(sleepy, max_runtime=5),
                    q_shorter: pgqueue.Handler(sleepy, max_runtime=0.3)}
        async with pgqueue.AsyncWorker(DSN, handlers, concurrency=3, max_runtime=0.6, poll_interval=0.2, grace=5):
            for job_id in ids.values():
                await until(lambda: job_status(conn, job_id) in ("completed", "failed"), timeout=10, what="final")

    run_async(main)
    assert job_info(conn, ids[q_default])["last_error"] == "max_runtime exceeded: the handler ran longer than 600ms"
    assert job_info(conn, ids[q_shorter])["last_error"] == "max_runtime exceeded: the handler ran longer than 300ms"
    info = job_info(conn, ids[q_longer])
    assert (info["status"], info["result"]) == ("completed", {"done": q_longer})


def test_async_a_graceful_stop_lets_a_handler_within_its_max_runtime_finish(conn, queue_name):
    async def handler(job):
        await asyncio.sleep(1.0)
        return {"ok": True}

    job_id = pgqueue.push(conn, queue_name, {})

    async def main() -> None:
        w = pgqueue.AsyncWorker(DSN, {queue_name: handler}, max_runtime=5, grace=5, poll_interval=0.2)
        task = asyncio.create_task(w.run(install_signal_handlers=False))
        await until(lambda: w.running_jobs == 1, what="running")
        w.stop()
        await asyncio.wait_for(task, 10)

    run_async(main)
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["result"]) == ("completed", 1, {"ok": True})


def test_async_a_max_runtime_failure_ends_the_jobs_span_once_with_the_error(conn, queue_name, caplog):
    from opentelemetry import trace

    exporter = span_exporter()
    in_listener: Dict[int, int] = {}

    async def handler(job):  # swallows the cancel and returns late: the span is the expiry's all the same
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.3)
        return "late"

    def on_failed(event):
        in_listener[event.job.id] = trace.get_current_span().get_span_context().span_id

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=1)

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, max_runtime=0.3, poll_interval=0.2, grace=5,
                                       listeners=[pgqueue.CallbackListener(on_failed=on_failed)]) as w:
            await until(lambda: job_status(conn, job_id) == "failed", timeout=5, what="failed")
            await until(lambda: in_listener, what="the failed event")
            await until(lambda: w.running_jobs == 0, what="the handler returned")

    run_async(main)
    span = spans_of(exporter, queue_name, 1)[job_id]
    assert span.attributes["pgqueue.job.status"] == "failed"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert in_listener == {job_id: span.context.span_id}
    assert not trace.get_current_span().get_span_context().is_valid
    assert not [r for r in caplog.records if "ended span" in r.getMessage() or "detach" in r.getMessage()
                or "internal error" in r.getMessage()]
    assert job_info(conn, job_id)["result"] is None
