"""Several connections claim from one queue at once: every job is claimed
exactly once and no batch is larger than asked; concurrent pushes with one
dedupe_key leave one job."""
import random
import threading

from conftest import connect

JOBS = 3000
WORKERS = 8


def test_every_job_claimed_exactly_once(queue_name):
    with connect() as conn:
        conn.execute(
            "SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[%s]))",
            (queue_name, JOBS),
        )
    claimed, oversized, errors = [], [], []
    lock = threading.Lock()

    def worker(n):
        try:
            with connect() as conn:
                while True:
                    batch = random.randint(1, 20)
                    rows = conn.execute(
                        "SELECT id, attempt FROM queue_pop(%s, %s, %s)", (queue_name, f"w{n}", batch)
                    ).fetchall()
                    if not rows:
                        return
                    if len(rows) > batch:
                        oversized.append((batch, len(rows)))
                    ids = [r[0] for r in rows]
                    acked = conn.execute("SELECT queue_ack(%s::bigint[])", (ids,)).fetchone()[0]
                    assert acked == len(ids)
                    with lock:
                        claimed.extend(ids)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not oversized
    assert len(claimed) == JOBS
    assert len(set(claimed)) == JOBS, "a job was claimed twice"
    with connect() as conn:
        rows = conn.execute(
            "SELECT status::text, attempts, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1, 2",
            (queue_name,),
        ).fetchall()
    assert rows == [("completed", 1, JOBS)]


def test_concurrent_dedupe_pushes_make_one_job(queue_name):
    ids, errors = [], []
    barrier = threading.Barrier(8)

    def pusher():
        try:
            with connect(autocommit=False) as conn:
                for round_ in range(20):
                    barrier.wait()
                    job = conn.execute(
                        "SELECT queue_push(%s, '{}', dedupe_key => %s)",
                        (queue_name, f"key-{round_}"),
                    ).fetchone()[0]
                    conn.commit()
                    ids.append((round_, job))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=pusher) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for round_ in range(20):
        assert len({job for r, job in ids if r == round_}) == 1, f"round {round_} made two jobs"
    with connect() as conn:
        count = conn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s", (queue_name,)).fetchone()[0]
    assert count == 20
