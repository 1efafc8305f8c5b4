"""Shared fixtures for the real-client tests.

Every test talks to a real cluster (started by scripts/run-tests.sh with the
extension preloaded and `queue.tick = 100ms`) over real connections.
"""
import json
import os
import subprocess
import time
import uuid

import psycopg
import pytest

DSN = os.environ.get("QUEUE_TEST_DSN", "host=127.0.0.1 port=25433 user=postgres dbname=postgres")
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


def wait_until(what, check, timeout=10.0):
    """Poll `check` until it returns a truthy value; that value. Fails after
    `timeout` seconds with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last {value!r})")
        time.sleep(0.02)


def wait_for_plain_pushes(conn, timeout=30.0):
    """Wait until a push in `conn`'s database may take the plain path
    (queue.push_mode() = 0): the database is served and a push has found
    that no queue has defaults, which the pushes made here find."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT queue.push_mode()").fetchone()[0] != 0:
        assert time.monotonic() < deadline, "the database was never served (push_mode stays non-zero)"
        conn.execute("SELECT queue_push('warm-up', '{}')")
        time.sleep(0.1)


def push_calls(conn, sql, args=()):
    """Run `sql` in a transaction of its own: its first column (a push's id)
    and the SQL functions it called, from pg_stat_xact_user_functions
    ({"queue_push": 1} alone is a plain push; the general path calls
    queue.push_general)."""
    def counts():
        return dict(conn.execute(
            "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE schemaname IN ('queue', 'public')"
        ).fetchall())

    # Counts not yet flushed to the shared statistics carry over from the
    # session's earlier transactions: the difference is this statement's.
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'all'")
        before = counts()
        first = conn.execute(sql, args).fetchone()[0]
        after = counts()
    return first, {f: n - before.get(f, 0) for f, n in after.items() if n != before.get(f, 0)}


def dsn_for(db):
    """The test cluster's DSN for database `db`."""
    return f"{DSN.replace('dbname=postgres', '')} dbname={db}"


def log_plans(conn, *settings):
    """Have auto_explain log the JSON plan of every statement `conn` runs,
    nested ones included, under the extra session `settings` (such as
    "jit = on"); returns the list the plans are appended to, in the order
    their executors end (a statement's nested statements before it)."""
    plans = []

    def on_notice(diag):
        text = diag.message_primary or ""
        if "plan:" in text:
            plans.append(json.loads(text.split("plan:", 1)[1]))

    conn.add_notice_handler(on_notice)
    conn.execute("LOAD 'auto_explain'")
    for setting in (*settings, "auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                    "auto_explain.log_format = json", "client_min_messages = log"):
        conn.execute(f"SET {setting}")
    return plans


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


def remove_namespace(prefix):
    """Delete everything whose name starts with `prefix` (jobs, history,
    archived times, schedules, workers), straight from the tables so that
    even jobs the API cannot handle go; recount the gauges, flush what
    shared memory still holds, and drop the namespace's counter rows."""
    with connect() as conn:
        conn.execute("SET statement_timeout = '60s'")
        with conn.transaction():
            for sql in (
                "DELETE FROM queue.schedules WHERE starts_with(queue, %(p)s) OR starts_with(name, %(p)s)",
                "DELETE FROM queue.jobs WHERE starts_with(queue, %(p)s)",
                "DELETE FROM queue.finished_jobs WHERE starts_with(queue, %(p)s)",
                "DELETE FROM queue.job_times WHERE starts_with(queue, %(p)s)",
                "DELETE FROM queue.workers WHERE starts_with(worker, %(p)s)",
            ):
                conn.execute(sql, {"p": prefix})
        for _ in range(50):
            try:
                conn.execute("SELECT queue.recount_stats()")
                conn.execute("SELECT queue_tick()")  # flushes shared memory into queue.stats
                break
            except psycopg.errors.LockNotAvailable:
                time.sleep(0.1)
        # Under the counters' advisory lock, as the flush takes it: a flush
        # upserting these rows meanwhile would otherwise deadlock with us.
        with conn.transaction():
            conn.execute("SELECT queue.counters_lock(false)")
            conn.execute("DELETE FROM queue.stats WHERE starts_with(queue, %(p)s)", {"p": prefix})
            conn.execute("DELETE FROM queue.stats_minutes WHERE starts_with(queue, %(p)s)", {"p": prefix})
