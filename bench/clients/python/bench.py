#!/usr/bin/env python3
"""The Python client's driver of bench/clients/run.sh (public API of pgqueue only).

    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py latency DSN QUEUE JOBS INTERVAL_MS
    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py pickup  DSN QUEUE JOBS INTERVAL_US CONCURRENCY WORK_MS
    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py drain   DSN QUEUE JOBS CONCURRENCY
    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py drain-shared DSN QUEUE JOBS CONCURRENCY
    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py aio-MODE ...   (the same, AsyncWorker)

latency: an idle threaded pgqueue.Worker (concurrency 1, LISTEN mode) started
in this process; a producer connection of this process pushes JOBS jobs one at
a time, INTERVAL_MS apart, with pgqueue.push (autocommit). Latency = the
handler's time.monotonic() at its start minus the push's return. Prints one
JSON line with every sample (ms).

pickup: the same at load: a Worker at CONCURRENCY whose handler sleeps
WORK_MS, pushes INTERVAL_US apart (600 jobs/s is 1667). The JSON line also
carries the rate the producer reached. With BENCH_POOLER=1 the worker runs in
pooler mode (server-side waits, no LISTEN), for a DSN that points at PgBouncer
in transaction mode; BENCH_PRODUCER_DSN, if set, is where the producer pushes.

drain: JOBS jobs prefilled with one pgqueue.push_batch, then a Worker with a
no-op handler at CONCURRENCY; the time from start() until the on_finished
listener (called after the ack) has fired JOBS times, checked against
queue_stats(queue). Prints one JSON line with jobs/s.

aio-latency, aio-pickup, aio-drain, aio-drain-shared: the same with
pgqueue.aio.AsyncWorker (async handlers; the worker runs on an event loop of
its own thread, the producer pushes from the main thread as above), reported
as client "python-aio".

drain-shared: one of several processes draining the same queue, which
bench/clients/run.sh filled with JOBS jobs: a Worker at CONCURRENCY runs until
queue_stats(queue) counts JOBS completed. Prints the wall clock (ms since the
epoch, comparable between processes) at start() and at its last finished job,
and how many it finished; run.sh takes the rate from the earliest start to the
latest finish.
"""
import asyncio
import json
import os
import sys
import threading
import time

import psycopg

import pgqueue
from pgqueue.aio import AsyncWorker


def payload(n):
    return {"n": n, "s": "x" * 64}


class Workers:
    """Starts and stops one worker of a kind: ``python`` (the threaded
    pgqueue.Worker) or ``python-aio`` (pgqueue.aio.AsyncWorker on an event
    loop of its own thread), with a handler that calls ``on_start(job)`` and
    then takes ``work_s`` seconds (sleeping; awaiting for the asyncio one)."""

    def __init__(self, client, dsn, queue, concurrency, on_start, work_s=0.0, **kwargs):
        self.client = client
        if client == "python":
            def handler(job):
                on_start(job)
                if work_s:
                    time.sleep(work_s)

            self._worker = pgqueue.Worker(dsn, {queue: handler}, concurrency=concurrency, **kwargs)
            return
        ready = threading.Event()

        async def ahandler(job):
            on_start(job)
            if work_s:
                await asyncio.sleep(work_s)

        async def serve():
            self._loop = asyncio.get_running_loop()
            self._worker = AsyncWorker(dsn, {queue: ahandler}, concurrency=concurrency, **kwargs)
            ready.set()
            await self._worker.run(install_signal_handlers=False)

        self._thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
        self._ready = ready

    def start(self):
        if self.client == "python":
            self._worker.start()
        else:
            self._thread.start()
            self._ready.wait()

    def stop(self):
        if self.client == "python":
            self._worker.stop()
            self._worker.wait()
        else:
            self._loop.call_soon_threadsafe(self._worker.stop)
            self._thread.join(60)


