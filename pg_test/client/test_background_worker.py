"""The maintenance worker inside Postgres, observed from client connections:
it promotes delayed jobs and retries (with the NOTIFY), expires leases, and
comes back after being terminated. The test cluster runs queue.tick = 100ms."""
import time

from conftest import connect, wait_for

TICK = 0.1


def worker_pid(conn):
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'queue maintenance'"
    ).fetchone()
    return row[0] if row else None


def test_workers_are_visible_in_pg_stat_activity(conn):
    rows = conn.execute(
        """SELECT backend_type, application_name, datname FROM pg_stat_activity
            WHERE backend_type LIKE 'queue %' ORDER BY backend_type"""
    ).fetchall()
    # The launcher serves the cluster from no database; the test cluster
    # restricts service to postgres (queue.database), which has three.
    assert rows == [
        ("queue launcher", "queue launcher", None),
        ("queue maintenance", "queue maintenance", "postgres"),
        ("queue notifier", "queue notifier", "postgres"),
        ("queue scheduler", "queue scheduler", "postgres"),
    ]


def test_delayed_job_is_promoted_and_notified_within_a_tick(queue_name):
    with connect() as listener, connect() as producer:
        listener.execute(f'LISTEN "queue_{queue_name}"')
        job = producer.execute(
            "SELECT queue_push(%s, '{}', delay => '500 milliseconds')", (queue_name,)
        ).fetchone()[0]
        run_at = producer.execute("SELECT run_at FROM queue.all_jobs WHERE id = %s", (job,)).fetchone()[0]
        assert listener.execute("SELECT count(*) FROM queue_pop(%s)", (queue_name,)).fetchone()[0] == 0
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert notes and notes[0].channel == f"queue_{queue_name}"
        heard_at = listener.execute("SELECT clock_timestamp()").fetchone()[0]
        lateness = (heard_at - run_at).total_seconds()
        assert 0 <= lateness < TICK + 0.25, f"NOTIFY {lateness:.3f}s after run_at"
        popped = listener.execute("SELECT id FROM queue_pop(%s)", (queue_name,)).fetchone()
        assert popped == (job,)
        print(f"delayed job: NOTIFY heard {lateness * 1000:.1f} ms after run_at")


def test_retry_backoff_is_promoted_by_the_worker(queue_name):
    with connect() as conn:
        conn.execute(f'LISTEN "queue_{queue_name}"')
        job = conn.execute(
            "SELECT queue_push(%s, '{}', backoff_base => '200 milliseconds')", (queue_name,)
        ).fetchone()[0]
        list(conn.notifies(timeout=0.2))  # drain the push's own notification
        assert conn.execute("SELECT id FROM queue_pop(%s)", (queue_name,)).fetchone() == (job,)
        assert conn.execute("SELECT queue_fail(%s, 'transient')", (job,)).fetchone() == ("retrying",)
        # The worker protocol: pop; only when that finds nothing, wait.
        assert conn.execute("SELECT count(*) FROM queue_pop(%s)", (queue_name,)).fetchone() == (0,)
        notes = list(conn.notifies(timeout=5, stop_after=1))
        assert notes, "no NOTIFY after the backoff"
        row = conn.execute("SELECT id, attempt FROM queue_pop(%s)", (queue_name,)).fetchone()
        assert row == (job, 2)
        assert conn.execute("SELECT queue_ack(%s, attempt => 2)", (job,)).fetchone() == (True,)


