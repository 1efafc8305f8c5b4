"""Batched acks: the acks of finished jobs go many per ``queue_ack_batch`` call
(one statement, one commit), a stale claim inside a batch is refused alone, a
result the server refuses fails only its own job, and an extension without
``queue_ack_batch`` is acked one job per call.

run-tests.sh starts the cluster with ``track_functions = 'all'``, so
``pg_stat_user_functions`` counts the calls of ``queue_ack_batch``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import threading
import time
from typing import Any, Dict, List, Optional

import psycopg
import pytest
from psycopg import sql

from psycopg.adapt import PyFormat
from psycopg.types.json import Jsonb

import pgqueue
from pgqueue import _common as c
from conftest import DSN, dsn_params, job_info, job_status, wait_until

JOBS = 300


def calls_of(conn: psycopg.Connection, function: str) -> int:
    """The calls of ``function`` counted so far, cluster-wide, in a fresh snapshot."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = %s",
                        (function,)).fetchone()[0]


def settled_calls(conn: psycopg.Connection, function: str, before: int) -> int:
    """The calls once the counter moved past ``before`` and stopped moving:
    backends flush their counters when idle (at most about once a second) or
    when they exit, so the count lags a little."""
    deadline = time.monotonic() + 6
    last = calls_of(conn, function)
    while True:
        time.sleep(0.4)
        now = calls_of(conn, function)
        if (now > before and now == last) or time.monotonic() > deadline:
            return now
        last = now


def completed_count(conn: psycopg.Connection, queue: str) -> int:
    return conn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'completed'",
                        (queue,)).fetchone()[0]


def check_drain(conn: psycopg.Connection, queue: str, ids: List[int], runs: Dict[int, int],
                finished: List[pgqueue.JobEvent], calls: int, label: str, capsys: Any, took: float) -> None:
    """Every job ran and completed exactly once with its result, one finished
    event each, and the acks went through few queue_ack_batch calls."""
    with capsys.disabled():
        print(f"\n[{label}] {JOBS} jobs at concurrency 20 drained in {took * 1000:.0f} ms with {calls}"
              f" queue_ack_batch calls ({JOBS / max(calls, 1):.1f} acks per call)")
    assert calls >= 1, "no queue_ack_batch call was counted (is track_functions = 'all' set?)"
    assert calls <= JOBS // 3, f"{calls} queue_ack_batch calls for {JOBS} jobs: the acks were not batched"
    statuses = conn.execute("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1",
                            (queue,)).fetchall()
    assert statuses == [("completed", JOBS)]
    by_job = collections.defaultdict(list)
    for e in finished:
        by_job[e.job.id].append(e.status)
    for n, job_id in enumerate(ids):
        assert runs.get(job_id) == 1, f"job {job_id} ran {runs.get(job_id)} times"
        info = job_info(conn, job_id)
        assert (info["status"], info["attempts"], info["result"]) == ("completed", 1, {"n": n, "id": job_id})
        assert by_job[job_id] == ["completed"], f"job {job_id}: finished events {by_job[job_id]}"


def test_a_drain_acks_many_jobs_per_queue_ack_batch_call(conn, queue_name, start_worker, capsys):
    runs: Dict[int, int] = collections.Counter()
    finished: List[pgqueue.JobEvent] = []
    failed: List[pgqueue.JobEvent] = []

    def handler(job):
        runs[job.id] += 1
        # The jobs of one claim finish together, as a burst of real work would:
        # their acks arrive while the acker's previous call is in flight.
        time.sleep(0.003)
        return {"n": job.payload["n"], "id": job.id}

    ids = pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(JOBS)])
    before = calls_of(conn, "queue_ack_batch")
    t0 = time.monotonic()
    w = start_worker({queue_name: handler}, concurrency=20,
                     listeners=[pgqueue.CallbackListener(on_finished=finished.append, on_failed=failed.append)])
    wait_until(lambda: completed_count(conn, queue_name) == JOBS, timeout=60, what="every job completed")
    took = time.monotonic() - t0
    wait_until(lambda: len(finished) == JOBS, what="every finished event")
    w.stop()
    assert w.wait(15)  # its sessions end and flush their counters
    calls = settled_calls(conn, "queue_ack_batch", before) - before
    check_drain(conn, queue_name, ids, runs, finished, calls, "batched acks, threaded Worker", capsys, took)
    assert failed == []
    assert w.running_jobs == 0


