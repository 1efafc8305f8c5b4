"""Workers that finish a job and claim the next in one transaction, the ack
first (queue_ack_pop, or queue_ack then queue_pop between BEGIN and COMMIT),
do not deadlock with each other, and every job is claimed and completed once.

Why the order matters: FOR UPDATE SKIP LOCKED in the claim keeps its lock on
a row that another worker claimed after the claim's snapshot was taken (the
recheck skips the row, the lock stays until commit), and can wait while it
follows such a row to its newest version. Claim first and ack second, and two
workers can each hold what the other's next step waits for: with 8 pgbench
clients, 3 deadlocks in 111,122 transactions (docs/reference.md,
queue_ack_pop). Ack first: none in 106,948, and none here.
"""
import threading

import psycopg

from conftest import connect

JOBS = 6000
WORKERS = 4


def drain(queue_name, step):
    """Drain JOBS jobs with WORKERS connections, each finishing its job and
    claiming the next through `step(conn, worker, held)` (held: the job it
    holds, or None); returns (ids claimed, errors)."""
    with connect() as conn:
        conn.execute(
            "SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[%s]))",
            (queue_name, JOBS),
        )
    claimed, errors = [], []
    lock = threading.Lock()

    def worker(n):
        held = None
        try:
            with connect() as conn:
                conn.execute("SET deadlock_timeout = '100ms'")
                while True:
                    row = step(conn, f"w{n}", held)
                    if row is None:
                        return
                    held = row
                    with lock:
                        claimed.append(row[0])
        except psycopg.Error as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return claimed, errors


def check_all_done(queue_name, claimed, errors):
    assert not errors, errors
    assert len(claimed) == JOBS and len(set(claimed)) == JOBS
    with connect() as conn:
        rows = conn.execute(
            "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", (queue_name,)
        ).fetchall()
    # Each worker's last step acked its job and found nothing more.
    assert rows == [("completed", JOBS)]


def test_ack_pop_workers_never_deadlock(queue_name):
    def step(conn, worker, held):
        ids, attempts = ([held[0]], [held[1]]) if held else (None, None)
        return conn.execute(
            "SELECT id, attempt FROM queue_ack_pop(%s, %s, 1, %s::bigint[], %s::int[])",
            (queue_name, worker, ids, attempts),
        ).fetchone()

    check_all_done(queue_name, *drain(queue_name, step))


def test_ack_then_pop_in_one_transaction_never_deadlocks(queue_name):
    def step(conn, worker, held):
        with conn.transaction():
            if held:
                conn.execute("SELECT queue_ack(%s::bigint, NULL, %s)", held)
            return conn.execute("SELECT id, attempt FROM queue_pop(%s, %s)", (queue_name, worker)).fetchone()

    check_all_done(queue_name, *drain(queue_name, step))
