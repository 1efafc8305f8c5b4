"""Pooler mode through a real PgBouncer in transaction mode.

``pooler=True``: no LISTEN connection, no server-side prepared statements, and
an idle worker claims with ``queue_pop(..., wait => '5 seconds')`` in a loop,
sleeping in the server until a job is claimable. The ``bouncer`` fixture
(conftest) runs Debian's pgbouncer on port 25481 in front of the test cluster.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from typing import Dict, List

import psycopg

import pgqueue
from conftest import DSN, job_info, job_status, wait_until


def pooled(dsn: str) -> psycopg.Connection:
    """A connection through the pooler (no prepared statements there)."""
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def app_of(worker) -> str:
    return f"pgqueue {worker.name}"[:63]


def waiting_claims(conn: psycopg.Connection, app: str) -> int:
    """How many of the worker's backends are inside a waiting queue_pop."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        " AND query LIKE '%%queue_pop%%wait =>%%'", (app,)).fetchone()[0]


class BackendWatch:
    """Samples, from a direct connection, every backend the worker's
    connections reach through the pooler: their pids, and any LISTEN."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.pids: set = set()
        self.listens: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as c:
            while not self._stop.is_set():
                for pid, query in c.execute("SELECT pid, coalesce(query, '') FROM pg_stat_activity"
                                            " WHERE application_name = %s", (self.app,)).fetchall():
                    self.pids.add(pid)
                    if query.lstrip().upper().startswith(("LISTEN", "UNLISTEN")):
                        self.listens.append(query)
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def channels_of_every_server_connection(bouncer: str, n: int = 20) -> Dict[int, list]:
    """``pg_listening_channels()`` of each server connection of the pooler.

    ``n`` (the pool size) client transactions held open at once take every
    server connection the pool has; a LISTEN run through the pooler would
    have stayed on one of them (transaction mode resets nothing).
    """
    conns = [pooled(bouncer) for _ in range(n)]
    try:
        out: Dict[int, list] = {}
        for c in conns:
            c.execute("BEGIN")
            pid, channels = c.execute("SELECT pg_backend_pid(), array(SELECT pg_listening_channels())").fetchone()
            out[pid] = channels
        return out
    finally:
        for c in conns:
            try:
                c.execute("ROLLBACK")
            finally:
                c.close()


def latency_line(what: str, lat_ms: List[float]) -> str:
    lat = sorted(lat_ms)
    p50, p99 = statistics.median(lat), lat[max(0, int(len(lat) * 0.99) - 1)]
    return (f"[push commit -> handler start through pgbouncer, {what}, {len(lat)} jobs] "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")


def p99_of(lat_ms: List[float]) -> float:
    lat = sorted(lat_ms)
    return lat[max(0, int(len(lat) * 0.99) - 1)]


def test_pooler_worker_runs_200_lone_pushes_once_each_with_low_latency(bouncer, conn, queue_name, start_worker,
                                                                       capsys):
    started: Dict[int, List[float]] = {}
    lock = threading.Lock()

    def handler(job):
        now = time.monotonic()
        with lock:
            started.setdefault(job.id, []).append(now)
        return {"attempt": job.attempt}

    # Polling every 30 s: only the server-side wait can start the jobs in time.
    w = start_worker({queue_name: handler}, dsn=bouncer, pooler=True, concurrency=4, poll_interval=30,
                     heartbeat_interval=60)
    app = app_of(w)
    watch = BackendWatch(app)
    try:
        wait_until(lambda: waiting_claims(conn, app) == 1, what="the worker waits in queue_pop")
        committed: Dict[int, float] = {}
        with pooled(bouncer) as producer:  # the producer goes through the pooler too
            for i in range(200):
                job_id = pgqueue.push(producer, queue_name, {"i": i})  # autocommit: committed on return
                committed[job_id] = time.monotonic()
                time.sleep(0.01)
        wait_until(lambda: len(started) == 200, timeout=15, what="200 jobs started")
        wait_until(lambda: conn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'completed'",
                                        (queue_name,)).fetchone()[0] == 200, timeout=15, what="200 jobs completed")
        assert not w.listening
    finally:
        watch.stop()
    # Each exactly once: one handler start per job, one attempt each, the result of that attempt.
    assert set(started) == set(committed)
    assert all(len(v) == 1 for v in started.values()), {k: v for k, v in started.items() if len(v) > 1}
    rows = conn.execute("SELECT status, attempts, result, count(*) FROM queue.all_jobs WHERE queue = %s"
                        " GROUP BY 1, 2, 3", (queue_name,)).fetchall()
    assert rows == [("completed", 1, {"attempt": 1}, 200)], rows
    lat = [(started[j][0] - committed[j]) * 1000 for j in committed]
    with capsys.disabled():
        print("\n" + latency_line("threaded Worker, concurrency 4", lat))
    assert p99_of(lat) < 50, latency_line("threaded Worker", lat)
    # No LISTEN ever: none seen on the worker's backends, none left on any server connection.
    assert watch.listens == []
    assert watch.pids, "the worker's backends were seen"
    w.stop()
    assert w.wait(10)
    channels = channels_of_every_server_connection(bouncer)
    alive = {pid for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity").fetchall()}
    # Every server connection the worker used is inspected (or is gone: then it listens on nothing).
    assert {p for p in watch.pids if p in alive} <= set(channels), (watch.pids, set(channels))
    assert all(ch == [] for ch in channels.values()), channels


def test_pooler_stop_while_waiting_returns_at_once(bouncer, conn, queue_name):
    w = pgqueue.Worker(bouncer, {queue_name: lambda job: None}, pooler=True, pooler_wait=5, grace=3)
    app = app_of(w)
    w.start()
    try:
        wait_until(lambda: waiting_claims(conn, app) == 1, what="the worker waits in queue_pop")
        time.sleep(0.3)  # well inside the 5 s wait
        t0 = time.monotonic()
        w.stop()
        assert w.wait(3), "stop did not return within the grace"
        took = time.monotonic() - t0
    finally:
        w.stop(grace=0)
        w.wait(10)
    assert took < 1.5, f"stop took {took:.2f}s: it sat out the server-side wait"
    assert waiting_claims(conn, app) == 0
    # The cancelled claim claimed nothing; nothing claims after the stop.
    later = pgqueue.push(conn, queue_name, {})
    time.sleep(0.3)
    assert (job_status(conn, later), job_info(conn, later)["attempts"]) == ("pending", 0)


def test_pooler_stop_past_grace_gives_back_through_the_pooler(bouncer, conn, queue_name, start_worker):
    started = threading.Event()

    def slow(job):
        started.set()
        time.sleep(30)

    # concurrency 2: one slot runs the job, the other keeps a claim waiting in the server.
    w = pgqueue.Worker(bouncer, {queue_name: slow}, pooler=True, concurrency=2, pooler_wait=5, grace=1)
    app = app_of(w)
    w.start()
    try:
        job_id = pgqueue.push(conn, queue_name, {}, max_attempts=3)
        assert started.wait(10)
        wait_until(lambda: waiting_claims(conn, app) == 1, what="the free slot's claim waits in queue_pop")
        t0 = time.monotonic()
        w.stop()
        assert w.wait(4), "stop did not return within the grace (+ the give-back)"
        took = time.monotonic() - t0
    finally:
        w.stop(grace=0)
        w.wait(10)
    assert 0.9 < took < 2.5, f"stop took {took:.2f}s with a grace of 1 s"
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["max_attempts"]) == ("pending", 1, 4)
    seen = []
    start_worker({queue_name: lambda job: seen.append((job.attempt, job.max_attempts))}, dsn=bouncer, pooler=True)
    wait_until(lambda: job_status(conn, job_id) == "completed", timeout=5, what="completed by the next worker")
    assert seen == [(2, 4)]


def test_pooler_worker_without_free_capacity_does_not_wait_in_the_server(bouncer, conn, queue_name, start_worker):
    running = threading.Event()
    release = threading.Event()

    def handler(job):
        running.set()
        release.wait(10)

    w = start_worker({queue_name: handler}, dsn=bouncer, pooler=True, concurrency=1, poll_interval=0.2)
    app = app_of(w)
    wait_until(lambda: waiting_claims(conn, app) == 1, what="the idle worker waits in queue_pop")
    first = pgqueue.push(conn, queue_name, {})
    assert running.wait(5)
    second = pgqueue.push(conn, queue_name, {})
    busy_samples = []
    for _ in range(20):  # 1 s with its only slot taken
        busy_samples.append(waiting_claims(conn, app))
        time.sleep(0.05)
    release.set()
    assert busy_samples == [0] * 20, busy_samples
    for job_id in (first, second):
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=5, what=f"job {job_id}")


def test_pooler_worker_serves_several_queues(bouncer, conn, start_worker):
    queues = ["py-" + uuid.uuid4().hex[:12] for _ in range(3)]
    done = []
    w = start_worker({q: (lambda job: done.append(job.queue)) for q in queues}, dsn=bouncer, pooler=True,
                     poll_interval=0.3)
    time.sleep(0.5)
    t0 = time.monotonic()
    ids = [pgqueue.push(conn, q, {}) for q in queues]
    for job_id in ids:
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=5, what=f"job {job_id}")
    assert time.monotonic() - t0 < 3  # each queue is looked at within poll_interval
    assert sorted(done) == sorted(queues)
    assert not w.listening


def test_async_pooler_worker_through_pgbouncer(bouncer, queue_name, capsys):
    started: Dict[int, List[float]] = {}

    async def handler(job):
        started.setdefault(job.id, []).append(time.monotonic())
        return {"attempt": job.attempt}

    async def main():
        w = pgqueue.AsyncWorker(bouncer, {queue_name: handler}, pooler=True, concurrency=4, poll_interval=30,
                                heartbeat_interval=60, grace=3)
        task = asyncio.create_task(w.run(install_signal_handlers=False))
        app = app_of(w)
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as direct:
            async def waiting():
                cur = await direct.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
                    " AND query LIKE '%%queue_pop%%wait =>%%'", (app,))
                return (await cur.fetchone())[0]

            deadline = time.monotonic() + 10
            while await waiting() != 1:
                assert time.monotonic() < deadline, "the async worker never waited in queue_pop"
                await asyncio.sleep(0.02)
            committed = {}
            async with await psycopg.AsyncConnection.connect(bouncer, autocommit=True,
                                                             prepare_threshold=None) as producer:
                for i in range(100):
                    job_id = await pgqueue.apush(producer, queue_name, {"i": i})
                    committed[job_id] = time.monotonic()
                    await asyncio.sleep(0.01)
            deadline = time.monotonic() + 15
            while len(started) < 100:
                assert time.monotonic() < deadline, f"{len(started)} of 100 started"
                await asyncio.sleep(0.02)
            # Stop while the next claim waits in the server: returns at once, not after 5 s.
            while await waiting() != 1:
                assert time.monotonic() < deadline, "the async worker did not go back to waiting"
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            w.stop()
            await asyncio.wait_for(task, 3)
            took = time.monotonic() - t0
            assert await waiting() == 0
        return committed, took

    committed, took = asyncio.run(main())
    assert took < 1.5, f"stop took {took:.2f}s"
    assert set(started) == set(committed) and all(len(v) == 1 for v in started.values())
    with psycopg.connect(DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT status, attempts, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1, 2",
                            (queue_name,)).fetchall()
    assert rows == [("completed", 1, 100)], rows
    lat = [(started[j][0] - committed[j]) * 1000 for j in committed]
    with capsys.disabled():
        print("\n" + latency_line("AsyncWorker, concurrency 4", lat))
    assert p99_of(lat) < 50, latency_line("AsyncWorker", lat)
