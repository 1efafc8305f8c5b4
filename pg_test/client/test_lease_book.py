"""The lease book (src/leases.rs): in the served database the processing jobs
and their lease ends live in shared memory, not in an index. These tests run
against the test cluster's served database over real connections, with the
maintenance worker ticking every 100 ms, and check the one thing that must
never happen: a processing job the book does not hold (its lease would never
be seen to lapse). They read the book through queue.leases_due, as the
maintenance pass does."""
import random
import threading
import time

from conftest import connect, wait_for

BOOK = "SELECT d.attempt, d.lease_until FROM queue.leases_due('infinity', 2147483647) d WHERE d.id = %s"


def wait_until(conn, sql, args=(), timeout=10.0):
    wait_for(conn, sql, args, True, timeout)


def book_ready(conn):
    wait_until(conn, "SELECT (queue_health() -> 'lease_book' ->> 'ready')::boolean")


def entry(conn, job):
    return conn.execute(BOOK, (job,)).fetchone()


def status(conn, job):
    return conn.execute("SELECT status::text FROM queue.all_jobs WHERE id = %s", (job,)).fetchone()[0]


def test_claims_enter_the_book_and_acks_leave_it(queue_name):
    with connect() as conn:
        book_ready(conn)
        conn.execute("SELECT queue_push(%s, '{}') FROM generate_series(1, 3)", (queue_name,))
        claimed = conn.execute("SELECT id, attempt, lease_until FROM queue_pop(%s, 'w', 3)", (queue_name,)).fetchall()
        for job, attempt, lease in claimed:
            assert entry(conn, job) == (attempt, lease)
        assert conn.execute("SELECT queue_ack(%s)", (claimed[0][0],)).fetchone() == (True,)
        assert conn.execute("SELECT queue_ack(%s::bigint[])", ([claimed[1][0]],)).fetchone() == (1,)
        assert conn.execute("SELECT queue_fail(%s, 'x', retry_in => '1 hour')", (claimed[2][0],)).fetchone() == ("retrying",)
        for job, _, _ in claimed:
            assert entry(conn, job) is None
        # A claim that rolls back never enters.
        conn.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        conn.execute("BEGIN")
        job = conn.execute("SELECT id FROM queue_pop(%s)", (queue_name,)).fetchone()[0]
        conn.execute("ROLLBACK")
        assert entry(conn, job) is None
        assert status(conn, job) == "pending"


def test_lapsed_leases_are_found_through_the_book(queue_name):
    with connect() as conn:
        book_ready(conn)
        last = conn.execute("SELECT queue_push(%s, '{}', timeout => '300 milliseconds', max_attempts => 1)",
                            (queue_name,)).fetchone()[0]
        again = conn.execute("SELECT queue_push(%s, '{}', timeout => '300 milliseconds', backoff_base => '1 hour')",
                             (queue_name,)).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM queue_pop(%s, 'w', 2)", (queue_name,)).fetchone() == (2,)
        wait_until(conn, "SELECT status::text = 'expired' FROM queue.all_jobs WHERE id = %s", (last,))
        wait_until(conn, "SELECT status::text = 'retrying' FROM queue.all_jobs WHERE id = %s", (again,))
        assert entry(conn, last) is None and entry(conn, again) is None
        assert conn.execute("SELECT queue_health() -> 'lease_book' ->> 'ready'").fetchone() == ("true",)


def test_a_rolled_back_ack_keeps_the_lease(queue_name):
    """The ack's removal from the book happens at commit only: an ack that
    rolls back, or one in a savepoint that rolls back, leaves the job leased,
    and its lease still lapses."""
    with connect() as conn:
        book_ready(conn)
        jobs = [r[0] for r in conn.execute(
            "SELECT queue_push(%s, '{}', timeout => '400 milliseconds', backoff_base => '1 hour') "
            "FROM generate_series(1, 2)", (queue_name,)).fetchall()]
        assert conn.execute("SELECT count(*) FROM queue_pop(%s, 'w', 2)", (queue_name,)).fetchone() == (2,)
        conn.execute("BEGIN")
        assert conn.execute("SELECT queue_ack(%s)", (jobs[0],)).fetchone() == (True,)
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT s")
        assert conn.execute("SELECT queue_ack(%s)", (jobs[1],)).fetchone() == (True,)
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("COMMIT")
        for job in jobs:
            assert entry(conn, job) is not None
        for job in jobs:
            wait_until(conn, "SELECT status::text = 'retrying' FROM queue.all_jobs WHERE id = %s", (job,))