def test_an_async_drain_acks_many_jobs_per_queue_ack_batch_call(conn, queue_name, capsys):
    runs: Dict[int, int] = collections.Counter()
    finished: List[pgqueue.JobEvent] = []
    failed: List[pgqueue.JobEvent] = []

    async def handler(job):
        runs[job.id] += 1
        await asyncio.sleep(0.003)
        return {"n": job.payload["n"], "id": job.id}

    ids = pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(JOBS)])
    before = calls_of(conn, "queue_ack_batch")

    async def main() -> float:
        t0 = time.monotonic()
        listener = pgqueue.CallbackListener(on_finished=finished.append, on_failed=failed.append)
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=20, grace=5,
                                       listeners=[listener]):
            while len(finished) < JOBS and time.monotonic() - t0 < 60:
                await asyncio.sleep(0.02)
            return time.monotonic() - t0

    took = asyncio.run(main())
    assert completed_count(conn, queue_name) == JOBS
    calls = settled_calls(conn, "queue_ack_batch", before) - before
    check_drain(conn, queue_name, ids, runs, finished, calls, "batched acks, AsyncWorker", capsys, took)
    assert failed == []


def mb_result(job_id: int, mb: float) -> Dict[str, Any]:
    """A result of about ``mb`` MB, different for every job."""
    unit = f"{job_id}:" + "abcdefghijklmnopqrstuvwxyz"[job_id % 26] * 50 + ";"
    return {"role": "mb", "id": job_id, "blob": unit * (int(mb * 1024 * 1024) // len(unit))}


class Gated:
    """Handlers that wait at two gates: the "plug" job's at the first, every
    other job's at the second. Each returns ``{"role": ..., "id": ...}``; a
    job with role "big" returns about 5 kB."""

    def __init__(self) -> None:
        self.plug = threading.Event()
        self.rest = threading.Event()
        self.lock = threading.Lock()
        self.returned = 0
        self.finished: List[pgqueue.JobEvent] = []
        self.failed: List[pgqueue.JobEvent] = []
        self.listener = pgqueue.CallbackListener(on_finished=self.finished.append, on_failed=self.failed.append)

    def result(self, job: Any) -> Any:
        role = job.payload["role"]
        with self.lock:
            self.returned += 1
        if role == "big":
            return {"role": role, "blob": "x" * 5000}
        if role == "mb":  # a result of payload["mb"] MB, its own text
            return mb_result(job.id, job.payload["mb"])
        return {"role": role, "id": job.id}

    def handler(self, job: Any) -> Any:
        (self.plug if job.payload["role"] == "plug" else self.rest).wait(30)
        return self.result(job)

    def finished_of(self, job_id: int) -> Optional[pgqueue.JobEvent]:
        return next((e for e in list(self.finished) if e.job.id == job_id), None)


def wait_for_lock_waiter(conn: psycopg.Connection, application_name: str) -> None:
    """Until one of the worker's sessions waits for a row lock (the plug's ack)."""
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (application_name,)).fetchone()[0] > 0, what="the plug's ack waits for the row lock")


def one_batch_behind_a_plug(conn: psycopg.Connection, g: Gated, application_name: str, plug: int, jobs: int) -> None:
    """Put every ack but the plug's into ONE batch: a session holds the plug
    job's row lock, the plug's ack (a call of its own) waits for it, the other
    handlers return meanwhile and their acks queue behind that call; then the
    lock goes and they all go out in the acker's next call."""
    with psycopg.connect(DSN) as locker:  # not autocommit: the lock lasts until the commit
        assert locker.execute("SELECT 1 FROM queue.jobs WHERE id = %s FOR UPDATE", (plug,)).fetchall() == [(1,)]
        g.plug.set()
        wait_for_lock_waiter(conn, application_name)
        g.rest.set()
        wait_until(lambda: g.returned == jobs, what="every handler returned")
        time.sleep(0.3)  # their acks are queued right after they return
        locker.commit()


