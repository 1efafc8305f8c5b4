"""queue_push has two paths to the same job.

The plain push (due now, no serial group, dedupe key, dependency, tag or
batch, and no access rule or queue default anywhere in the database:
queue.push_mode() = 0) is stored by queue_push itself, in Rust, without an
INSERT statement (src/push.rs): the row handed to the table's access method,
the indexes maintained by the executor's routine, the defaults and index
predicates compiled once per backend and dropped when the table changes.
Every other push, and a plain one on a table with a trigger, takes the
general path, queue.push_general (plpgsql). Both must store the same row,
count it the same, wake the same listeners and waiters, and refuse bad input
with the same SQLSTATE, leaving nothing behind; and the plain path must see
every change to the table (a new index, a changed default, a trigger) as an
INSERT would, from the session that made it and from every other.

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

from conftest import DSN, dsn_for as dsn, push_calls, wait_for_plain_pushes

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
                wait_for_plain_pushes(c)
                c.execute("DELETE FROM queue.jobs")
                c.execute("SELECT queue.recount_stats()")
            yield dsn(DB)
        finally:
            admin.execute("ALTER SYSTEM RESET queue.database")
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


PLAIN = {"queue_push": 1}


def push(conn, sql, args=()):
    """Run a push in a transaction of its own; its id and the SQL functions
    it called (PLAIN: queue_push alone; the general path calls
    queue.push_general)."""
    return push_calls(conn, sql, args)


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
        assert calls == PLAIN, calls
        plain_bare, calls = push(conn, "SELECT queue_push(%s, '{\"n\": 1}')", (QUEUE,))
        assert calls == PLAIN, calls
        with Rule(conn):
            general, calls = push(conn, *with_options(QUEUE))
            assert calls.get("push_general") == 1 and calls.get("tally") == 1, calls
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
    # stored in a few bytes, printed as 2,001 characters: held to the limit at its printed size
    ("SELECT queue_push(%s, '[1e2000]')", (QUEUE,)),
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
        assert plain == ["22004", "22004", "22023", "22023", "22023", "22023", "22023", "22023", "22023"]
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
        assert calls == PLAIN, calls
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
        assert calls == PLAIN, calls
        t.join(20)
        assert popped["id"] == job
        assert popped["after"] < 15, popped


def btree_indexes_hold_every_row(conn):
    """amcheck over every B-tree of queue.jobs, heapallindexed: each live row
    has its entry in every index whose predicate it meets. Raises otherwise.
    Returns the indexes checked."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am a ON a.oid = c.relam "
        "WHERE i.indrelid = 'queue.jobs'::regclass AND a.amname = 'btree' AND i.indisvalid ORDER BY 1"
    ).fetchall()]
    for name in names:
        conn.execute("SELECT bt_index_check(%s::regclass, heapallindexed => true)", (f"queue.{name}",))
    return names


def test_a_trigger_on_the_table_sends_plain_pushes_through_the_insert(db):
    """A trigger is what only an INSERT statement fires: while queue.jobs has
    one, plain pushes take the general path (seen by this session, which had
    the table's plan, and by another, which built one before the trigger
    came), and the trigger sees every job; once it is gone they are plain
    again."""
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        assert push(a, "SELECT queue_push('paths-trigger', '{}')")[1] == PLAIN
        assert push(b, "SELECT queue_push('paths-trigger', '{}')")[1] == PLAIN
        a.execute("CREATE TABLE public.seen (id bigint)")
        a.execute("CREATE FUNCTION public.note_job() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END$$")
        a.execute("CREATE TRIGGER note_job AFTER INSERT ON queue.jobs FOR EACH ROW EXECUTE FUNCTION public.note_job()")
        try:
            ids = []
            for conn in (a, b):
                job, calls = push(conn, "SELECT queue_push('paths-trigger', '{}')")
                assert calls.get("push_general") == 1 and calls.get("note_job") == 1, calls
                ids.append(job)
            assert [r[0] for r in a.execute("SELECT id FROM public.seen ORDER BY id").fetchall()] == ids
        finally:
            a.execute("DROP TRIGGER note_job ON queue.jobs")
            a.execute("DROP FUNCTION public.note_job()")
            a.execute("DROP TABLE public.seen")
        assert push(a, "SELECT queue_push('paths-trigger', '{}')")[1] == PLAIN
        assert push(b, "SELECT queue_push('paths-trigger', '{}')")[1] == PLAIN
        a.execute("DELETE FROM queue.jobs WHERE queue = 'paths-trigger'")
        a.execute("SELECT queue.recount_stats()")