def test_expired_lease_is_retried_then_expired(queue_name):
    with connect() as conn:
        conn.execute(f'LISTEN "queue_{queue_name}"')
        job = conn.execute(
            "SELECT queue_push(%s, '{}', timeout => '200 milliseconds', max_attempts => 2, backoff_base => '0')",
            (queue_name,),
        ).fetchone()[0]
        list(conn.notifies(timeout=0.2))  # drain the push's own notification
        assert conn.execute("SELECT attempt FROM queue_pop(%s)", (queue_name,)).fetchone() == (1,)
        # This worker never acks. It finds the queue empty and sleeps: the
        # maintenance worker takes the job back when the lease runs out, and
        # the NOTIFY of its promotion wakes the worker.
        assert conn.execute("SELECT count(*) FROM queue_pop(%s)", (queue_name,)).fetchone() == (0,)
        assert list(conn.notifies(timeout=5, stop_after=1)), "no NOTIFY after the lease expired"
        assert conn.execute("SELECT attempt FROM queue_pop(%s)", (queue_name,)).fetchone() == (2,)
        wait_for(conn, "SELECT status::text FROM queue.all_jobs WHERE id = %s", (job,), "expired")
        err = conn.execute("SELECT last_error FROM queue.all_jobs WHERE id = %s", (job,)).fetchone()[0]
        assert err.startswith("lease expired")


def test_released_group_wakes_a_sleeping_worker(queue_name):
    """Ack of a group's running job from another connection makes the
    group's next job claimable at once, and its NOTIFY wakes the worker."""
    with connect() as worker, connect() as other:
        worker.execute(f'LISTEN "queue_{queue_name}"')
        first = other.execute("SELECT queue_push(%s, '{}', serial_group => 'g')", (queue_name,)).fetchone()[0]
        second = other.execute("SELECT queue_push(%s, '{}', serial_group => 'g')", (queue_name,)).fetchone()[0]
        assert other.execute("SELECT id FROM queue_pop(%s)", (queue_name,)).fetchone() == (first,)
        list(worker.notifies(timeout=0.2))
        assert worker.execute("SELECT count(*) FROM queue_pop(%s)", (queue_name,)).fetchone() == (0,)
        other.execute("SELECT queue_ack(%s)", (first,))
        assert list(worker.notifies(timeout=5, stop_after=1)), "no NOTIFY when the group was freed"
        assert worker.execute("SELECT id FROM queue_pop(%s)", (queue_name,)).fetchone() == (second,)


def test_worker_restarts_after_terminate(queue_name):
    with connect() as conn:
        old = worker_pid(conn)
        assert old
        assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone() == (True,)
        deadline = time.monotonic() + 10
        new = None
        while time.monotonic() < deadline:
            new = worker_pid(conn)
            if new and new != old:
                break
            time.sleep(0.05)
        assert new and new != old, "the worker did not come back"
        # The new worker does the job.
        job = conn.execute(
            "SELECT queue_push(%s, '{}', delay => '100 milliseconds')", (queue_name,)
        ).fetchone()[0]
        wait_for(conn, "SELECT status::text FROM queue.all_jobs WHERE id = %s", (job,), "pending")


def test_many_due_jobs_are_promoted_in_bounded_batches(queue_name):
    """100,000 jobs due at once: promoted in 1,000-row transactions, while
    claims on the queue keep answering quickly (no long lock)."""
    with connect() as conn:
        conn.execute(
            "SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[100000]), delay => '2 seconds')",
            (queue_name,),
        )
        started = time.monotonic()
        slowest_claim = 0.0
        claimed = 0
        while time.monotonic() - started < 60:
            t = time.monotonic()
            claimed += conn.execute("SELECT count(*) FROM queue_pop(%s, batch => 10)", (queue_name,)).fetchone()[0]
            slowest_claim = max(slowest_claim, time.monotonic() - t)
            pending = conn.execute(
                "SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'scheduled'", (queue_name,)
            ).fetchone()[0]
            if pending == 0:
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        assert pending == 0, "not all due jobs were promoted"
        assert claimed > 0
        assert slowest_claim < 1.0, f"a claim waited {slowest_claim:.2f}s during promotion"
        print(f"100000 due jobs promoted {took:.2f}s after the push (2 s delay); "
              f"slowest claim meanwhile {slowest_claim * 1000:.0f} ms")
