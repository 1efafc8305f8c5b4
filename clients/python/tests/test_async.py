"""The asyncio worker against a real cluster."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time

import psycopg

import pgqueue
from conftest import DSN, job_info, job_status, wait_until


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
