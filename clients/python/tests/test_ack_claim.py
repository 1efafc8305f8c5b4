"""Acks ride with claims: a worker that acks a job while its queue may have
more work claims the next job in the ack's own statement (ACK_CLAIM_SQL), so
at concurrency 1 a job costs one commit, not two, and the worker still never
runs more than ``concurrency`` handlers.

Both timestamps below are the transaction's ``now()``: a job's ``finished_at``
equals another job's ``started_at`` exactly when the ack of the one and the
claim of the other were one transaction.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

import pgqueue
from conftest import DSN, Concurrency, wait_until

JOBS = 60

SAME_COMMIT_SQL = (
    "SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM queue.all_jobs b WHERE b.queue = a.queue"
    " AND b.id <> a.id AND b.started_at = a.finished_at)), max(attempts), count(*)"
    " FROM queue.all_jobs a WHERE a.queue = %s"
)


def completed_count(conn: psycopg.Connection, queue: str) -> int:
    return conn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'completed'",
                        (queue,)).fetchone()[0]


def check(conn: psycopg.Connection, queue: str, peak: int, label: str, capsys) -> None:
    same, max_attempts, total = conn.execute(SAME_COMMIT_SQL, (queue,)).fetchone()
    with capsys.disabled():
        print(f"\n[{label}] {total} jobs at concurrency 1: {same} acks shared their commit with the next claim;"
              f" max attempts {max_attempts}; at most {peak} handler(s) at once")
    assert total == JOBS
    assert max_attempts == 1
    assert peak <= 1, f"{peak} handlers ran at once at concurrency 1"
    assert same >= JOBS - 6, f"only {same} of {JOBS} acks rode with the next claim"


def test_acks_ride_with_claims_threaded(conn, queue_name, start_worker, capsys):
    pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(JOBS)])
    running = Concurrency()

    def handler(job):
        with running:
            time.sleep(0.002)
        return {"n": job.payload["n"]}

    start_worker({queue_name: handler}, concurrency=1)
    wait_until(lambda: completed_count(conn, queue_name) == JOBS, timeout=30)
    check(conn, queue_name, running.peak, "threaded", capsys)


def test_acks_ride_with_claims_async(conn, queue_name, capsys):
    pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(JOBS)])
    now = 0
    peak = 0

    async def handler(job):
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await asyncio.sleep(0.002)
        finally:
            now -= 1
        return {"n": job.payload["n"]}

    async def main() -> None:
        async with pgqueue.AsyncWorker(DSN, {queue_name: handler}, concurrency=1, grace=5, poll_interval=1.0):
            async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    cur = await aconn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s"
                                              " AND status = 'completed'", (queue_name,))
                    if (await cur.fetchone())[0] == JOBS:
                        break
                    await asyncio.sleep(0.05)

    asyncio.run(main())
    check(conn, queue_name, peak, "asyncio", capsys)


def test_the_slot_hand_over_never_starts_more_jobs_than_the_acks_freed():
    """hand_over_slots, shared by both workers: a claimed job takes the slot of
    an acked one still active, never more of them; while stopping none starts."""
    from types import SimpleNamespace

    from pgqueue._common import hand_over_slots

    def job(i):
        return SimpleNamespace(id=i)

    a, b, gone = job(1), job(2), job(3)
    active = {1: a, 2: b}
    batch = [SimpleNamespace(job=a), SimpleNamespace(job=gone)]  # job 3 left at a hard stop
    started, unstarted = hand_over_slots(active, batch, [job(10), job(11)], stopping=False)
    assert [j.id for j in started] == [10] and [j.id for j in unstarted] == [11]
    assert sorted(active) == [2, 10]

    active = {1: a}
    started, unstarted = hand_over_slots(active, [SimpleNamespace(job=a)], [job(12)], stopping=True)
    assert started == [] and [j.id for j in unstarted] == [12] and active == {}
