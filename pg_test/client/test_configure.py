"""Queue defaults across sessions: a session whose pushes have learnt that
no queue has defaults (src/settings.rs keeps that in shared memory) sees a
queue_configure committed by another session on its next push, and never
one that is not committed."""
import psycopg

from conftest import connect


def max_attempts_of_next_push(conn, queue):
    job = conn.execute("SELECT queue_push(%s, '{}')", (queue,)).fetchone()[0]
    return conn.execute("SELECT max_attempts FROM queue.jobs WHERE id = %s", (job,)).fetchone()[0]


def test_a_configure_in_another_session_reaches_the_next_push(queue_name):
    with connect() as pusher, connect() as admin, connect() as cleanup:
        try:
            # No defaults anywhere: pushes learn that and stop reading the table.
            cleanup.execute("DELETE FROM queue.queue_settings WHERE max_attempts IS NOT NULL OR priority IS NOT NULL"
                            " OR timeout IS NOT NULL OR backoff_base IS NOT NULL OR backoff_max IS NOT NULL")
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
