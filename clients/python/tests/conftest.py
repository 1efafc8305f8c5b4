"""Fixtures of the pgqueue tests: a real cluster, real connections.

``run-tests.sh`` starts a throwaway cluster with the extension preloaded and
``queue.tick = 100ms`` and passes its DSN in ``PGQUEUE_TEST_DSN`` (and its
directory in ``PGQUEUE_TEST_CLUSTER``, for the restart test).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
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

DSN = os.environ.get("PGQUEUE_TEST_DSN", "host=127.0.0.1 port=25471 user=postgres dbname=postgres")
CLUSTER_DIR = os.environ.get("PGQUEUE_TEST_CLUSTER")
CLUSTER_SCRIPT = os.environ.get("PGQUEUE_CLUSTER_SCRIPT", "/work/main/scripts/cluster.sh")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
BOUNCER_PORT = int(os.environ.get("PGQUEUE_TEST_PGBOUNCER_PORT", "25481"))
BOUNCER_DIR = os.path.join(REPO, ".run", "python-client-pgbouncer")


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


POISON_KINDS = ("exit", "nul", "far", "fine")
POISON_ERRORS = (("exit", "SystemExit: 2"), ("nul", "ValueError: bad\\x00byte"), ("far", "RetryIn: much later"))


def poison(job) -> str:
    """The body of a handler fed poison pills by ``job.payload["kind"]``: a
    SystemExit, an error text with a NUL, a retry delay beyond the server's
    queue.max_delay; "fine" returns "ok". POISON_ERRORS holds the start of
    the error each records."""
    kind = job.payload["kind"]
    if kind == "exit":
        sys.exit(2)
    if kind == "nul":
        raise ValueError("bad\x00byte")
    if kind == "far":
        raise pgqueue.RetryIn(dt.timedelta(days=7300), "much later")
    return "ok"


def dsn_params() -> dict:
    """The test DSN as a dict (host, port, user, dbname)."""
    return psycopg.conninfo.conninfo_to_dict(DSN)


@contextlib.contextmanager
def queue_release_hidden(conn: psycopg.Connection) -> Iterator[None]:
    """Make the server look like an extension without ``queue_release`` (older
    than 0.2.0) for the block, by renaming the function."""
    conn.execute("ALTER FUNCTION queue_release(bigint, integer) RENAME TO queue_release_hidden_by_test")
    try:
        yield
    finally:
        conn.execute("ALTER FUNCTION queue_release_hidden_by_test(bigint, integer) RENAME TO queue_release")


def _stop_leftover_bouncer() -> None:
    """A pgbouncer left running by an interrupted run still holds the port."""
    try:
        with open(os.path.join(BOUNCER_DIR, "pgbouncer.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "pgbouncer":
                return
        os.kill(pid, 15)
    except (OSError, ValueError):
        return
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.1)


@pytest.fixture(scope="session")
def bouncer() -> Iterator[str]:
    """A real PgBouncer in transaction mode in front of the test cluster
    (port 25481, files in ``.run/python-client-pgbouncer``); its DSN.

    Debian's pgbouncer refuses to run as root: it runs as ``postgres``, from
    a directory that user owns.
    """
    if not os.path.exists(PGBOUNCER):
        pytest.fail(f"pgbouncer is not installed ({PGBOUNCER}); run-tests.sh installs it with apt-get")
    params = dsn_params()
    _stop_leftover_bouncer()
    shutil.rmtree(BOUNCER_DIR, ignore_errors=True)
    os.makedirs(BOUNCER_DIR)
    ini = os.path.join(BOUNCER_DIR, "pgbouncer.ini")
    with open(os.path.join(BOUNCER_DIR, "users.txt"), "w") as f:
        f.write('"postgres" ""\n')
    with open(ini, "w") as f:
        f.write(f"""[databases]
postgres = host={params.get("host", "127.0.0.1")} port={params.get("port", "5432")} dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {BOUNCER_PORT}
unix_socket_dir =
auth_type = trust
auth_file = {BOUNCER_DIR}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
logfile = {BOUNCER_DIR}/pgbouncer.log
pidfile = {BOUNCER_DIR}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
""")
    cmd = [PGBOUNCER, "-d", ini]
    if os.geteuid() == 0:
        for path in [BOUNCER_DIR] + [os.path.join(BOUNCER_DIR, n) for n in os.listdir(BOUNCER_DIR)]:
            shutil.chown(path, "postgres", "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True)
    dsn = f"host=127.0.0.1 port={BOUNCER_PORT} user=postgres dbname=postgres"
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as c:
                c.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not start; see {BOUNCER_DIR}/pgbouncer.log")
            time.sleep(0.1)
    try:
        yield dsn
    finally:
        try:
            with open(os.path.join(BOUNCER_DIR, "pgbouncer.pid")) as f:
                os.kill(int(f.read().strip()), 15)
        except (OSError, ValueError):
            pass


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

    def start(handlers: dict, dsn: str = DSN, **kwargs: Any) -> pgqueue.Worker:
        kwargs.setdefault("poll_interval", 1.0)
        kwargs.setdefault("grace", 5.0)
        w = pgqueue.Worker(dsn, handlers, **kwargs)
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
