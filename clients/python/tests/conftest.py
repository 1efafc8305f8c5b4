"""Fixtures of the pgqueue tests: a real cluster, real connections.

``run-tests.sh`` starts a throwaway cluster with the extension preloaded and
``queue.tick = 100ms`` and passes its DSN in ``PGQUEUE_TEST_DSN`` (and its
directory in ``PGQUEUE_TEST_CLUSTER``, for the restart test).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Optional

import psycopg
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

import pgqueue  # noqa: E402

DSN = os.environ.get("PGQUEUE_TEST_DSN", "host=127.0.0.1 port=55471 user=postgres dbname=postgres")
CLUSTER_DIR = os.environ.get("PGQUEUE_TEST_CLUSTER")
CLUSTER_SCRIPT = os.environ.get("PGQUEUE_CLUSTER_SCRIPT", "/work/main/scripts/cluster.sh")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout}s (last {value!r})")


def job_info(conn: psycopg.Connection, job_id: int) -> Optional[dict]:
    """``queue_job(id)``: everything about a job, or None."""
    return conn.execute("SELECT queue_job(%s)", (job_id,)).fetchone()[0]


def job_status(conn: psycopg.Connection, job_id: int) -> Optional[str]:
    """A job's status, or None for an unknown job."""
    info = job_info(conn, job_id)
    return None if info is None else info["status"]


def has_release(conn: psycopg.Connection) -> bool:
    """Whether the extension has ``queue_release(bigint, integer)`` yet."""
    return conn.execute("SELECT to_regprocedure('queue_release(bigint,integer)') IS NOT NULL").fetchone()[0]


@pytest.fixture
def dsn() -> str:
    """The test cluster's connection string."""
    return DSN


@pytest.fixture
def conn() -> Iterator[psycopg.Connection]:
    """An autocommit connection for setting up and checking."""
    with psycopg.connect(DSN, autocommit=True) as c:
        yield c


@pytest.fixture
def queue_name() -> str:
    """A queue no other test uses."""
    return "py-" + uuid.uuid4().hex[:12]


@pytest.fixture
def start_worker() -> Iterator[Callable[..., pgqueue.Worker]]:
    """Start ``Worker``s in the background; each is stopped after the test."""
    workers = []

    def start(handlers: dict, **kwargs: Any) -> pgqueue.Worker:
        kwargs.setdefault("poll_interval", 1.0)
        kwargs.setdefault("grace", 5.0)
        w = pgqueue.Worker(DSN, handlers, **kwargs)
        workers.append(w)
        w.start()
        return w

    yield start
    for w in workers:
        w.stop(grace=0)
    for w in workers:
        assert w.wait(15), f"worker {w.name} did not stop"


class Concurrency:
    """Counts handlers running at once (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> "Concurrency":
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.now -= 1
