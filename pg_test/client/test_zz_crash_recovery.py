"""Nothing is lost: after `pg_ctl stop -m immediate` every committed job is
still there, in the state it had, and the queue carries on. Runs last (it
restarts the cluster)."""
import time

from conftest import connect, pg_ctl


def test_committed_jobs_survive_an_immediate_stop(queue_name):
    with connect() as conn:
        conn.execute(
            "SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[500]))", (queue_name,)
        )
        conn.execute("SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[50]), delay => '1 hour')", (queue_name,))
        claimed = conn.execute(
            "SELECT id, attempt FROM queue_pop(%s, 'doomed', 100)", (queue_name,)
        ).fetchall()
        acked = conn.execute("SELECT queue_ack(%s::bigint[])", ([r[0] for r in claimed[:40]],)).fetchone()[0]
        assert acked == 40
        before = dict(
            conn.execute(
                "SELECT status::text, count(*) FROM queue.jobs WHERE queue = %s GROUP BY 1", (queue_name,)
            ).fetchall()
        )
    assert before == {"pending": 400, "scheduled": 50, "processing": 60, "completed": 40}

    pg_ctl("-m", "immediate", "-w", "stop")
    pg_ctl("-w", "-t", "60", "-l", f"{__import__('conftest').CLUSTER_DIR}/server.log", "start")

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = connect()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        after = dict(
            conn.execute(
                "SELECT status::text, count(*) FROM queue.jobs WHERE queue = %s GROUP BY 1", (queue_name,)
            ).fetchall()
        )
        assert after == before
        # The claims of the crashed worker are still leased to it; their old
        # attempt can still finish them, and everything else can be claimed.
        assert conn.execute("SELECT queue_ack(%s, attempt => %s)", claimed[50]).fetchone() == (True,)
        rest = conn.execute("SELECT count(*) FROM queue_pop(%s, 'after', 1000)", (queue_name,)).fetchone()[0]
        assert rest == 400
