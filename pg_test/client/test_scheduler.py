"""The scheduler service inside Postgres, observed from client connections:
an `every 1 second` schedule pushes jobs that a LISTENing worker pops, and
passes racing in several sessions never push one slot twice."""
import threading
import time
import uuid

from conftest import connect


def test_every_second_schedule_pushes_jobs_that_workers_get(queue_name):
    name = "s-" + uuid.uuid4().hex[:8]
    with connect() as worker, connect() as admin:
        worker.execute(f'LISTEN "queue_{queue_name}"')
        admin.execute("SELECT queue_schedule(%s, 'every 1 second', %s, '{\"from\": \"cron\"}')", (name, queue_name))
        created = admin.execute("SELECT now()").fetchone()[0]
        popped = []
        deadline = time.monotonic() + 10
        while len(popped) < 3 and time.monotonic() < deadline:
            row = worker.execute("SELECT id, payload FROM queue_pop(%s)", (queue_name,)).fetchone()
            if row:
                worker.execute("SELECT queue_ack(%s)", (row[0],))
                popped.append(row)
                continue
            list(worker.notifies(timeout=2, stop_after=1))
        admin.execute("SELECT queue_unschedule(%s)", (name,))
        assert len(popped) == 3, popped
        assert all(p[1] == {"from": "cron"} for p in popped)
        times = [r[0] for r in admin.execute(
            "SELECT created_at FROM queue.all_jobs WHERE queue = %s ORDER BY id", (queue_name,)).fetchall()]
        # Each push lands within a second of its slot: slots are 1 s apart.
        for k, t in enumerate(times[:3], start=1):
            lateness = (t - created).total_seconds() - k
            assert -0.05 <= lateness < 1.0, f"run {k} was {lateness:.3f}s late"
        print(f"every 1 second: runs at +{[round((t - created).total_seconds(), 3) for t in times[:3]]} s")


def test_racing_scheduler_passes_never_push_a_slot_twice(queue_name):
    """Ten overdue schedules, eight sessions calling the scheduler pass at
    once, many rounds: every due slot is pushed exactly once."""
    names = [f"race-{uuid.uuid4().hex[:6]}-{i}" for i in range(10)]
    with connect() as admin:
        for n in names:
            admin.execute("SELECT queue_schedule(%s, 'every 1 hour', %s)", (n, queue_name))
    errors = []
    for _round in range(20):
        with connect() as admin:
            admin.execute(
                "UPDATE queue.schedules SET next_run_at = now() - interval '1 minute' WHERE name = ANY(%s)", (names,))
        barrier = threading.Barrier(8)

        def tick():
            try:
                with connect() as c:
                    barrier.wait()
                    c.execute("SELECT queue.scheduler_pass()")
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=tick) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # A slot still due here was held by a pass that had not committed
        # (the background scheduler's, perhaps restarted meanwhile): one more
        # pass fires it. Either way each slot is pushed once, never twice.
        # A pass still holding a slot commits within moments: wait for it.
        with connect() as admin:
            late = admin.execute("SELECT queue.scheduler_pass() ->> 'fired'").fetchone()[0]
            deadline = time.monotonic() + 5
            while True:
                pushed = admin.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s",
                                       (queue_name,)).fetchone()[0]
                if pushed >= 10 * (_round + 1) or time.monotonic() > deadline:
                    break
                late = admin.execute("SELECT queue.scheduler_pass() ->> 'fired'").fetchone()[0]
                time.sleep(0.05)
        if late != "0":
            print(f"round {_round}: {late} slots fired after the racing passes")
        assert pushed == 10 * (_round + 1), (_round, pushed, late)
    assert not errors, errors
    with connect() as admin:
        for n in names:
            admin.execute("SELECT queue_unschedule(%s)", (n,))


def test_timeline_over_thousands_of_schedules():
    """queue_timeline over 3,000 schedules returns the true soonest runs
    (checked against every schedule's own upcoming runs) and prints its
    time. None of these schedules comes due during the test."""
    prefix = "tl-" + uuid.uuid4().hex[:6] + "-"
    with connect() as admin:
        admin.execute(
            """SELECT count(queue_schedule(%s || i,
                   CASE i %% 4 WHEN 0 THEN 'every ' || (2 + i %% 500) || ' minutes'
                              WHEN 1 THEN '@yearly'
                              WHEN 2 THEN 'at ' || (now() + (i || ' minutes')::interval)::text
                              ELSE '@monthly' END,
                   'timeline-q'))
                 FROM generate_series(1, 3000) i""",
            (prefix,),
        )
    try:
        with connect(autocommit=False) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            t = time.monotonic()
            got = conn.execute(
                "SELECT name, run_at FROM queue_timeline('1 day', 20) WHERE name LIKE %s", (prefix + "%",)
            ).fetchall()
            took = time.monotonic() - t
            expected = conn.execute(
                """SELECT s.name, r.run_at
                     FROM queue.schedules s,
                          LATERAL queue.schedule_upcoming(s.schedule, s.next_run_at, now(), now() + interval '1 day', 20) r(run_at)
                    WHERE s.enabled AND s.next_run_at IS NOT NULL
                    ORDER BY r.run_at, s.name LIMIT 20"""
            ).fetchall()
            conn.rollback()
        assert len(got) == 20
        assert [g[1] for g in got] == [e[1] for e in expected]
        print(f"queue_timeline over 3000+ schedules: {took * 1000:.1f} ms")
    finally:
        with connect() as admin:
            admin.execute("DELETE FROM queue.schedules WHERE name LIKE %s", (prefix + "%",))
