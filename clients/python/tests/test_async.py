"""The asyncio worker against a real cluster."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import statistics
import time

import psycopg

import pgqueue
from conftest import DSN, POISON_ERRORS, POISON_KINDS, job_info, job_status, poison, wait_until


async def status_of(aconn, job_id):
    cur = await aconn.execute("SELECT queue_job(%s)", (job_id,))
    info = (await cur.fetchone())[0]
    return None if info is None else info["status"]


async def until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not reached within {timeout}s")


async def completed(aconn, job_id, timeout=10.0):
    async def check():
        return await status_of(aconn, job_id) == "completed"
    await until(check, timeout, f"job {job_id} completed")


def test_async_basic_flow_and_wakeup(queue_name, capsys):
    started = {}

    async def handler(job: pgqueue.AsyncJob):
        started[job.id] = time.monotonic()
        assert await job.progress(1, 2, "half")
        await asyncio.sleep(0.01)
        return {"n": job.payload["n"] + 1}

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=4,
                                           poll_interval=30, heartbeat_interval=60) as w:
                async def listening():
                    return w.listening
                await until(listening, what="listening")
                ids = await pgqueue.apush_batch(aconn, queue_name, [{"n": i} for i in range(5)])
                for job_id in ids:
                    await completed(aconn, job_id)
                latencies = []
                for i in range(5):
                    await asyncio.sleep(0.3)
                    job_id = await pgqueue.apush(aconn, queue_name, {"n": 100 + i})
                    pushed = time.monotonic()
                    await completed(aconn, job_id, timeout=5)
                    latencies.append((started[job_id] - pushed) * 1000)
                    ids.append(job_id)
            assert w.running_jobs == 0
            results = []
            for job_id in ids:
                cur = await aconn.execute("SELECT queue_job(%s)", (job_id,))
                results.append((await cur.fetchone())[0]["result"]["n"])
            return results, latencies

    results, latencies = asyncio.run(main())
    assert results == [1, 2, 3, 4, 5, 101, 102, 103, 104, 105]
    with capsys.disabled():
        print(f"\n[wake-up latency, AsyncWorker] push commit -> handler start over {len(latencies)} jobs: "
              f"min {min(latencies):.1f} ms, median {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")
    assert statistics.median(latencies) < 500


def test_async_errors_retry_and_dead_letter(queue_name):
    async def handler(job):
        if job.payload["kind"] == "permanent":
            raise pgqueue.PermanentError("bad payload")
        if job.attempt == 1:
            raise KeyError("missing")
        return "ok"

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            flaky = await pgqueue.apush(aconn, queue_name, {"kind": "flaky"}, retry_delays=[0])
            bad = await pgqueue.apush(aconn, queue_name, {"kind": "permanent"}, max_attempts=5)
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, poll_interval=0.5):
                await completed(aconn, flaky)

                async def dead():
                    return await status_of(aconn, bad) == "failed"
                await until(dead, what="dead letter")
            return flaky, bad

    flaky, bad = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as conn:
        info = job_info(conn, flaky)
        assert info["attempts"] == 2 and info["last_error"].startswith("KeyError: 'missing'")
        dead = conn.execute("SELECT id, attempts, last_error FROM queue_dead(%s)", (queue_name,)).fetchall()
        assert dead == [(bad, 1, "PermanentError: bad payload")]


def test_async_concurrency_and_long_lease(queue_name):
    now = peak = 0

    async def handler(job):
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await asyncio.sleep(job.payload["sleep"])
        finally:
            now -= 1
        return job.attempt

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            long_id = await pgqueue.apush(aconn, queue_name, {"sleep": 4.5}, timeout=dt.timedelta(seconds=2),
                                          retry_delays=[0])
            ids = await pgqueue.apush_batch(aconn, queue_name, [{"sleep": 0.2}] * 12)
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=3, poll_interval=0.5):
                for job_id in [*ids, long_id]:
                    await completed(aconn, job_id, timeout=20)
            return long_id

    long_id = asyncio.run(main())
    assert peak == 3
    with psycopg.connect(DSN, autocommit=True) as conn:
        info = job_info(conn, long_id)
        assert (info["attempts"], info["result"]) == (1, 1)


def test_async_stop_gives_back_after_grace(queue_name, start_worker):
    cancelled = []

    async def handler(job):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            job_id = await pgqueue.apush(aconn, queue_name, {}, max_attempts=5)
            w = pgqueue.AsyncWorker(DSN, {queue_name: handler}, grace=0.5, poll_interval=0.2)
            task = asyncio.create_task(w.run(install_signal_handlers=False))

            async def running():
                return w.running_jobs == 1
            await until(running, what="job running")
            t0 = time.monotonic()
            w.stop()
            await asyncio.wait_for(task, 10)
            return job_id, time.monotonic() - t0

    job_id, took = asyncio.run(main())
    assert took < 4
    assert cancelled == [job_id]
    with psycopg.connect(DSN, autocommit=True) as conn:
        info = job_info(conn, job_id)
        assert (info["status"], info["lease_until"]) == ("pending", None)  # not lost, claimable at once
        # Not burned: max_attempts grew by one with the claim counter.
        assert (info["attempts"], info["max_attempts"]) == (1, 6)
        seen = []
        start_worker({queue_name: lambda job: seen.append((job.attempt, job.max_attempts))})
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=5, what="completed by the next worker")
        assert seen == [(2, 6)]


def test_async_payload_is_decoded_when_first_read(queue_name):
    """As for the threaded worker (test_worker.py): the payload is decoded on
    its first read, once."""
    seen = {}

    async def handler(job):
        seen[job.id] = (job.payload, job.payload is job.payload)

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            job_id = await pgqueue.apush(aconn, queue_name, {"n": [1, 2], "s": "é"})
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, grace=5):
                await completed(aconn, job_id)
            return job_id

    job_id = asyncio.run(main())
    assert seen == {job_id: ({"n": [1, 2], "s": "é"}, True)}


def test_async_handlers_that_return_at_once_await_or_raise_first_thing(queue_name):
    """Handlers that return without suspending, that await, that raise before
    their first await and that raise after it: each outcome lands, with its
    event (duration, status), at a concurrency below the number of jobs."""
    events = []

    async def handler(job):
        kind = job.payload["kind"]
        if kind == "sync-raise" and job.attempt == 1:
            raise KeyError("before any await")
        if kind in ("await", "await-raise"):
            await asyncio.sleep(0.005)
            if kind == "await-raise" and job.attempt == 1:
                raise ValueError("after an await")
        return {"kind": kind, "attempt": job.attempt}

    kinds = ["sync", "await", "sync-raise", "await-raise"] * 10
    listener = pgqueue.CallbackListener(on_started=events.append, on_finished=events.append,
                                        on_failed=events.append)

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            ids = await pgqueue.apush_batch(aconn, queue_name, [{"kind": k} for k in kinds], retry_delays=[0])
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=8, poll_interval=0.2,
                                           listeners=[listener]) as w:
                for job_id in ids:
                    await completed(aconn, job_id)
            assert w.running_jobs == 0
            return ids

    ids = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as conn:
        for job_id, kind in zip(ids, kinds):
            info = job_info(conn, job_id)
            retried = kind.endswith("raise")
            assert info["attempts"] == (2 if retried else 1), (kind, info)
            assert info["result"] == {"kind": kind, "attempt": info["attempts"]}
            if retried:
                error = "KeyError: 'before any await'" if kind == "sync-raise" else "ValueError: after an await"
                assert info["last_error"].startswith(error)
    by_kind = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    assert len(by_kind["started"]) == len(kinds) + 20
    assert sorted(e.job.id for e in by_kind["finished"]) == sorted(ids)
    assert all(e.status == "completed" and e.duration >= 0 for e in by_kind["finished"])
    assert len(by_kind["failed"]) == 20
    assert {e.job.id for e in by_kind["failed"]} == {i for i, k in zip(ids, kinds) if k.endswith("raise")}
    assert all(e.status in ("retrying", "pending") and e.duration >= 0 for e in by_kind["failed"])
    assert all(e.duration >= 0.004 for e in by_kind["finished"] if e.result["kind"].startswith("await"))


def test_async_each_handler_runs_in_a_task_and_a_context_of_its_own(queue_name):
    """A handler sees the context of the code that ran the worker, its changes
    stay in its own context (which its finished event is emitted in), it is
    the current task of its own (``asyncio.timeout`` works before its first
    await), and no two jobs share a task."""
    var = contextvars.ContextVar("var", default="unset")
    seen = {}
    tasks = {}
    listened = {}

    async def handler(job):
        seen[job.id] = var.get()
        var.set(f"job {job.id}")
        tasks[job.id] = asyncio.current_task()
        async with asyncio.timeout(5):  # needs the handler's own current task
            if job.payload["await"]:
                await asyncio.sleep(0.002)
        return None

    def on_finished(event):
        listened[event.job.id] = var.get()

    async def main():
        var.set("the worker's caller")
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            ids = await pgqueue.apush_batch(aconn, queue_name, [{"await": n % 2 == 0} for n in range(30)])
            w = pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=5, poll_interval=0.2,
                                    listeners=[pgqueue.CallbackListener(on_finished=on_finished)])
            run = asyncio.create_task(w.run(install_signal_handlers=False))
            for job_id in ids:
                await completed(aconn, job_id)
            await until(lambda: _true_when(len(listened) == len(ids)), what="every finished event")
            w.stop()
            await asyncio.wait_for(run, 15)
            return ids, run, var.get()

    ids, run, after = asyncio.run(main())
    assert after == "the worker's caller"
    assert seen == {job_id: "the worker's caller" for job_id in ids}
    assert listened == {job_id: f"job {job_id}" for job_id in ids}
    assert len({id(t) for t in tasks.values()}) == len(ids)
    assert all(t is not None and t is not run for t in tasks.values())


async def _true_when(value):
    return value


def test_async_a_handler_that_swallows_the_cancel_at_stop_is_still_given_back(queue_name):
    """Past the grace the handler is cancelled and its job given back; a handler
    that catches the cancel and returns changes nothing: no finished event,
    the job is pending again, its attempt not counted."""
    events = []

    async def handler(job):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "swallowed"

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            job_id = await pgqueue.apush(aconn, queue_name, {}, max_attempts=3)
            w = pgqueue.AsyncWorker(DSN, {queue_name: handler}, grace=0.3, poll_interval=0.2,
                                    listeners=[pgqueue.CallbackListener(on_finished=events.append,
                                                                        on_released=events.append)])
            run = asyncio.create_task(w.run(install_signal_handlers=False))
            await until(lambda: _true_when(w.running_jobs == 1), what="job running")
            w.stop()
            await asyncio.wait_for(run, 10)
            return job_id

    job_id = asyncio.run(main())
    assert [(e.kind, e.job.id, e.status) for e in events] == [("released", job_id, "released")]
    with psycopg.connect(DSN, autocommit=True) as conn:
        info = job_info(conn, job_id)
        assert (info["status"], info["attempts"], info["max_attempts"]) == ("pending", 1, 4)


def test_async_a_stop_amid_a_drain_leaves_no_job_half_done(queue_name):
    """A stop while a drain of no-op handlers is in full swing: every job that
    started was acked before the worker returned (its finished event says
    completed), and the others are still pending; none is left processing."""
    started, finished = [], []

    async def handler(job):
        return None

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            ids = await pgqueue.apush_batch(aconn, queue_name, [{} for _ in range(3000)])
            w = pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=20, grace=5, poll_interval=0.2,
                                    listeners=[pgqueue.CallbackListener(on_started=started.append,
                                                                        on_finished=finished.append)])
            run = asyncio.create_task(w.run(install_signal_handlers=False))
            await until(lambda: _true_when(len(finished) >= 200), what="the drain under way")
            w.stop()
            await asyncio.wait_for(run, 15)
            return ids

    ids = asyncio.run(main())
    assert len(finished) < len(ids), "the drain ended before the stop"
    assert sorted(e.job.id for e in finished) == sorted(e.job.id for e in started)
    assert all(e.status == "completed" for e in finished)
    with psycopg.connect(DSN, autocommit=True) as conn:
        counts = dict(conn.execute("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1",
                                   (queue_name,)).fetchall())
    assert counts == {"completed": len(finished), "pending": len(ids) - len(finished)}


def test_async_created_at_is_decoded_when_first_read(queue_name):
    """As for the threaded worker (test_worker.py): the creation time is the
    server's, decoded once when first read."""
    seen = {}

    async def handler(job):
        seen[job.id] = (job.created_at, job.created_at is job.created_at)

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            job_id = await pgqueue.apush(aconn, queue_name, {})
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, grace=5):
                await completed(aconn, job_id)
            cur = await aconn.execute("SELECT created_at FROM queue.all_jobs WHERE id = %s", (job_id,))
            return job_id, (await cur.fetchone())[0]

    job_id, server = asyncio.run(main())
    created, same = seen[job_id]
    assert same and created == server and created.tzinfo is not None


