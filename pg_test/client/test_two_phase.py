"""Two-phase commit and isolation levels: PREPARE TRANSACTION, COMMIT
PREPARED and ROLLBACK PREPARED of pushes, claims and acks keep wake-ups,
counters and the lease book exact; queue_tick() refuses a transaction
snapshot. The test cluster runs with max_prepared_transactions > 0."""
import time
import uuid

import psycopg
import pytest

from conftest import connect, wait_for

BOOK = "SELECT d.attempt FROM queue.leases_due('infinity', 2147483647) d WHERE d.id = %s"


@pytest.fixture(autouse=True)
def no_prepared_transaction_left():
    """A test that fails half-way must not leave a prepared transaction
    behind: it would hold the jobs table for every later test."""
    yield
    import re
    from conftest import DSN
    with connect() as c:
        left = c.execute("SELECT gid, database FROM pg_prepared_xacts WHERE gid LIKE 'q2pc-%'").fetchall()
    for name, database in left:
        with psycopg.connect(re.sub(r"dbname=\S+", f"dbname={database}", DSN), autocommit=True) as c:
            c.execute(f"ROLLBACK PREPARED '{name}'")


def drain(conn, seconds):
    """How many notifications arrive within `seconds`."""
    return len(list(conn.notifies(timeout=seconds)))


def gid():
    return "q2pc-" + uuid.uuid4().hex[:10]


def recounted(conn):
    """Wait until the counters no longer wait for a recount (a PREPARE drops
    its tallies and asks for one, which runs once no prepared transaction
    holds the jobs table)."""
    wait_for(conn, "SELECT (queue_health() -> 'counters' ->> 'recount_pending')::boolean", (), False, timeout=10)


def prepare(conn, sql, args, name):
    """Run `sql` in a transaction and PREPARE it as `name`."""
    conn.execute("BEGIN")
    result = conn.execute(sql, args).fetchall()
    conn.execute(f"PREPARE TRANSACTION '{name}'")
    return result


def test_a_prepared_push_wakes_its_listeners_at_commit_prepared(queue_name):
    with connect() as listener, connect() as c, connect() as other:
        listener.execute(f'LISTEN "queue_{queue_name}"')
        name = gid()
        prepare(c, "SELECT queue_push(%s, '{}')", (queue_name,), name)
        assert drain(listener, 0.3) == 0, "nothing is claimable before the commit"
        started = time.monotonic()
        other.execute(f"COMMIT PREPARED '{name}'")
        heard = list(listener.notifies(timeout=3, stop_after=1))
        assert heard, "the wake-up held at PREPARE is sent after COMMIT PREPARED"
        print(f"COMMIT PREPARED -> notification {(time.monotonic() - started) * 1000:.1f} ms")
        recounted(c)
        assert c.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 1
        assert c.execute("SELECT queue_stats(%s) ->> 'pending'", (queue_name,)).fetchone()[0] == "1"


def test_a_prepared_push_rolled_back_wakes_nobody(queue_name):
    with connect() as listener, connect() as c, connect() as other:
        listener.execute(f'LISTEN "queue_{queue_name}"')
        name = gid()
        prepare(c, "SELECT queue_push(%s, '{}')", (queue_name,), name)
        other.execute(f"ROLLBACK PREPARED '{name}'")
        assert drain(listener, 1.5) == 0
        recounted(c)
        assert c.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 0


