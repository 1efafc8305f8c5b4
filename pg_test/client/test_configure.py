"""Queue defaults across sessions: a session whose pushes have learnt that
no queue has defaults (src/settings.rs keeps that in shared memory) sees a
queue_configure committed by another session on its next push, and never
one that is not committed. The background worker deletes each final job
when its queue's retention runs out."""
import psycopg

from conftest import connect, wait_for


def max_attempts_of_next_push(conn, queue):
    job = conn.execute("SELECT queue_push(%s, '{}')", (queue,)).fetchone()[0]
    return conn.execute("SELECT max_attempts FROM queue.jobs WHERE id = %s", (job,)).fetchone()[0]


def test_a_configure_in_another_session_reaches_the_next_push(queue_name):
    with connect() as pusher, connect() as admin, connect() as cleanup:
        try:
            # No defaults anywhere: pushes learn that and stop reading the table.
            cleanup.execute("DELETE FROM queue.queue_settings WHERE max_attempts IS NOT NULL OR priority IS NOT NULL"
                            " OR timeout IS NOT NULL OR backoff_base IS NOT NULL OR backoff_max IS NOT NULL"
                            " OR retention IS NOT NULL")
            cleanup.execute("SELECT queue.push_defaults_forget()")
            assert max_attempts_of_next_push(pusher, queue_name) == 3
            assert max_attempts_of_next_push(pusher, queue_name) == 3
            assert pusher.execute("SELECT queue.push_defaults_absent()").fetchone()[0] is True
            # Not committed yet: the other session's pushes keep the global default.
            with admin.transaction():
                admin.execute("SELECT queue_configure(%s, max_attempts => 7)", (queue_name,))
                assert max_attempts_of_next_push(pusher, queue_name) == 3
            # Committed: the very next push uses it, in this queue only.
            assert max_attempts_of_next_push(pusher, queue_name) == 7
            assert max_attempts_of_next_push(pusher, queue_name + "-other") == 3
            # A rolled-back configure leaves nothing behind but the extra read.
            with admin.transaction():
                admin.execute("SELECT queue_configure(%s, max_attempts => 9)", (queue_name,))
                raise psycopg.Rollback()
            assert max_attempts_of_next_push(pusher, queue_name) == 7
        finally:
            cleanup.execute("DELETE FROM queue.queue_settings WHERE queue = %s", (queue_name,))
        assert max_attempts_of_next_push(pusher, queue_name) == 3


def finished(conn, queue):
    return conn.execute("SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (queue,)).fetchone()[0]


def push_and_ack(conn, queue):
    conn.execute("SELECT queue_push(%s, '{}')", (queue,))
    (job,) = conn.execute("SELECT id FROM queue_pop(%s)", (queue,)).fetchone()
    assert conn.execute("SELECT queue_ack(%s)", (job,)).fetchone()[0] is True


def test_the_worker_deletes_each_queue_s_jobs_at_its_own_retention(queue_name):
    """A queue with a shorter retention than queue.retention loses its final
    jobs sooner, one with a longer one keeps them longer, and while those sit
    at the old end of the history the other queues' jobs are still deleted
    on time, pass after pass (the pass's mark moves on)."""
    plain, brief, kept = queue_name, queue_name + "-brief", queue_name + "-kept"
    with connect() as c, connect() as su:
        try:
            c.execute("SELECT queue_configure(%s, retention => '1 second')", (brief,))
            c.execute("SELECT queue_configure(%s, retention => '1 hour')", (kept,))
            for q in (kept, brief, plain):
                push_and_ack(c, q)
            # Under the default queue.retention (7 days) only the brief one goes.
            wait_for(c, "SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (brief,), 0, timeout=15)
            assert (finished(c, plain), finished(c, kept)) == (1, 1)
            su.execute("ALTER SYSTEM SET queue.retention = '2 seconds'")
            su.execute("SELECT pg_reload_conf()")
            wait_for(c, "SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (plain,), 0, timeout=15)
            # Jobs of other queues finishing later go too, while the kept
            # job stays at the old end of the history.
            for _ in range(3):
                push_and_ack(c, plain)
                wait_for(c, "SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (plain,), 0,
                         timeout=15)
            assert finished(c, kept) == 1
            # Its own retention over, the kept job goes as well.
            su.execute("UPDATE queue.finished_jobs SET finished_at = now() - interval '2 hours'"
                       " WHERE queue = %s", (kept,))
            wait_for(c, "SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (kept,), 0, timeout=15)
        finally:
            su.execute("ALTER SYSTEM RESET queue.retention")
            su.execute("SELECT pg_reload_conf()")
            su.execute("DELETE FROM queue.queue_settings WHERE queue IN (%s, %s)", (brief, kept))