def test_async_a_handler_that_exits_or_whose_error_cannot_be_stored_fails_only_its_job(queue_name):
    """As for the threaded worker: a handler's SystemExit, an error text with
    a NUL and a retry delay the server refuses each fail their own job, and
    the worker (its event loop) goes on. Before, the SystemExit ended the
    loop, and with it every job in flight."""
    async def handler(job):
        return poison(job)

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            ids = {kind: await pgqueue.apush(aconn, queue_name, {"kind": kind}, max_attempts=1,
                                             timeout=dt.timedelta(hours=1))
                   for kind in POISON_KINDS}
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=1, poll_interval=0.5):
                await completed(aconn, ids["fine"])
                for kind, _ in POISON_ERRORS:
                    async def dead(kind=kind):
                        return await status_of(aconn, ids[kind]) == "failed"
                    await until(dead, timeout=5, what=f"{kind} failed")
            return ids

    ids = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as conn:
        for kind, text in POISON_ERRORS:
            assert job_info(conn, ids[kind])["last_error"].startswith(text), job_info(conn, ids[kind])["last_error"]


def test_async_a_handler_that_raises_cancelled_error_itself_fails_its_job(queue_name):
    """A handler that awaited a task someone else cancelled raises
    CancelledError though its own task was never cancelled: its job fails
    at once with that error, instead of being dropped by the worker and left
    to wait out its lease; the worker goes on."""
    async def handler(job):
        if job.payload.get("cancelled"):
            other = asyncio.ensure_future(asyncio.sleep(60))
            other.cancel()
            await other  # raises CancelledError into this handler
        return "ok"

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            bad = await pgqueue.apush(aconn, queue_name, {"cancelled": True}, max_attempts=1,
                                      timeout=dt.timedelta(hours=1))
            good = await pgqueue.apush(aconn, queue_name, {}, max_attempts=1)
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=1, poll_interval=0.5):
                await completed(aconn, good)

                async def dead():
                    return await status_of(aconn, bad) == "failed"
                await until(dead, timeout=5, what="the cancelled handler's job failed")
            return bad

    bad = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as conn:
        assert job_info(conn, bad)["last_error"].startswith("CancelledError"), job_info(conn, bad)["last_error"]
