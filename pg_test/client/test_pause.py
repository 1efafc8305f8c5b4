"""Pausing a queue through real connections: claims racing a pause never
hand out a job after the pause committed, a worker waiting in the server
(queue_pop with wait) sleeps through a pause and is woken by the resume, and
a LISTEN worker is notified by the resume."""
import datetime as dt
import threading
import time

from psycopg import sql

from conftest import connect


def test_no_claim_starts_after_the_pause_committed(queue_name):
    """Four connections claim and ack in a loop while the queue is paused
    and resumed ten times. No claim whose statement began after a pause
    committed (and well before the resume began) got a job; no job ran
    twice; all jobs end completed. Times are the server's clock: the
    statement start of each claim against clock_timestamp() read just after
    the pause returned and just before the resume was sent."""
    with connect() as conn:
        conn.execute("SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[4000]))",
                     (queue_name,))
    windows = []         # (after the pause committed, before the resume began)
    claims = []          # (statement start, job ids)
    errors = []
    stop = threading.Event()

    def worker(n):
        try:
            with connect() as c:
                while not stop.is_set():
                    began, ids = c.execute(
                        "SELECT statement_timestamp(), coalesce(array_agg(id), '{}') FROM queue_pop(%s, %s, 5)",
                        (queue_name, f"w{n}")).fetchone()
                    if ids:
                        c.execute("SELECT queue_ack_batch(%s::bigint[])", (ids,))
                    claims.append((began, ids))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        with connect() as admin:
            for _ in range(10):
                time.sleep(0.05)
                assert admin.execute("SELECT queue_pause(%s)", (queue_name,)).fetchone()[0]
                paused_at = admin.execute("SELECT clock_timestamp()").fetchone()[0]
                time.sleep(0.1)
                resuming_at = admin.execute("SELECT clock_timestamp()").fetchone()[0]
                assert admin.execute("SELECT queue_resume(%s)", (queue_name,)).fetchone()[0]
                windows.append((paused_at, resuming_at - dt.timedelta(milliseconds=10)))
            deadline = time.monotonic() + 30
            while admin.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] > 0:
                assert time.monotonic() < deadline, "the queue drains after the last resume"
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    inside = [(began, ids) for began, ids in claims for (a, r) in windows if a < began < r]
    assert len(inside) > 10, "the workers kept claiming while the queue was paused"
    assert [c for c in inside if c[1]] == [], "claims that began while paused got jobs"
    claimed = [job for _, ids in claims for job in ids]
    assert len(claimed) == len(set(claimed)) == 4000
    with connect() as conn:
        counts = dict(conn.execute(
            "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1",
            (queue_name,)).fetchall())
        assert counts == {"completed": 4000}
        stats = conn.execute("SELECT queue_stats(%s)", (queue_name,)).fetchone()[0]
        assert stats["paused"] is False and stats["completed"] == 4000


def test_a_waiting_pop_sleeps_through_the_pause_and_wakes_on_resume(queue_name):
    """A pop waiting in the server on a paused queue claims nothing while
    jobs arrive, and returns the job soon after the resume commits, long
    before its wait would have ended."""
    with connect() as conn:
        conn.execute("SELECT queue_pause(%s)", (queue_name,))
        conn.execute("SELECT queue_push(%s, '{\"n\": 1}')", (queue_name,))
    result = {}

    def waiter():
        with connect() as c:
            began = time.monotonic()
            rows = c.execute("SELECT id FROM queue_pop(%s, 'waiter', 1, wait => '10 seconds')",
                             (queue_name,)).fetchall()
            result["rows"], result["at"] = rows, time.monotonic()
            result["began"] = began

    t = threading.Thread(target=waiter)
    t.start()
    try:
        time.sleep(0.5)
        with connect() as conn:
            conn.execute("SELECT queue_push(%s, '{\"n\": 2}')", (queue_name,))  # a push does not wake it
            time.sleep(0.5)
            assert "rows" not in result, "a paused queue hands out nothing, pushes or not"
            resumed = time.monotonic()
            conn.execute("SELECT queue_resume(%s)", (queue_name,))
    finally:
        t.join(15)
    assert len(result["rows"]) == 1
    assert result["at"] - resumed < 2.0, f"woken {result['at'] - resumed:.3f} s after the resume"


def test_resume_notifies_listeners(queue_name):
    """A LISTEN worker hears the resume as it hears a push: the channel of
    the queue gets a notification once the resume commits."""
    with connect() as listener, connect() as conn:
        conn.execute("SELECT queue_pause(%s)", (queue_name,))
        conn.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        channel = f"queue_{queue_name}"
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        # Drain what the push may have sent.
        list(listener.notifies(timeout=0.5))
        conn.execute("SELECT queue_resume(%s)", (queue_name,))
        got = [n.channel for n in listener.notifies(timeout=3.0, stop_after=1)]
        assert got == [channel]
