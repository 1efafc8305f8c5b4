"""Shared fixtures for the real-client tests.

Every test talks to a real cluster (started by scripts/run-tests.sh with the
extension preloaded and `queue.tick = 100ms`) over real connections.
"""
import os
import subprocess
import time
import uuid

import psycopg
import pytest

DSN = os.environ.get("QUEUE_TEST_DSN", "host=127.0.0.1 port=55433 user=postgres dbname=postgres")
CLUSTER_DIR = os.environ.get("QUEUE_TEST_CLUSTER")


def wait_for(conn, sql, args, expected, timeout=5.0):
    """Poll `sql` until its first column equals `expected`; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = conn.execute(sql, args).fetchone()[0]
        if value == expected:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{sql} {args}: never became {expected!r}, last {value!r}")


def connect(autocommit=True):
    return psycopg.connect(DSN, autocommit=autocommit)


@pytest.fixture
def conn():
    with connect() as c:
        yield c


@pytest.fixture
def queue_name():
    """A queue name no other test uses, so tests never see each other's jobs."""
    return "t-" + uuid.uuid4().hex[:12]


def pg_ctl(*args):
    """Run pg_ctl on the test cluster as the postgres user."""
    assert CLUSTER_DIR, "QUEUE_TEST_CLUSTER is not set"
    bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    cmd = [f"{bindir}/pg_ctl", "-D", f"{CLUSTER_DIR}/data", *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    # Not RUST_BACKTRACE: see scripts/cluster.sh.
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
