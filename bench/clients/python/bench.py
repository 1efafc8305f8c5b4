#!/usr/bin/env python3
"""The Python client's driver of bench/clients/run.sh (public API of pgqueue only).

    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py latency DSN QUEUE JOBS INTERVAL_MS
    PYTHONPATH=clients/python/src python3 bench/clients/python/bench.py drain   DSN QUEUE JOBS CONCURRENCY

latency: an idle threaded pgqueue.Worker (concurrency 1, LISTEN mode) started
in this process; a producer connection of this process pushes JOBS jobs one at
a time, INTERVAL_MS apart, with pgqueue.push (autocommit). Latency = the
handler's time.monotonic() at its start minus the push's return. Prints one
JSON line with every sample (ms).

drain: JOBS jobs prefilled with one pgqueue.push_batch, then a Worker with a
no-op handler at CONCURRENCY; the time from start() until the on_finished
listener (called after the ack) has fired JOBS times, checked against
queue_stats(queue). Prints one JSON line with jobs/s.
"""
import json
import sys
import threading
import time

import psycopg

import pgqueue


def payload(n):
    return {"n": n, "s": "x" * 64}


def latency(dsn, queue, jobs, interval_ms):
    started = {}
    done = threading.Semaphore(0)

    def handler(job):
        started[job.id] = time.monotonic()

    worker = pgqueue.Worker(dsn, {queue: handler}, concurrency=1,
                            listeners=[pgqueue.CallbackListener(on_finished=lambda e: done.release())])
    worker.start()
    time.sleep(1.0)  # connected, LISTEN in place, first (empty) claim done: idle
    pushed = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        next_at = time.monotonic()
        for n in range(jobs):
            next_at += interval_ms / 1000
            time.sleep(max(0.0, next_at - time.monotonic()))
            job_id = pgqueue.push(conn, queue, payload(n))
            pushed[job_id] = time.monotonic()
    deadline = time.monotonic() + 30
    for _ in range(jobs):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            sys.exit("latency: not every job finished within 30 s")
    worker.stop()
    worker.wait()
    ms = [(started[j] - t) * 1000 for j, t in pushed.items()]
    print(json.dumps({"client": "python", "kind": "latency", "jobs": jobs, "ms": ms}))


def drain(dsn, queue, jobs, concurrency):
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = pgqueue.push_batch(conn, queue, [payload(n) for n in range(jobs)])
        assert len(ids) == jobs
        count = [0]
        lock = threading.Lock()
        all_done = threading.Event()

        def finished(event):
            with lock:
                count[0] += 1
                if count[0] == jobs:
                    all_done.set()

        worker = pgqueue.Worker(dsn, {queue: lambda job: None}, concurrency=concurrency,
                                listeners=[pgqueue.CallbackListener(on_finished=finished)])
        t0 = time.monotonic()
        worker.start()
        if not all_done.wait(600):
            sys.exit("drain: not finished within 600 s")
        seconds = time.monotonic() - t0
        worker.stop()
        worker.wait()
        stats = conn.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]
        if stats["completed"] != jobs:
            sys.exit(f"drain: queue_stats says {stats['completed']} completed, expected {jobs}")
    print(json.dumps({"client": "python", "kind": "drain", "concurrency": concurrency, "jobs": jobs,
                      "seconds": seconds, "rate": jobs / seconds}))


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ("latency", "drain"):
        sys.exit(__doc__)
    mode, dsn, queue, jobs, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    (latency if mode == "latency" else drain)(dsn, queue, jobs, n)


if __name__ == "__main__":
    main()
