"""Graceful stop: SIGTERM to a worker process mid-job, stop() in-process."""

from __future__ import annotations

import json
import logging
import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import pgqueue
from conftest import DSN, job_info, job_status, queue_release_hidden, wait_until

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

    def drain(self, timeout: float = 0.5) -> list:
        """Every event printed so far (after the process exited: all of them)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                self.seen.append(self.events.get(timeout=0.05))
            except stdlib_queue.Empty:
                if self.p.poll() is not None:
                    break
        return self.seen

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
    job_id = pgqueue.push(conn, queue_name, {"sleep": 60}, max_attempts=3)
    assert proc.expect("started")["attempt"] == 1
    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGTERM)
    released = proc.expect("released", timeout=10)
    proc.expect("exit", timeout=10)
    assert proc.p.wait(10) == 0
    assert time.monotonic() - t0 < 6  # the grace (1 s) and the give-back, not the 60 s job
    assert (released["id"], released["status"]) == (job_id, "released")
    info = job_info(conn, job_id)
    # Pending again at once (due now, no lease), not stuck in processing, no error recorded.
    assert (info["status"], info["lease_until"], info["last_error"]) == ("pending", None, None)
    assert conn.execute("SELECT (queue_job(%s) ->> 'run_at')::timestamptz <= now()", (job_id,)).fetchone()[0]
    # The attempt is not burned: the claim counter moved on, max_attempts grew by one,
    # so the budget left is what it was before the interrupted claim.
    assert (info["attempts"], info["max_attempts"]) == (1, 4)
    seen = []

    def handler(job):
        seen.append((job.attempt, job.max_attempts))
        return {"attempt": job.attempt}

    t1 = time.monotonic()
    start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "completed", what="completed by another worker")
    assert time.monotonic() - t1 < 3, "claimable at once, not after a backoff or its lease"
    assert seen == [(2, 4)]  # attempt previous + 1, of one more: 2 attempts still left after it, as before
    info = job_info(conn, job_id)
    assert (info["result"], info["attempts"]) == ({"attempt": 2}, 2)
    # Never run twice to completion: the given-back run reported nothing.
    events = [e for e in proc.drain() if e.get("id") == job_id]
    assert [e["event"] for e in events] == ["started", "released"], events


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
    info = job_info(conn, job_id)
    assert info["status"] == "pending"
    assert info["max_attempts"] - info["attempts"] == 3  # the default budget of 3, untouched


def test_give_back_on_an_extension_without_queue_release_says_so(conn, queue_name, caplog):
    """An older extension (no queue_release): a clear error, no fallback that
    burns an attempt; the job is not lost, it comes back after its lease."""
    started = threading.Event()
    released = []

    def handler(job):
        started.set()
        time.sleep(5)

    w = pgqueue.Worker(DSN, {queue_name: handler}, grace=0.2, poll_interval=0.2,
                       listeners=[pgqueue.CallbackListener(on_released=lambda e: released.append(e.status))])
    job_id = pgqueue.push(conn, queue_name, {}, timeout=1, max_attempts=3)
    w.start()
    assert started.wait(10)
    with caplog.at_level(logging.ERROR, logger="pgqueue"), queue_release_hidden(conn):
        w.stop()
        assert w.wait(10)
    assert released == [None]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("queue_release" in m and "older than 0.2.0" in m for m in errors), errors
    info = job_info(conn, job_id)
    assert info["last_error"] is None  # nothing was failed on its behalf
    # Its lease (1 s) runs out and it is claimable again: never lost.
    wait_until(lambda: job_status(conn, job_id) in ("pending", "retrying"), timeout=15, what="back after its lease")


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
