"""Graceful stop: SIGTERM to a worker process mid-job, stop() in-process."""

from __future__ import annotations

import json
import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import pgqueue
from conftest import DSN, has_release, job_info, job_status, wait_until

WORKER_PROC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_proc.py")


class Proc:
    """A worker subprocess and the JSON events it prints."""

    def __init__(self, queue: str, grace: float) -> None:
        self.p = subprocess.Popen([sys.executable, WORKER_PROC, DSN, queue, str(grace)],
                                  stdout=subprocess.PIPE, text=True)
        self.events: "stdlib_queue.Queue[dict]" = stdlib_queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.events.put(json.loads(line))

    def expect(self, event: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} event within {timeout}s; saw {self.seen}")
            try:
                e = self.events.get(timeout=left)
            except stdlib_queue.Empty:
                continue
            self.seen.append(e)
            if e["event"] == event:
                return e

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def proc_factory():
    procs = []

    def make(queue: str, grace: float) -> Proc:
        p = Proc(queue, grace)
        procs.append(p)
        p.expect("listening", timeout=15)
        return p

    yield make
    for p in procs:
        p.kill()


def test_sigterm_lets_the_running_job_finish_within_grace(conn, queue_name, proc_factory):
    proc = proc_factory(queue_name, grace=10)
    job_id = pgqueue.push(conn, queue_name, {"sleep": 2})
    proc.expect("started")
    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    later = pgqueue.push(conn, queue_name, {"sleep": 0})  # pushed after the stop: not claimed
    done = proc.expect("finished", timeout=10)
    assert (done["id"], done["status"]) == (job_id, "completed")
    proc.expect("exit", timeout=10)
    assert proc.p.wait(10) == 0
    assert 1.0 < time.monotonic() - t0 < 8
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["result"]) == ("completed", 1, {"slept": 2})
    assert job_status(conn, later) == "pending"
    assert job_info(conn, later)["attempts"] == 0


def test_sigterm_past_grace_gives_the_job_back(conn, queue_name, proc_factory, start_worker):
    proc = proc_factory(queue_name, grace=1)
    job_id = pgqueue.push(conn, queue_name, {"sleep": 60})
    proc.expect("started")
    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    released = proc.expect("released", timeout=10)
    proc.expect("exit", timeout=10)
    assert proc.p.wait(10) == 0
    assert time.monotonic() - t0 < 6  # the grace (1 s) and the give-back, not the 60 s job
    assert released["id"] == job_id
    info = job_info(conn, job_id)
    # Never lost: the job is claimable again at once, not stuck in processing.
    assert info["status"] == "pending"
    if not has_release(conn):
        # Until queue_release exists the worker fails the attempt with retry_in 0.
        assert info["attempts"] == 1 and "worker stopped" in info["last_error"]
        pytest.skip("queue_release not installed yet")
    assert released["status"] == "released"
    assert info["attempts"] == 0  # the interrupted attempt does not count
    start_worker({queue_name: lambda job: {"attempt": job.attempt}})
    wait_until(lambda: job_status(conn, job_id) == "completed", what="completed by another worker")
    assert job_info(conn, job_id)["result"] == {"attempt": 1}


def test_second_signal_gives_back_at_once(conn, queue_name, proc_factory):
    proc = proc_factory(queue_name, grace=60)
    job_id = pgqueue.push(conn, queue_name, {"sleep": 60})
    proc.expect("started")
    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.p.poll() is None  # still within its 60 s grace
    proc.p.send_signal(signal.SIGINT)
    assert proc.expect("released", timeout=10)["id"] == job_id
    assert proc.p.wait(10) == 0
    assert time.monotonic() - t0 < 6
    assert job_status(conn, job_id) == "pending"


def test_stop_in_process_claims_nothing_more(conn, queue_name):
    ran = []
    w = pgqueue.Worker(DSN, {queue_name: lambda job: ran.append(job.id)}, grace=5, poll_interval=0.2)
    w.start()
    first = pgqueue.push(conn, queue_name, {})
    wait_until(lambda: job_status(conn, first) == "completed", what="first job")
    w.stop()
    assert w.wait(10)
    later = pgqueue.push(conn, queue_name, {})
    time.sleep(0.6)
    assert ran == [first]
    assert job_status(conn, later) == "pending"
    # Its last heartbeat says it stopped.
    info = conn.execute("SELECT info FROM queue_workers() WHERE worker = %s", (w.name,)).fetchone()[0]
    assert info["state"] == "stopped"