def latency(client, dsn, queue, jobs, interval_s, concurrency=1, work_s=0.0):
    started = {}
    done = threading.Semaphore(0)

    def on_start(job):
        started[job.id] = time.monotonic()

    pooler = os.environ.get("BENCH_POOLER") == "1"
    worker = Workers(client, dsn, queue, concurrency, on_start, work_s, pooler=pooler,
                     listeners=[pgqueue.CallbackListener(on_finished=lambda e: done.release())])
    worker.start()
    time.sleep(1.0)  # connected, LISTEN in place, first (empty) claim done: idle
    pushed = {}
    with psycopg.connect(os.environ.get("BENCH_PRODUCER_DSN", dsn), autocommit=True) as conn:
        t0 = next_at = time.monotonic()
        for n in range(jobs):
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            job_id = pgqueue.push(conn, queue, payload(n))
            pushed[job_id] = time.monotonic()
        push_rate = jobs / (time.monotonic() - t0)
    deadline = time.monotonic() + 30
    for _ in range(jobs):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            sys.exit("latency: not every job finished within 30 s")
    worker.stop()
    ms = [(started[j] - t) * 1000 for j, t in pushed.items()]
    if concurrency == 1 and not work_s:
        print(json.dumps({"client": client, "kind": "latency", "jobs": jobs, "ms": ms}))
    else:
        print(json.dumps({"client": client, "kind": "pickup", "jobs": jobs, "concurrency": concurrency,
                          "work_ms": work_s * 1000, "push_rate": push_rate, "pooler": pooler,
                          "ms": ms}))


def drain(client, dsn, queue, jobs, concurrency):
    """JOBS jobs prefilled, timed from start() until every job was acked,
    checked against queue_stats; prints the JSON line."""
    count = [0]
    lock = threading.Lock()
    all_done = threading.Event()

    def finished(event):
        with lock:
            count[0] += 1
            if count[0] == jobs:
                all_done.set()

    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = pgqueue.push_batch(conn, queue, [payload(n) for n in range(jobs)])
        assert len(ids) == jobs
        worker = Workers(client, dsn, queue, concurrency, lambda job: None,
                         listeners=[pgqueue.CallbackListener(on_finished=finished)])
        t0, cpu0 = time.monotonic(), time.process_time()
        worker.start()
        if not all_done.wait(600):
            sys.exit(f"{client} drain: not finished within 600 s")
        seconds = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        worker.stop()
        stats = conn.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]
        if stats["completed"] != jobs:
            sys.exit(f"{client} drain: queue_stats says {stats['completed']} completed, expected {jobs}")
    print(json.dumps({"client": client, "kind": "drain", "concurrency": concurrency, "jobs": jobs,
                      "seconds": seconds, "rate": jobs / seconds, "drain_cpu_us": cpu * 1e6 / jobs}))


def drain_shared(client, dsn, queue, jobs, concurrency):
    count = [0]
    last = [0.0]
    lock = threading.Lock()

    def finished(event):
        with lock:
            count[0] += 1
            last[0] = time.time() * 1000

    worker = Workers(client, dsn, queue, concurrency, lambda job: None,
                     listeners=[pgqueue.CallbackListener(on_finished=finished)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.time() * 1000
        worker.start()
        deadline = time.monotonic() + 600
        while conn.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]["completed"] < jobs:
            if time.monotonic() > deadline:
                sys.exit("drain-shared: not drained within 600 s")
            time.sleep(0.01)
        worker.stop()
    print(json.dumps({"client": client, "kind": "drain_part", "concurrency": concurrency, "jobs": count[0],
                      "start_ms": start, "end_ms": last[0]}))


def main():
    mode, args = sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]
    client = "python"
    if mode.startswith("aio-"):
        client, mode = "python-aio", mode[len("aio-"):]
    if mode == "latency" and len(args) == 4:
        latency(client, args[0], args[1], int(args[2]), int(args[3]) / 1000)
    elif mode == "pickup" and len(args) == 6:
        latency(client, args[0], args[1], int(args[2]), int(args[3]) / 1e6, int(args[4]), int(args[5]) / 1000)
    elif mode == "drain" and len(args) == 4:
        drain(client, args[0], args[1], int(args[2]), int(args[3]))
    elif mode == "drain-shared" and len(args) == 4:
        drain_shared(client, args[0], args[1], int(args[2]), int(args[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