def test_in_one_batch_a_stale_claim_is_refused_and_the_others_complete(conn, queue_name, start_worker):
    g = Gated()
    others = 4
    jobs = 2 + others
    plug = pgqueue.push(conn, queue_name, {"role": "plug"})
    stale = pgqueue.push(conn, queue_name, {"role": "stale"})
    rest = [pgqueue.push(conn, queue_name, {"role": "other"}) for _ in range(others)]
    # Capacity for exactly these jobs: the worker cannot claim the stale job back itself.
    w = start_worker({queue_name: g.handler}, concurrency=jobs, listeners=[g.listener], poll_interval=0.2)
    for job_id in [plug, stale, *rest]:
        wait_until(lambda: job_status(conn, job_id) == "processing", what=f"job {job_id} claimed")
    # The stale job's claim is taken over: attempt 1 is no longer current.
    assert conn.execute("SELECT queue_fail(%s, 'taken over', 1, interval '0')", (stale,)).fetchone()[0] == "pending"
    thief = conn.execute("SELECT id, attempt FROM queue_pop(%s, 'thief', 1)", (queue_name,)).fetchall()
    assert thief == [(stale, 2)]

    before = calls_of(conn, "queue_ack_batch")
    one_batch_behind_a_plug(conn, g, f"pgqueue {w.name}"[:63], plug, jobs)
    for job_id in [plug, stale, *rest]:
        wait_until(lambda: g.finished_of(job_id), what=f"job {job_id} finished event")
    assert g.finished_of(stale).status is None, "the stale claim's ack must be refused"
    info = job_info(conn, stale)
    assert (info["status"], info["worker"]) == ("processing", "thief")
    for job_id in [plug, *rest]:
        e = g.finished_of(job_id)
        assert e.status == "completed", f"job {job_id}: {e.status}"
        info = job_info(conn, job_id)
        assert (info["status"], info["attempts"], info["result"]) == ("completed", 1, e.result)
    assert len(g.finished) == jobs
    assert g.failed == []
    assert conn.execute("""SELECT queue_ack(%s, '"thief result"', 2)""", (stale,)).fetchone()[0], \
        "the thief's current claim still completes"
    w.stop()
    assert w.wait(15)
    # The plug's call, then one call for the stale job and its neighbours.
    calls = settled_calls(conn, "queue_ack_batch", before) - before
    assert calls == 2, f"queue_ack_batch calls: want the plug's and one for the other {jobs - 1} acks"


def big_result_checks(conn: psycopg.Connection, g: Gated, plug: int, big: int, rest: List[int]) -> None:
    """The oversized result failed its own job (and nothing else)."""
    wait_until(lambda: job_status(conn, big) == "failed", what="the big job failed")
    info = job_info(conn, big)
    assert "result could not be stored" in info["last_error"], info["last_error"]
    assert "max_result_size" in info["last_error"], info["last_error"]
    assert info["result"] is None
    # As before batching: the handler returned, so its event is "finished", with the job's new status.
    e = wait_until(lambda: g.finished_of(big), what="the big job's finished event")
    assert e.status == "failed"
    assert g.failed == []
    for job_id in [plug, *rest]:
        wait_until(lambda: job_status(conn, job_id) == "completed", what=f"job {job_id} completed")
        info = job_info(conn, job_id)
        assert (info["attempts"], info["result"]) == (1, {"role": info["payload"]["role"], "id": job_id})
        e = wait_until(lambda: g.finished_of(job_id), what=f"job {job_id} finished event")
        assert e.status == "completed"
    assert sorted(e.status for e in g.finished) == ["completed"] * (len(rest) + 1) + ["failed"]


def assert_one_refused_batch(caplog: Any, size: int) -> None:
    """The big job and its neighbours went out in one batch, which the server refused as a whole."""
    refused = [r.getMessage() for r in caplog.records if "refused as a whole" in r.getMessage()]
    assert len(refused) == 1 and refused[0].startswith(f"a batch of {size} ack(s)"), refused