def test_a_new_index_and_a_changed_default_reach_sessions_that_pushed_before(db):
    """Session b keeps the table's plan from its first push. An index made
    afterwards by another session (partial, on an expression) must receive
    b's next plain pushes that meet its predicate, and a default changed
    afterwards must fill b's next rows, as they would for an INSERT."""
    queue = "paths-ddl"
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        assert push(b, "SELECT queue_push(%s, '{\"n\": 0}')", (queue,))[1] == PLAIN
        a.execute("CREATE INDEX paths_ddl_n ON queue.jobs ((payload->>'n')) WHERE priority = 42")
        a.execute("ALTER TABLE queue.jobs ALTER COLUMN created_at SET DEFAULT '2001-02-03 04:05:06+00'")
        try:
            hit, calls = push(b, "SELECT queue_push(%s, '{\"n\": 7}', priority => 42)", (queue,))
            assert calls == PLAIN, calls
            miss, _ = push(b, "SELECT queue_push(%s, '{\"n\": 7}', priority => 41)", (queue,))
            a.execute("SET enable_seqscan = off")
            a.execute("SET enable_bitmapscan = off")
            plan = "\n".join(r[0] for r in a.execute(
                "EXPLAIN SELECT id FROM queue.jobs WHERE payload->>'n' = '7' AND priority = 42").fetchall())
            assert "paths_ddl_n" in plan, plan
            assert [r[0] for r in a.execute(
                "SELECT id FROM queue.jobs WHERE payload->>'n' = '7' AND priority = 42").fetchall()] == [hit]
            created = dict(a.execute("SELECT id, created_at::text FROM queue.jobs WHERE id IN (%s, %s)",
                                     (hit, miss)).fetchall())
            assert created == {hit: "2001-02-03 04:05:06+00", miss: "2001-02-03 04:05:06+00"}, created
            assert "paths_ddl_n" in btree_indexes_hold_every_row(a)
        finally:
            a.execute("RESET enable_seqscan")
            a.execute("RESET enable_bitmapscan")
            a.execute("ALTER TABLE queue.jobs ALTER COLUMN created_at SET DEFAULT now()")
            a.execute("DROP INDEX IF EXISTS queue.paths_ddl_n")
        # The default is now() again for b's next push, and the dropped index
        # is no longer written.
        job, calls = push(b, "SELECT queue_push(%s, '{\"n\": 7}', priority => 42)", (queue,))
        assert calls == PLAIN, calls
        assert b.execute("SELECT created_at > now() - interval '1 hour' FROM queue.jobs WHERE id = %s",
                         (job,)).fetchone()[0]
        a.execute("DELETE FROM queue.jobs WHERE queue = %s", (queue,))
        a.execute("SELECT queue.recount_stats()")