def test_an_extended_lease_lapses_only_at_its_new_end(queue_name):
    with connect() as conn:
        book_ready(conn)
        job = conn.execute("SELECT queue_push(%s, '{}', timeout => '300 milliseconds', backoff_base => '1 hour')",
                           (queue_name,)).fetchone()[0]
        conn.execute("SELECT queue_pop(%s)", (queue_name,))
        assert conn.execute("SELECT queue_touch(%s, '30 seconds')", (job,)).fetchone() == (True,)
        # The book keeps the earlier end; at that end the pass reads the row
        # and takes the new one instead of expiring the job.
        new_end = conn.execute("SELECT lease_until FROM queue.jobs WHERE id = %s", (job,)).fetchone()[0]
        wait_until(conn, BOOK.replace("d.attempt, d.lease_until", "d.lease_until = %s"), (new_end, job))
        assert status(conn, job) == "processing"
        # A shorter lease is taken at once, and lapses.
        assert conn.execute("SELECT queue_touch(%s, '200 milliseconds')", (job,)).fetchone() == (True,)
        wait_until(conn, "SELECT status::text = 'retrying' FROM queue.all_jobs WHERE id = %s", (job,))


def test_workers_and_health_see_running_jobs_through_the_book(queue_name):
    worker = "lease-" + queue_name
    with connect() as conn:
        book_ready(conn)
        conn.execute("SELECT queue_heartbeat(%s)", (worker,))
        conn.execute("SELECT queue_push(%s, '{}') FROM generate_series(1, 3)", (queue_name,))
        conn.execute("SELECT count(*) FROM queue_pop(%s, %s, 3)", (queue_name, worker))
        assert conn.execute("SELECT running_jobs FROM queue_workers() WHERE worker = %s",
                            (worker,)).fetchone() == (3,)
        conn.execute("UPDATE queue.workers SET last_heartbeat = now() - interval '1 hour' WHERE worker = %s", (worker,))
        assert conn.execute("SELECT queue_reap_workers('5 minutes')").fetchone()[0] >= 3
        assert conn.execute("SELECT count(*) FROM queue.jobs WHERE queue = %s AND status = 'processing'",
                            (queue_name,)).fetchone() == (0,)


def test_an_overflowing_book_falls_back_to_scanning_and_recovers(queue_name):
    """More processing jobs than queue.max_leases: the book stops being used,
    lapsed leases are still found (by scanning the table), and once the jobs
    fit again a rebuild makes the book ready again."""
    with connect() as conn:
        book_ready(conn)
        conn.execute("ALTER SYSTEM SET queue.max_leases = 2")
        conn.execute("SELECT pg_reload_conf()")
        try:
            time.sleep(0.3)
            jobs = [r[0] for r in conn.execute(
                "SELECT queue_push(%s, '{}', timeout => '300 milliseconds', backoff_base => '1 hour') "
                "FROM generate_series(1, 5)", (queue_name,)).fetchall()]
            with connect() as worker:
                assert worker.execute("SELECT count(*) FROM queue_pop(%s, 'w', 5)", (queue_name,)).fetchone() == (5,)
            health = conn.execute("SELECT queue_health() -> 'lease_book'").fetchone()[0]
            assert health["overflowed"] is True and health["ready"] is False
            for job in jobs:
                wait_until(conn, "SELECT status::text = 'retrying' FROM queue.all_jobs WHERE id = %s", (job,))
        finally:
            conn.execute("ALTER SYSTEM RESET queue.max_leases")
            conn.execute("SELECT pg_reload_conf()")
            # Every process reloads at its next command or tick: let the
            # background workers have theirs before the next test starts.
            time.sleep(0.5)
        # An overflowed book is rebuilt at most every ten seconds.
        wait_until(conn, "SELECT (queue_health() -> 'lease_book' ->> 'ready')::boolean", timeout=20)