def test_a_result_too_large_fails_only_its_job_and_its_batch_neighbours_complete(conn, queue_name, start_worker,
                                                                                  caplog):
    g = Gated()
    others = 4
    jobs = 2 + others
    plug = pgqueue.push(conn, queue_name, {"role": "plug"})
    big = pgqueue.push(conn, queue_name, {"role": "big"}, max_attempts=1)
    rest = [pgqueue.push(conn, queue_name, {"role": "other"}) for _ in range(others)]
    # queue.max_result_size (in kB) is superuser-only: the tests connect as postgres.
    w = start_worker({queue_name: g.handler}, concurrency=jobs, listeners=[g.listener], poll_interval=0.2,
                     connect_kwargs={"options": "-c queue.max_result_size=1"})
    for job_id in [plug, big, *rest]:
        wait_until(lambda: job_status(conn, job_id) == "processing", what=f"job {job_id} claimed")
    before = calls_of(conn, "queue_ack_batch")
    one_batch_behind_a_plug(conn, g, f"pgqueue {w.name}"[:63], plug, jobs)
    big_result_checks(conn, g, plug, big, rest)
    w.stop()
    assert w.wait(15)
    # A call that raised is not counted: only the plug's call is.
    calls = settled_calls(conn, "queue_ack_batch", before) - before
    assert calls >= 1, f"the acks did not go through queue_ack_batch ({calls} calls)"
    assert_one_refused_batch(caplog, jobs - 1)


def test_async_a_result_too_large_fails_only_its_job_and_its_batch_neighbours_complete(conn, queue_name, caplog):
    g = Gated()
    others = 4
    jobs = 2 + others
    plug = pgqueue.push(conn, queue_name, {"role": "plug"})
    big = pgqueue.push(conn, queue_name, {"role": "big"}, max_attempts=1)
    rest = [pgqueue.push(conn, queue_name, {"role": "other"}) for _ in range(others)]

    async def handler(job):
        gate = g.plug if job.payload["role"] == "plug" else g.rest
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return g.result(job)

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=jobs, grace=5, poll_interval=0.2,
                                       listeners=[g.listener],
                                       connect_kwargs={"options": "-c queue.max_result_size=1"}) as w:
            for job_id in [plug, big, *rest]:
                await asyncio.to_thread(wait_until, lambda: job_status(conn, job_id) == "processing",
                                        what=f"job {job_id} claimed")
            await asyncio.to_thread(one_batch_behind_a_plug, conn, g, f"pgqueue {w.name}"[:63], plug, jobs)
            await asyncio.to_thread(big_result_checks, conn, g, plug, big, rest)

    asyncio.run(main())
    assert_one_refused_batch(caplog, jobs - 1)


class SentBatches:
    """Records, client side, every batch the worker's acker sends, alone or
    with a claim (both build their parameters with the batcher's
    ``array_params`` right before the statement): how many acks, and the
    bytes their results add to the statement, as psycopg dumps them."""

    def __init__(self, acker: Any) -> None:
        self.lock = threading.Lock()
        self.sizes: List[tuple] = []  # (acks, result bytes) per statement sent
        dump = psycopg.adapters.get_dumper(Jsonb, PyFormat.TEXT)(Jsonb).dump
        batcher = acker._batcher
        original = batcher.array_params

        def array_params(batch: List[c.PendingAck]) -> Any:
            size = sum(len(dump(a.doc)) for a in batch if a.doc is not None)
            with self.lock:
                self.sizes.append((len(batch), size))
            return original(batch)

        batcher.array_params = array_params

    def check(self, cap: int, results: int, total: int) -> None:
        """The statements sent carried ``results`` acks with results in all
        (``total`` bytes: each was sent once), and every one past ``cap``
        bytes was one ack alone."""
        with self.lock:
            sizes = [s for s in self.sizes if s[1] > 0]
        assert sum(n for n, _ in sizes) == results, f"batches with results sent: {sizes}"
        assert sum(b for _, b in sizes) == total, sizes
        assert [s for s in sizes if s[1] > cap and s[0] != 1] == [], \
            f"a batch over the {cap}-byte cap held more than one ack: {sizes}"


