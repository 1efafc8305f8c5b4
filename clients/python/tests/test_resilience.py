"""Lost connections and server restarts: the worker reconnects, loses nothing
and runs nothing twice."""

from __future__ import annotations

import collections
import datetime as dt
import subprocess
import threading
import time

import psycopg
import pytest

import pgqueue
from conftest import CLUSTER_DIR, CLUSTER_SCRIPT, DSN, job_info, job_status, wait_until


def worker_backends(conn, worker):
    return conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"pgqueue {worker.name}"[:63],)
    ).fetchall()


def test_terminated_backends_reconnect_and_go_on(conn, queue_name, start_worker):
    runs = collections.Counter()
    in_handler = threading.Event()

    def handler(job):
        runs[job.id] += 1
        if job.payload.get("slow"):
            in_handler.set()
            time.sleep(2.0)
        return {"attempt": job.attempt}

    # Polling every 30 s: after the kill only a re-established LISTEN wakes it quickly.
    w = start_worker({queue_name: handler}, concurrency=2, poll_interval=30, heartbeat_interval=60)
    wait_until(lambda: w.listening, what="listening")
    slow = pgqueue.push(conn, queue_name, {"slow": True}, timeout=dt.timedelta(seconds=60))
    assert in_handler.wait(10)
    before = worker_backends(conn, w)
    assert len(before) >= 2  # the LISTEN connection and a pool connection at least
    killed = conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (f"pgqueue {w.name}"[:63],)).fetchone()[0]
    assert killed == len(before)
    # The running job's ack goes out on a new connection: completed, attempt 1.
    wait_until(lambda: job_status(conn, slow) == "completed", timeout=15, what="slow job completed")
    assert job_info(conn, slow)["attempts"] == 1
    # LISTEN is back: a new job is picked up without waiting for the 30 s poll.
    wait_until(lambda: w.listening, timeout=15, what="listening again")
    time.sleep(0.3)
    t0 = time.monotonic()
    fresh = pgqueue.push(conn, queue_name, {})
    wait_until(lambda: job_status(conn, fresh) == "completed", timeout=10, what="job after reconnect")
    assert time.monotonic() - t0 < 5
    assert not set(p for (p,) in before) & set(p for (p,) in worker_backends(conn, w))
    assert runs == {slow: 1, fresh: 1}


@pytest.mark.skipif(not CLUSTER_DIR, reason="needs PGQUEUE_TEST_CLUSTER (run-tests.sh sets it)")
def test_server_restart_mid_job(conn, queue_name, start_worker):
    runs = collections.Counter()
    in_handler = threading.Event()

    def handler(job):
        runs[job.id] += 1
        if job.payload.get("slow"):
            in_handler.set()
            time.sleep(3.0)
        return {"attempt": job.attempt}

    w = start_worker({queue_name: handler}, concurrency=2, poll_interval=1, reconnect_max=1)
    wait_until(lambda: w.listening, what="listening")
    slow = pgqueue.push(conn, queue_name, {"slow": True})
    assert in_handler.wait(10)
    conn.close()
    subprocess.run([CLUSTER_SCRIPT, "restart", CLUSTER_DIR], check=True, timeout=120)
    with psycopg.connect(DSN, autocommit=True) as again:
        wait_until(lambda: job_status(again, slow) == "completed", timeout=30, what="slow job completed")
        assert job_info(again, slow)["attempts"] == 1
        fresh = pgqueue.push(again, queue_name, {})
        wait_until(lambda: job_status(again, fresh) == "completed", timeout=15, what="job after restart")
        assert runs == {slow: 1, fresh: 1}