def test_no_processing_job_is_missing_from_the_book_under_concurrency(queue_name):
    """Eight connections claim, ack, fail, touch, roll back and abandon jobs
    at random for a few seconds while the maintenance pass expires short
    leases and rebuilds nothing. Afterwards every processing job is in the
    book with its attempt and a lease end no later than its own, and the
    abandoned jobs all lapse."""
    with connect() as conn:
        book_ready(conn)
        built_at = conn.execute("SELECT queue_health() -> 'lease_book' ->> 'built_at'").fetchone()[0]
        conn.execute(
            "SELECT count(*) FROM queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[3000]), "
            "timeout => '250 milliseconds', max_attempts => 1000, backoff_base => '0', backoff_max => '0')",
            (queue_name,))
    errors = []
    stop = time.monotonic() + 4

    def worker(n):
        rnd = random.Random(n)
        try:
            with connect() as c:
                while time.monotonic() < stop:
                    in_tx = rnd.random() < 0.3
                    if in_tx:
                        c.execute("BEGIN")
                    rows = c.execute("SELECT id, attempt FROM queue_pop(%s, %s, %s)",
                                     (queue_name, f"w{n}", rnd.randint(1, 10))).fetchall()
                    for job, attempt in rows:
                        action = rnd.random()
                        if action < 0.3:
                            c.execute("SELECT queue_ack(%s, attempt => %s)", (job, attempt))
                        elif action < 0.5:
                            c.execute("SELECT queue_fail(%s, 'again', attempt => %s, retry_in => '0')", (job, attempt))
                        elif action < 0.65:
                            c.execute("SELECT queue_touch(%s, %s::interval, attempt => %s)",
                                      (job, f"{rnd.randint(1, 400)} milliseconds", attempt))
                        elif action < 0.75:
                            c.execute("SELECT queue_ack(%s::bigint[])", ([job],))
                        # else: abandoned, its lease will lapse
                    if in_tx:
                        c.execute("ROLLBACK" if rnd.random() < 0.3 else "COMMIT")
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with connect() as conn:
        # The book promises completeness only while it is ready: a rebuild
        # (every ten minutes, or after the overflow test above) empties it
        # first and then loads every processing job. The book is read first
        # and the jobs in a later statement: the workers have stopped, so no
        # job enters processing in between, while the maintenance pass may
        # still expire some. A job that left processing after the jobs'
        # snapshot but before the book was read would otherwise look missing.
        deadline = time.monotonic() + 15
        while True:
            ready_before = conn.execute("SELECT queue.leases_ready()").fetchone()[0]
            book = {job: (attempt, lease) for job, attempt, lease in conn.execute(
                "SELECT id, attempt, lease_until FROM queue.leases_due('infinity', 2147483647)").fetchall()}
            jobs = conn.execute(
                "SELECT id, attempts, lease_until FROM queue.jobs WHERE queue = %s AND status = 'processing'",
                (queue_name,)).fetchall()
            ready = ready_before and conn.execute("SELECT queue.leases_ready()").fetchone()[0]
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert ready, "the book became ready again"
        missing = [(job, attempt) for job, attempt, _ in jobs if job not in book]
        other_attempt = [(job, attempt, book[job][0]) for job, attempt, _ in jobs
                         if job in book and book[job][0] != attempt]
        later = [(job, lease, book[job][1]) for job, attempt, lease in jobs
                 if job in book and book[job][0] == attempt and book[job][1] > lease]
        assert (missing, other_attempt, later) == ([], [], []), \
            f"{len(jobs)} processing: not in the book {missing}, book has another attempt " \
            f"{other_attempt}, book lease later than the row's {later}"
        # The safety-net rebuild did not run meanwhile (it would hide a gap).
        assert conn.execute("SELECT queue_health() -> 'lease_book' ->> 'built_at'").fetchone()[0] == built_at
        # Nothing stays processing: every lease lapses or was finished.
        wait_until(conn, "SELECT count(*) = 0 FROM queue.jobs WHERE queue = %s AND status = 'processing'",
                   (queue_name,), timeout=15)
        counts = dict(conn.execute(
            "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", (queue_name,)).fetchall())
        assert sum(counts.values()) == 3000
        conn.execute("SELECT queue_clear(%s)", (queue_name,))