ACK_BATCH_CAP = 8 * 1024 * 1024  # the workers' cap (pgqueue._common.MAX_ACK_BATCH_BYTES)
MB_JOBS = 5  # each 3 MB: 15 MB of results in all, queued behind a plug as one batch
BIG_MB = 9  # over the 8 MB cap alone, under the 10 MB queue.max_result_size


def push_mb_jobs(conn: psycopg.Connection, queue: str) -> tuple:
    """The plug, MB_JOBS jobs of 3 MB results and one of BIG_MB: (plug, [the others])."""
    plug = pgqueue.push(conn, queue, {"role": "plug"})
    ids = [pgqueue.push(conn, queue, {"role": "mb", "mb": 3}, max_attempts=1) for _ in range(MB_JOBS)]
    ids.append(pgqueue.push(conn, queue, {"role": "mb", "mb": BIG_MB}, max_attempts=1))
    return plug, ids


def mb_checks(conn: psycopg.Connection, g: Gated, sent: SentBatches, plug: int, ids: List[int]) -> None:
    """Every job completed once with its result intact; the batches stayed under the cap."""
    for job_id in [plug, *ids]:
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=30, what=f"job {job_id} completed")
        wait_until(lambda: g.finished_of(job_id), what=f"job {job_id} finished event")
    total = len(c.result_doc({"role": "plug", "id": plug}).obj)
    for n, job_id in enumerate(ids):
        info = job_info(conn, job_id)
        want = mb_result(job_id, BIG_MB if n == MB_JOBS else 3)
        assert info["attempts"] == 1
        assert info["result"] == want, f"job {job_id}: the result stored is not the one returned"
        total += len(c.result_doc(want).obj)
    assert sorted(e.status for e in g.finished) == ["completed"] * (len(ids) + 1)
    assert g.failed == []
    sent.check(ACK_BATCH_CAP, len(ids) + 1, total)


def test_the_results_in_one_ack_batch_stay_under_the_byte_cap(conn, queue_name, start_worker, caplog):
    """Six handlers return 3 MB results (and one 9 MB) at once, their acks all
    queued behind the plug's: without a byte cap they go as ONE statement of
    24 MB; with it, batches of at most 8 MB, the 9 MB one alone. Every result
    is stored intact, and nothing falls back to per-job acks."""
    g = Gated()
    plug, ids = push_mb_jobs(conn, queue_name)
    w = start_worker({queue_name: g.handler}, concurrency=len(ids) + 1, listeners=[g.listener], poll_interval=0.2)
    sent = SentBatches(w._acker)
    for job_id in [plug, *ids]:
        wait_until(lambda: job_status(conn, job_id) == "processing", what=f"job {job_id} claimed")
    one_batch_behind_a_plug(conn, g, f"pgqueue {w.name}"[:63], plug, len(ids) + 1)
    mb_checks(conn, g, sent, plug, ids)
    assert not [r for r in caplog.records if "refused as a whole" in r.getMessage()]


def test_async_the_results_in_one_ack_batch_stay_under_the_byte_cap(conn, queue_name, caplog):
    g = Gated()
    plug, ids = push_mb_jobs(conn, queue_name)

    async def handler(job):
        gate = g.plug if job.payload["role"] == "plug" else g.rest
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return g.result(job)

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=len(ids) + 1, grace=5,
                                       poll_interval=0.2, listeners=[g.listener]) as w:
            while not hasattr(w, "_acker"):
                await asyncio.sleep(0)
            sent = SentBatches(w._acker)
            for job_id in [plug, *ids]:
                await asyncio.to_thread(wait_until, lambda: job_status(conn, job_id) == "processing",
                                        what=f"job {job_id} claimed")
            await asyncio.to_thread(one_batch_behind_a_plug, conn, g, f"pgqueue {w.name}"[:63], plug, len(ids) + 1)
            await asyncio.to_thread(mb_checks, conn, g, sent, plug, ids)

    asyncio.run(main())
    assert not [r for r in caplog.records if "refused as a whole" in r.getMessage()]


