"""Background workers that never fall over (src/services.rs): an ERROR inside
a duty is logged once with its SQLSTATE, the duty runs again next tick, the
other duties go on, and the worker is never restarted because of it. Between
passes the workers are idle in pg_stat_activity."""
import os
import time

import pytest

from conftest import CLUSTER_DIR, connect, wait_for


def server_log():
    """The test cluster's server log, as text."""
    with open(os.path.join(CLUSTER_DIR, "server.log"), errors="replace") as f:
        return f.read()


def worker_pids(conn):
    """backend_type -> pid of the three workers."""
    return dict(conn.execute(
        "SELECT backend_type, pid FROM pg_stat_activity WHERE backend_type LIKE 'queue %'").fetchall())


def reload_config(conn):
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)


@pytest.fixture
def log_mark():
    """Where the server log ends now: the test reads what comes after."""
    assert CLUSTER_DIR, "QUEUE_TEST_CLUSTER is not set"
    return len(server_log())


def test_a_bad_timezone_fails_the_scheduler_pass_not_the_worker(queue_name, log_mark):
    """queue.timezone set to nonsense: the scheduler pass raises 22023 on
    every tick. It is logged once, the scheduler keeps its pid, maintenance
    goes on promoting jobs, and the first good pass after the fix says so."""
    with connect() as c:
        c.execute("SELECT queue_schedule(%s, '*/5 * * * *', %s)", (queue_name, queue_name))
        before = worker_pids(c)
        assert len(before) == 4, "the launcher and the three services of postgres"
        c.execute("ALTER SYSTEM SET queue.timezone = 'Not/A_Zone'")
        reload_config(c)
        try:
            # due only now that every worker runs with the bad setting
            c.execute("UPDATE queue.schedules SET next_run_at = now() - interval '1 minute' WHERE name = %s",
                      (queue_name,))
            time.sleep(1.5)  # many ticks of the scheduler (at most 1 s apart) and of maintenance (100 ms)
            job = c.execute("SELECT queue_push(%s, '{}', delay => '50 milliseconds')", (queue_name,)).fetchone()[0]
            wait_for(c, "SELECT status::text FROM queue.jobs WHERE id = %s", (job,), "pending")
            assert worker_pids(c) == before, "no worker was restarted"
        finally:
            c.execute("ALTER SYSTEM RESET queue.timezone")
            reload_config(c)
        wait_for(c, "SELECT last_job_id IS NOT NULL FROM queue.schedules WHERE name = %s", (queue_name,), True)
        c.execute("SELECT queue_unschedule(%s)", (queue_name,))
        log = server_log()[log_mark:]
        failed = [line for line in log.splitlines() if "queue scheduler: a pass failed" in line]
        assert len(failed) == 1, log
        assert "SQLSTATE 22023" in failed[0] and "Not/A_Zone" in failed[0]
        assert "queue scheduler: a pass succeeds again after" in log
        assert "terminated by signal" not in log and "exited with exit code" not in log


def test_statement_and_lock_timeouts_inside_duties(queue_name, log_mark):
    """A duty that hits lock_timeout (its table locked by someone else) or
    statement_timeout fails alone; the worker stays and recovers."""
    with connect() as c, connect(autocommit=False) as locker:
        # this session keeps its own limits while the server's change
        c.execute("SET statement_timeout = 0")
        c.execute("SET lock_timeout = 0")
        before = worker_pids(c)
        c.execute("ALTER SYSTEM SET lock_timeout = '20ms'")
        reload_config(c)
        try:
            c.execute("SELECT queue_push(%s, '{}', delay => '10 milliseconds')", (queue_name,))
            # The maintenance pass cannot lock the jobs it must promote.
            locker.execute("LOCK TABLE queue.jobs IN ACCESS EXCLUSIVE MODE")
            time.sleep(1.0)
            locker.rollback()
            wait_for(c, "SELECT count(*) FROM queue.jobs WHERE queue = %s AND status = 'scheduled'",
                     (queue_name,), 0)
        finally:
            c.execute("ALTER SYSTEM RESET lock_timeout")
            reload_config(c)
        c.execute("ALTER SYSTEM SET statement_timeout = '1ms'")
        reload_config(c)
        try:
            time.sleep(0.8)
        finally:
            c.execute("ALTER SYSTEM RESET statement_timeout")
            reload_config(c)
        job = c.execute("SELECT queue_push(%s, '{}', delay => '10 milliseconds')", (queue_name,)).fetchone()[0]
        wait_for(c, "SELECT status::text FROM queue.jobs WHERE id = %s", (job,), "pending")
        assert worker_pids(c) == before, "no worker was restarted"
        log = server_log()[log_mark:]
        assert "SQLSTATE 55P03" in log, log
        assert "terminated by signal" not in log and "exited with exit code" not in log


def test_a_schedule_whose_push_waits_past_the_passes_lock_timeout_still_fires(queue_name):
    """A pass waits at most 2 s for a lock (src/services.rs). A schedule whose
    push waited longer is not a failed schedule: it stays due and fires once
    the lock is free, a one-time schedule included."""
    name = queue_name + "-once"
    with connect() as c, connect(autocommit=False) as locker:
        c.execute("SELECT queue_schedule(%s, 'at ' || (now() + interval '300 milliseconds'), %s)", (name, queue_name))
        locker.execute("LOCK TABLE queue.jobs IN SHARE MODE")
        time.sleep(3.0)
        locker.rollback()
        try:
            wait_for(c, "SELECT count(*) FROM queue.jobs WHERE queue = %s", (queue_name,), 1, timeout=5)
            assert c.execute("SELECT last_error, enabled, last_job_id IS NOT NULL FROM queue.schedules WHERE name = %s",
                             (name,)).fetchone() == (None, False, True)
        finally:
            c.execute("SELECT queue_unschedule(%s)", (name,))


def test_workers_are_idle_between_passes():
    """Sampled many times, the workers are 'idle' nearly always: monitoring
    does not count them busy, and scripts that end long-active sessions
    leave them be."""
    with connect() as c:
        states = []
        for _ in range(100):
            states += [r[0] for r in c.execute(
                "SELECT state FROM pg_stat_activity WHERE backend_type LIKE 'queue %'").fetchall()]
            time.sleep(0.01)
        idle = states.count("idle") / len(states)
        assert idle > 0.9, states
        assert "active" not in set(r[0] for r in c.execute(
            "SELECT state FROM pg_stat_activity WHERE backend_type = 'queue notifier'").fetchall())