def test_plain_pushes_during_create_index_concurrently_are_all_indexed(db):
    """Four sessions push plain jobs without pause while a fifth builds an
    index with CREATE INDEX CONCURRENTLY, whose phases change the table's
    index list under them (not ready, ready, valid). Every job must end in
    the new index and in every other: amcheck, heapallindexed."""
    queue = "paths-cic"
    stop = threading.Event()
    pushed, errors = [], []

    def pusher():
        try:
            with psycopg.connect(db, autocommit=True) as conn:
                while not stop.is_set():
                    pushed.append(conn.execute("SELECT queue_push(%s, '{\"n\": 1}')", (queue,)).fetchone()[0])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=pusher) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with psycopg.connect(db, autocommit=True) as admin:
            for _ in range(3):
                time.sleep(0.3)
                admin.execute("CREATE INDEX CONCURRENTLY paths_cic ON queue.jobs (created_at) WHERE queue = 'paths-cic'")
                time.sleep(0.3)
                assert not errors, errors
                checked = btree_indexes_hold_every_row(admin)
                assert {"paths_cic", "jobs_claim", "jobs_pkey"} <= set(checked), checked
                admin.execute("DROP INDEX CONCURRENTLY queue.paths_cic")
            stop.set()
            for t in threads:
                t.join(30)
            assert not errors, errors
            stored = admin.execute("SELECT count(*) FROM queue.jobs WHERE queue = %s", (queue,)).fetchone()[0]
            assert stored == len(pushed) > 100, (stored, len(pushed))
            stats = admin.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]
            assert stats["pending"] == stats["total_pushed"] == stored, stats
            assert btree_indexes_hold_every_row(admin)
            admin.execute("DELETE FROM queue.jobs WHERE queue = %s", (queue,))
            admin.execute("SELECT queue.recount_stats()")
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def test_a_plain_push_stores_a_large_payload_out_of_line(db):
    """A payload far above the page size goes through TOAST, compressed or
    not, and comes back unchanged."""
    with psycopg.connect(db, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL queue.max_payload_size = '4MB'")
            conn.execute("SET LOCAL track_functions = 'all'")
            job = conn.execute(
                "SELECT queue_push('paths-big', jsonb_build_object('s', repeat('x', 1000000), "
                "'r', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 20000) i)))"
            ).fetchone()[0]
            calls = dict(conn.execute(
                "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE funcname = 'push_general'").fetchall())
            assert calls == {}, calls
        same, size = conn.execute(
            "SELECT payload = jsonb_build_object('s', repeat('x', 1000000), "
            "'r', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 20000) i)), pg_column_size(payload) "
            "FROM queue.jobs WHERE id = %s", (job,)).fetchone()
        assert same and size < 1000000
        conn.execute("DELETE FROM queue.jobs WHERE queue = 'paths-big'")
        conn.execute("SELECT queue.recount_stats()")


def test_a_session_pushes_again_after_the_extension_is_recreated(db):
    """DROP and CREATE EXTENSION in the session that has pushed: its next
    plain push builds the plan for the new table."""
    with psycopg.connect(db, autocommit=True) as conn:
        assert push(conn, "SELECT queue_push('paths-again', '{}')")[1] == PLAIN
        old = conn.execute("SELECT 'queue.jobs'::regclass::oid").fetchone()[0]
        conn.execute("DROP EXTENSION queue")
        conn.execute("CREATE EXTENSION queue")
        assert conn.execute("SELECT 'queue.jobs'::regclass::oid").fetchone()[0] != old
        deadline = time.monotonic() + 30
        while conn.execute("SELECT queue.push_mode()").fetchone()[0] != 0:
            assert time.monotonic() < deadline, "push_mode stays non-zero after CREATE EXTENSION"
            conn.execute("SELECT queue_push('paths-warm', '{}')")
            time.sleep(0.1)
        job, calls = push(conn, "SELECT queue_push('paths-again', '{\"after\": true}')")
        assert calls == PLAIN, calls
        assert conn.execute("SELECT payload FROM queue.jobs WHERE id = %s", (job,)).fetchone()[0] == {"after": True}
        assert btree_indexes_hold_every_row(conn)
        conn.execute("DELETE FROM queue.jobs")
        conn.execute("SELECT queue.recount_stats()")


def test_a_read_only_transaction_refuses_both_paths_alike(db):
    """As an INSERT would: 25006, nothing stored or counted."""
    with psycopg.connect(db, autocommit=True) as conn:
        before = totals(conn)

        def refused():
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as e:
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    conn.execute("SELECT queue_push(%s, '{}')", (QUEUE,))
            return str(e.value).splitlines()[0]

        plain = refused()
        with Rule(conn):
            general = refused()
        assert plain == general == "cannot execute INSERT in a read-only transaction"
        assert totals(conn) == before


def test_an_index_on_the_whole_row_sends_pushes_through_the_insert(db):
    """An index whose expression takes the whole row: the step that reads it
    sets itself up, on its first evaluation, in memory that lives as long as
    the statement, so a kept expression would read freed memory at the next
    push. While such an index exists pushes take the general path (whose
    INSERT compiles per statement), and every row is in it."""
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        assert push(b, "SELECT queue_push('paths-wholerow', '{}')")[1] == PLAIN
        a.execute("CREATE FUNCTION public.job_key(j queue.jobs) RETURNS bigint LANGUAGE plpgsql IMMUTABLE "
                  "AS $$BEGIN RETURN j.id; END$$")
        a.execute("CREATE INDEX paths_wholerow ON queue.jobs (public.job_key(jobs)) WHERE queue = 'paths-wholerow'")
        try:
            ids = []
            for conn in (a, b, b, b):
                job, calls = push(conn, "SELECT queue_push('paths-wholerow', '{}')")
                assert calls.get("push_general") == 1, calls
                ids.append(job)
            assert "paths_wholerow" in btree_indexes_hold_every_row(a)
        finally:
            a.execute("DROP INDEX queue.paths_wholerow")
            a.execute("DROP FUNCTION public.job_key(queue.jobs)")
        assert push(b, "SELECT queue_push('paths-wholerow', '{}')")[1] == PLAIN
        a.execute("DELETE FROM queue.jobs WHERE queue = 'paths-wholerow'")
        a.execute("SELECT queue.recount_stats()")


def test_a_rule_on_the_table_sends_pushes_through_the_insert(db):
    """An ON INSERT rule is applied by the rewriter to INSERT statements only:
    while one exists, pushes take the general path and the rule sees each."""
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        assert push(b, "SELECT queue_push('paths-rule', '{}')")[1] == PLAIN
        a.execute("CREATE TABLE public.ruled (queue text)")
        a.execute("CREATE RULE paths_rule AS ON INSERT TO queue.jobs DO ALSO INSERT INTO public.ruled VALUES (NEW.queue)")
        try:
            for conn in (a, b):
                assert push(conn, "SELECT queue_push('paths-rule', '{}')")[1].get("push_general") == 1
            assert a.execute("SELECT count(*) FROM public.ruled WHERE queue = 'paths-rule'").fetchone() == (2,)
        finally:
            a.execute("DROP RULE paths_rule ON queue.jobs")
            a.execute("DROP TABLE public.ruled")
        assert push(b, "SELECT queue_push('paths-rule', '{}')")[1] == PLAIN
        a.execute("DELETE FROM queue.jobs WHERE queue = 'paths-rule'")
        a.execute("SELECT queue.recount_stats()")


def test_a_domain_column_left_null_is_checked_as_an_insert_checks_it(db):
    """A column whose domain refuses NULL, added without a default: an INSERT
    that leaves it out fails the domain's check, and so must every push,
    from a session that pushed before too; nothing is stored."""
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        assert push(b, "SELECT queue_push('paths-domain', '{}')")[1] == PLAIN
        a.execute("DELETE FROM queue.jobs")
        a.execute("CREATE DOMAIN public.required_int AS int CHECK (VALUE IS NOT NULL)")
        a.execute("ALTER TABLE queue.jobs ADD COLUMN paths_required public.required_int")
        try:
            before = totals(a)
            for conn in (a, b):
                assert sqlstate_of(conn, "SELECT queue_push('paths-domain', '{}')", ()) == "23514"
            assert a.execute("SELECT count(*) FROM queue.jobs").fetchone() == (0,)
            assert totals(a) == before
        finally:
            a.execute("ALTER TABLE queue.jobs DROP COLUMN paths_required")
            a.execute("DROP DOMAIN public.required_int")
        assert push(b, "SELECT queue_push('paths-domain', '{}')")[1] == PLAIN
        a.execute("DELETE FROM queue.jobs")
        a.execute("SELECT queue.recount_stats()")


def test_a_replaced_default_function_reaches_sessions_that_pushed_before(db):
    """A default that calls a function: CREATE OR REPLACE FUNCTION changes
    what an INSERT stores from then on, in every session, and so it must for
    the plain push of a session that had compiled the old one."""
    with psycopg.connect(db, autocommit=True) as a, psycopg.connect(db, autocommit=True) as b:
        a.execute("CREATE FUNCTION public.paths_note() RETURNS text LANGUAGE sql AS $$SELECT 'v1'$$")
        a.execute("ALTER TABLE queue.jobs ADD COLUMN paths_note text DEFAULT public.paths_note()")
        try:
            first, calls = push(b, "SELECT queue_push('paths-proc', '{}')")
            assert calls == PLAIN, calls
            a.execute("CREATE OR REPLACE FUNCTION public.paths_note() RETURNS text LANGUAGE sql AS $$SELECT 'v2'$$")
            second, calls = push(b, "SELECT queue_push('paths-proc', '{}')")
            assert calls == PLAIN, calls
            notes = dict(a.execute("SELECT id, paths_note FROM queue.jobs WHERE id IN (%s, %s)",
                                   (first, second)).fetchall())
            assert notes == {first: "v1", second: "v2"}, notes
        finally:
            a.execute("ALTER TABLE queue.jobs DROP COLUMN paths_note")
            a.execute("DROP FUNCTION public.paths_note()")
        a.execute("DELETE FROM queue.jobs WHERE queue = 'paths-proc'")
        a.execute("SELECT queue.recount_stats()")