def test_without_queue_ack_batch_an_older_extension_gets_one_queue_ack_per_job(conn, queue_name, start_worker):
    """A database of its own whose extension loses queue_ack_batch after the
    worker started (as if it were older): the first batch gets 42883, every
    ack then goes through queue_ack, and nothing fails."""
    db = "python_client_no_ack_batch"
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    other_dsn = psycopg.conninfo.make_conninfo(**{**dsn_params(), "dbname": db})
    try:
        with psycopg.connect(other_dsn, autocommit=True) as other:
            other.execute("CREATE EXTENSION queue")
            finished: List[pgqueue.JobEvent] = []
            failed: List[pgqueue.JobEvent] = []
            w = start_worker({queue_name: lambda job: {"id": job.id}}, dsn=other_dsn, concurrency=5,
                             poll_interval=0.2,
                             listeners=[pgqueue.CallbackListener(on_finished=finished.append, on_failed=failed.append)])
            other.execute("ALTER EXTENSION queue DROP FUNCTION queue_ack_batch(bigint[], integer[], jsonb[])")
            other.execute("DROP FUNCTION queue_ack_batch(bigint[], integer[], jsonb[])")
            # The first round meets the missing function; the second is acked one by one from the start.
            for round_ in range(2):
                ids = pgqueue.push_batch(other, queue_name, [{"round": round_, "n": n} for n in range(5)])
                for job_id in ids:
                    wait_until(lambda: job_status(other, job_id) == "completed", what=f"job {job_id} completed")
                    info = job_info(other, job_id)
                    assert (info["attempts"], info["result"]) == (1, {"id": job_id})
            wait_until(lambda: len(finished) == 10, what="every finished event")
            assert sorted(e.status for e in finished) == ["completed"] * 10
            assert failed == []
            assert not w._acker._batcher.supported
            w.stop()
            assert w.wait(15)
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


class _FakeJob:
    """Just what the batcher reads of a job."""

    def __init__(self, job_id: int, attempt: int = 1) -> None:
        self.id, self.attempt, self.lease = job_id, attempt, dt.timedelta(seconds=60)


def test_a_batch_holds_at_most_1000_acks_and_never_one_job_twice():
    b = c.AckBatcher(None)
    acks = [c.PendingAck(_FakeJob(i), None, threading.Event()) for i in range(1500)]
    twice = c.PendingAck(_FakeJob(7, attempt=2), c.result_doc({"again": True}), threading.Event())
    for a in acks[:10] + [twice] + acks[10:]:
        assert b.add(a)
    first = b.take()
    assert [a.job.id for a in first] == list(range(1000))
    ids, attempts, results = b.params(first)
    assert ids == list(range(1000)) and attempts == [1] * 1000 and results is None
    second = b.take()
    assert second[0] is twice and [a.job.id for a in second[1:]] == list(range(1000, 1500))
    assert b.params(second)[2][0] is twice.doc and b.params(second)[2][1] is None
    assert b.take() == []
    b.settle(second, [7, 1000])
    assert (twice.outcome, second[1].outcome, second[2].outcome) == (True, True, False)


def test_a_batch_ends_before_the_ack_that_would_take_it_past_the_byte_cap():
    b = c.AckBatcher(None, max_bytes=100)

    def ack(job_id: int, chars: int) -> c.PendingAck:
        return c.PendingAck(_FakeJob(job_id), None if chars == 0 else c.result_doc("x" * (chars - 2)),
                            threading.Event())

    acks = [ack(1, 40), ack(2, 40), ack(3, 40), ack(4, 250), ack(5, 0), ack(6, 60), ack(7, 40), ack(8, 100)]
    assert [a.size for a in acks] == [40, 40, 40, 250, 0, 60, 40, 100]
    assert c.PendingAck(_FakeJob(9), c.result_doc("\u00e9"), threading.Event()).size == len('"\\u00e9"')
    for a in acks:
        b.add(a)
    batches = []
    while True:
        batch = b.take()
        if not batch:
            break
        batches.append([a.job.id for a in batch])
    # 40+40 (a third 40 would pass 100), 40 (250 would), 250 alone, 0+60+40 (exactly 100: full), 100 alone.
    assert batches == [[1, 2], [3], [4], [5, 6, 7], [8]]


def test_an_unserialisable_result_is_caught_before_it_joins_a_batch():
    with pytest.raises(TypeError):
        c.result_doc({"when": object()})
    assert c.result_doc(None) is None