def test_prepared_claims_and_acks_keep_the_lease_book_exact(queue_name):
    """A claim prepared, then committed from another session, is in the book
    (or found by scanning while the book is rebuilt) and its lease lapses; an
    ack prepared and rolled back leaves the claim and its lease in place."""
    with connect() as c, connect() as other:
        job = c.execute("SELECT queue_push(%s, '{}', timeout => '400 milliseconds', backoff_base => '1 hour',"
                        " backoff_max => '1 hour')", (queue_name,)).fetchone()[0]
        name = gid()
        claimed = prepare(c, "SELECT id, attempt FROM queue_pop(%s)", (queue_name,), name)
        assert claimed == [(job, 1)]
        time.sleep(0.5)  # maintenance ticks while the claim is prepared
        other.execute(f"COMMIT PREPARED '{name}'")
        # the lease runs out and is taken back: the claim was not lost to the book
        wait_for(c, "SELECT status::text FROM queue.jobs WHERE id = %s", (job,), "retrying", timeout=10)
        wait_for(c, "SELECT (queue_health() -> 'lease_book' ->> 'ready')::boolean", (), True, timeout=20)

        second = c.execute("SELECT queue_push(%s, '{}', timeout => '1 hour')", (queue_name,)).fetchone()[0]
        got = c.execute("SELECT id, attempt FROM queue_pop(%s)", (queue_name,)).fetchone()
        assert got[0] == second
        wait_for(c, BOOK, (second,), 1)
        name = gid()
        assert prepare(c, "SELECT queue_ack(%s, NULL, %s)", got, name) == [(True,)]
        other.execute(f"ROLLBACK PREPARED '{name}'")
        assert c.execute("SELECT status::text FROM queue.jobs WHERE id = %s", (second,)).fetchone()[0] == "processing"
        wait_for(c, "SELECT (queue_health() -> 'lease_book' ->> 'ready')::boolean", (), True, timeout=20)
        assert c.execute(BOOK, (second,)).fetchone() == (1,), "the claim keeps its lease in the book"
        assert c.execute("SELECT queue_ack(%s, NULL, %s)", got).fetchone()[0] is True
        recounted(c)
        stats = c.execute("SELECT queue_stats(%s)", (queue_name,)).fetchone()[0]
        assert (stats["processing"], stats["retrying"], stats["completed"]) == (0, 1, 1)


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_queue_tick_refuses_a_transaction_snapshot(level):
    with connect() as c:
        c.execute(f"BEGIN ISOLATION LEVEL {level}")
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT queue_tick()")
        assert e.value.diag.sqlstate == "25000"
        c.execute("ROLLBACK")
        assert c.execute("SELECT (queue_tick() ->> 'errors')::int").fetchone()[0] == 0


def test_prepared_transactions_in_a_database_the_workers_do_not_serve(queue_name):
    """Outside the served database there is no notifier: pushes NOTIFY from
    their own transaction at commit, which must not stop PREPARE, and the
    counters go into queue.stats inside the transaction, so a prepared one
    counts exactly when it commits and not at all when it rolls back."""
    import re
    from conftest import DSN
    db = "q2pc_other_" + uuid.uuid4().hex[:6]
    with connect() as su:
        su.execute(f"CREATE DATABASE {db}")
    dsn = re.sub(r"dbname=\S+", f"dbname={db}", DSN)
    try:
        with psycopg.connect(dsn, autocommit=True) as c, psycopg.connect(dsn, autocommit=True) as other, \
                psycopg.connect(dsn, autocommit=True) as listener:
            c.execute("CREATE EXTENSION queue")
            listener.execute(f'LISTEN "queue_{queue_name}"')
            c.execute("SELECT queue_push(%s, '{}')", (queue_name,))
            assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1, "a plain push still notifies"
            kept, dropped = gid(), gid()
            prepare(c, "SELECT queue_push(%s, '{}')", (queue_name,), kept)
            prepare(c, "SELECT queue_push(%s, '{}')", (queue_name,), dropped)
            assert c.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 1
            other.execute(f"COMMIT PREPARED '{kept}'")
            other.execute(f"ROLLBACK PREPARED '{dropped}'")
            assert c.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 2
            claimed = c.execute("SELECT id, attempt FROM queue_pop(%s, 'w', 2)", (queue_name,)).fetchall()
            name = gid()
            prepare(c, "SELECT queue_ack(%s, NULL, %s)", claimed[0], name)
            other.execute(f"ROLLBACK PREPARED '{name}'")
            name = gid()
            prepare(c, "SELECT queue_ack(%s, NULL, %s)", claimed[1], name)
            other.execute(f"COMMIT PREPARED '{name}'")
            stats = c.execute("SELECT queue_stats(%s)", (queue_name,)).fetchone()[0]
            assert (stats["pending"], stats["processing"], stats["completed"], stats["total_pushed"]) == (0, 1, 1, 2)
            counted = c.execute("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1 ORDER BY 1",
                                (queue_name,)).fetchall()
            assert counted == [("completed", 1), ("processing", 1)]
    finally:
        with connect() as su:
            su.execute(f"DROP DATABASE IF EXISTS {db}")
