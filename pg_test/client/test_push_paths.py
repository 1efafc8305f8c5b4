"""queue_push has two paths to the same job.

The plain push (due now, no serial group, dedupe key, dependency, tag or
batch, and no access rule or queue default anywhere in the database:
queue.push_mode() = 0) is one INSERT whose RETURNING counts the job and wakes
the queue through queue.pushed. Every other push takes the general path. Both
must store the same row, count it the same, wake the same listeners and
waiters, and refuse bad input with the same SQLSTATE, leaving nothing behind.

The plain path only exists in a database the background workers serve (the
others always read queue.queue_settings, as if defaults may exist), and a
database where queue_configure was ever called keeps the general path, so
these tests run in a database of their own, served once the launcher finds
it. Which path a push took is read from pg_stat_xact_user_functions.
"""
import threading
import time

import psycopg
import pytest

from conftest import DSN, dsn_for as dsn

DB = "push_paths"
QUEUE = "paths"
OPTIONS = {
    "priority": 3, "max_attempts": 7, "timeout": "2 minutes", "backoff_base": "1 second",
    "backoff_max": "1 minute", "retry_delays": "{1 second, 5 seconds}",
}


@pytest.fixture(scope="module")
def db():
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DB}"')
        # The test cluster serves only postgres (queue.database); this
        # database too while the module runs. The setting reloads on SIGHUP.
        served = admin.execute("SHOW queue.database").fetchone()[0]
        admin.execute(f"ALTER SYSTEM SET queue.database = '{served}, {DB}'")
        admin.execute("SELECT pg_reload_conf()")
        try:
            with psycopg.connect(dsn(DB), autocommit=True) as c:
                c.execute("CREATE EXTENSION queue")
                # Served once the launcher has found the database; the first
                # push there that reads no defaults records that none exist.
                deadline = time.monotonic() + 30
                while c.execute("SELECT queue.push_mode()").fetchone()[0] != 0:
                    assert time.monotonic() < deadline, "the database was never served (push_mode stays non-zero)"
                    c.execute("SELECT queue_push('warm-up', '{}')")
                    time.sleep(0.1)
                c.execute("DELETE FROM queue.jobs")
                c.execute("SELECT queue.recount_stats()")
            yield dsn(DB)
        finally:
            admin.execute("ALTER SYSTEM RESET queue.database")
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def push(conn, sql, args=()):
    """Run a push in a transaction of its own; its id and the functions of
    schema queue it called (pushed: the plain path, tally: the general)."""
    def counts():
        return dict(conn.execute(
            "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE schemaname = 'queue'"
        ).fetchall())

    # Counts not yet flushed to the shared statistics carry over from the
    # session's earlier transactions: the difference is this push's.
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'all'")
        before = counts()
        job = conn.execute(sql, args).fetchone()[0]
        after = counts()
    return job, {f: n - before.get(f, 0) for f, n in after.items() if n != before.get(f, 0)}


def row_of(conn, job):
    return conn.execute(
        "SELECT to_jsonb(j) - 'id' - 'created_at' - 'run_at', run_at = created_at FROM queue.jobs j WHERE id = %s",
        (job,),
    ).fetchone()


def with_options(queue):
    return ("SELECT queue_push(%(q)s, '{\"n\": 1}', priority => %(priority)s, max_attempts => %(max_attempts)s, "
            "timeout => %(timeout)s, backoff_base => %(backoff_base)s, backoff_max => %(backoff_max)s, "
            "retry_delays => %(retry_delays)s)", {"q": queue, **OPTIONS})


