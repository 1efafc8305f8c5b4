"""queue_throughput: per-minute counts from the counters the maintenance flush
moves, exact, per queue, within a tick or two, and refused for a bad window."""
import time

import psycopg
import pytest

from conftest import connect


def totals(conn, queue, since="1 hour"):
    return conn.execute(
        "SELECT coalesce(sum(pushed), 0), coalesce(sum(completed), 0), coalesce(sum(failed), 0),"
        "       coalesce(sum(retried), 0), count(*) FROM queue_throughput(%s, %s)",
        (queue, since),
    ).fetchone()


def test_throughput_counts_every_push_ack_and_failure_of_the_queue(queue_name):
    with connect() as c:
        c.execute("SELECT queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[30]))", (queue_name,))
        c.execute("SELECT queue_push(%s, '{}')", (queue_name + "-other",))
        jobs = c.execute("SELECT id, attempt FROM queue_pop(%s, 'w', 26)", (queue_name,)).fetchall()
        for job, attempt in jobs[:20]:
            assert c.execute("SELECT queue_ack(%s, NULL, %s)", (job, attempt)).fetchone() == (True,)
        for job, attempt in jobs[20:25]:
            c.execute("SELECT queue_fail(%s, 'dead', %s, permanent => true)", (job, attempt))
        job, attempt = jobs[25]
        assert c.execute("SELECT queue_fail(%s, 'again', %s)", (job, attempt)).fetchone() == ("retrying",)
        # The flush runs every tick (100 ms here); one flush may carry the
        # pushes and a later one the acks: wait for all of them.
        deadline = time.monotonic() + 15
        while True:
            pushed, completed, failed, retried, minutes = totals(c, queue_name)
            if (pushed, completed, failed, retried) == (30, 20, 5, 1) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (pushed, completed, failed, retried) == (30, 20, 5, 1)
        assert 1 <= minutes <= 2, "one row per minute with activity"
        # Another queue's counts are its own; NULL lists every queue.
        assert totals(c, queue_name + "-other")[0] == 1
        queues = {r[0] for r in c.execute("SELECT queue_name FROM queue_throughput(NULL, '10 minutes')").fetchall()}
        assert {queue_name, queue_name + "-other"} <= queues
        rows = c.execute("SELECT minute FROM queue_throughput(%s)", (queue_name,)).fetchall()
        assert all(r[0].second == 0 and r[0].microsecond == 0 for r in rows), "minute boundaries"


def test_a_bad_window_is_refused(queue_name):
    with connect() as c:
        for since in ("0", "-1 hour", None, "10000 years"):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                c.execute("SELECT * FROM queue_throughput(%s, %s)", (queue_name, since))
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT * FROM queue_throughput('bad name!', '1 hour')")