class Rule:
    """An access rule for a role that never connects: every push of the
    database takes the general path while it exists."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("DROP ROLE IF EXISTS regress_paths_other")
        self.conn.execute("CREATE ROLE regress_paths_other")
        self.conn.execute("SELECT queue_grant_access('regress_paths_other', 'produce', 'elsewhere')")
        assert self.conn.execute("SELECT queue.push_mode()").fetchone()[0] == 1

    def __exit__(self, *exc):
        self.conn.execute("SELECT queue_revoke_access('regress_paths_other')")
        self.conn.execute("DROP ROLE regress_paths_other")
        assert self.conn.execute("SELECT queue.push_mode()").fetchone()[0] == 0


def test_both_paths_store_and_count_the_same_job(db):
    with psycopg.connect(db, autocommit=True) as conn:
        plain, calls = push(conn, *with_options(QUEUE))
        assert calls.get("pushed") == 1 and "tally" not in calls, calls
        plain_bare, calls = push(conn, "SELECT queue_push(%s, '{\"n\": 1}')", (QUEUE,))
        assert calls.get("pushed") == 1, calls
        with Rule(conn):
            general, calls = push(conn, *with_options(QUEUE))
            assert calls.get("tally") == 1 and "pushed" not in calls, calls
            general_bare, _ = push(conn, "SELECT queue_push(%s, '{\"n\": 1}')", (QUEUE,))

        assert row_of(conn, plain) == row_of(conn, general)
        assert row_of(conn, plain_bare) == row_of(conn, general_bare)
        fields, due_at_push = row_of(conn, plain)
        assert due_at_push
        assert fields["status"] == "pending" and fields["priority"] == 3 and fields["max_attempts"] == 7
        assert fields["retry_delays"] == ["00:00:01", "00:00:05"] and fields["group_waiting"] is False
        assert row_of(conn, plain_bare)[0]["max_attempts"] == 3

        stats = conn.execute("SELECT queue_stats(%s)", (QUEUE,)).fetchone()[0]
        assert (stats["pending"], stats["total_pushed"]) == (4, 4), stats
        assert stats["priority_breakdown"] == {"normal": 2, "3": 2}, stats
        exact = conn.execute("SELECT count(*) FROM queue.jobs WHERE queue = %s AND status = 'pending'", (QUEUE,)).fetchone()[0]
        assert exact == 4


BAD = [
    ("SELECT queue_push(NULL, '{}')", ()),
    ("SELECT queue_push(%s, NULL)", (QUEUE,)),
    ("SELECT queue_push('bad name!', '{}')", ()),
    ("SELECT queue_push(%s, '{}', max_attempts => 0)", (QUEUE,)),
    ("SELECT queue_push(%s, '{}', timeout => '0 seconds')", (QUEUE,)),
    ("SELECT queue_push(%s, '{}', backoff_base => '1 hour', backoff_max => '1 minute')", (QUEUE,)),
    ("SELECT queue_push(%s, '{}', retry_delays => '{1 minute, NULL}')", (QUEUE,)),
    ("SELECT queue_push(%s, jsonb_build_object('big', repeat('x', 2000)))", (QUEUE,)),
]


def totals(conn):
    """Jobs stored, and pending and pushed as the counters say."""
    stats = conn.execute("SELECT queue_stats()").fetchone()[0]
    return conn.execute("SELECT count(*) FROM queue.jobs").fetchone()[0], stats["pending"], stats["total_pushed"]


def sqlstate_of(conn, sql, args):
    with conn.transaction():
        conn.execute("SET LOCAL queue.max_payload_size = '1kB'")
        try:
            with conn.transaction():
                conn.execute(sql, args)
        except psycopg.Error as e:
            return e.sqlstate
    return None


def test_bad_input_is_refused_alike_and_leaves_nothing(db):
    with psycopg.connect(db, autocommit=True) as conn:
        before = totals(conn)
        plain = [sqlstate_of(conn, sql, args) for sql, args in BAD]
        with Rule(conn):
            general = [sqlstate_of(conn, sql, args) for sql, args in BAD]
        assert plain == general
        assert plain == ["22004", "22004", "22023", "22023", "22023", "22023", "22023", "22023"]
        assert totals(conn) == before


def test_a_rolled_back_plain_push_leaves_no_job_and_no_count(db):
    with psycopg.connect(db, autocommit=True) as conn:
        before = totals(conn)
        with pytest.raises(psycopg.errors.RaiseException):
            with conn.transaction():
                conn.execute("SELECT queue_push(%s, '{}')", (QUEUE,))
                conn.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
        assert totals(conn) == before


def test_a_plain_push_wakes_listeners_and_waiters(db):
    queue = "paths-wake"
    with psycopg.connect(db, autocommit=True) as listener, psycopg.connect(db, autocommit=True) as producer:
        listener.execute(f'LISTEN "queue_{queue}"')
        _, calls = push(producer, "SELECT queue_push(%s, '{}')", (queue,))
        assert calls.get("pushed") == 1, calls
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in got] == [f"queue_{queue}"]
        listener.execute("SELECT queue_pop(%s, 'w')", (queue,))

        # A waiter inside queue_pop(wait => ...) is woken by the push, well
        # before its wait ends.
        popped = {}

        def waiter():
            with psycopg.connect(db, autocommit=True) as w:
                start = time.monotonic()
                row = w.execute("SELECT id FROM queue_pop(%s, 'w', wait => '20 seconds')", (queue,)).fetchone()
                popped["id"], popped["after"] = row and row[0], time.monotonic() - start

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 10
        while not producer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE '%%wait =>%%' AND wait_event IS NOT NULL "
            "AND pid <> pg_backend_pid()", (DB,)
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the waiter never waited"
            time.sleep(0.02)
        job, calls = push(producer, "SELECT queue_push(%s, '{}')", (queue,))
        assert calls.get("pushed") == 1, calls
        t.join(20)
        assert popped["id"] == job
        assert popped["after"] < 15, popped
