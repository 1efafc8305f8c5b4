"""Nothing is lost: after `pg_ctl stop -m immediate` every committed job is
still there, in the state it had, and the queue carries on. Runs last (it
restarts the cluster)."""
import time

from conftest import connect, pg_ctl


def test_committed_jobs_survive_an_immediate_stop(queue_name):
    # Hold the counter flush back, so that the crash takes every tally of
    # this test with it and only the recount can put the gauges right.
    locker = connect()
    locker.execute("BEGIN")
    locker.execute("LOCK TABLE queue.stats IN EXCLUSIVE MODE")
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
        # Every other live shape, in a queue of its own: jobs waiting behind
        # their serial group, and a retrying job.
        grouped = queue_name + "-g"
        conn.execute("SELECT queue_push(%s, '{}', serial_group => 'crash-g') FROM generate_series(1, 3)", (grouped,))
        conn.execute("SELECT queue_push(%s, '{}')", (grouped,))
        retry = conn.execute("SELECT id FROM queue_pop(%s, 'doomed')", (grouped,)).fetchone()[0]
        assert conn.execute("SELECT queue_fail(%s, 'later', retry_in => '1 hour')", (retry,)).fetchone()[0] == "retrying"
        # A claim whose lease lapses while the server is down: only the lease
        # book rebuilt after the start can find it.
        lapsing = conn.execute(
            "SELECT queue_push(%s, '{}', timeout => '3 seconds', backoff_base => '1 hour')", (queue_name + "-l",)
        ).fetchone()[0]
        assert conn.execute("SELECT id FROM queue_pop(%s, 'doomed')", (queue_name + "-l",)).fetchone() == (lapsing,)
        before = dict(
            conn.execute(
                "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", (queue_name,)
            ).fetchall()
        )
    assert before == {"pending": 400, "scheduled": 50, "processing": 60, "completed": 40}
    with connect() as conn:
        assert conn.execute("SELECT status::text FROM queue.jobs WHERE id = %s", (lapsing,)).fetchone() == ("processing",)

    pg_ctl("-m", "immediate", "-w", "stop")
    locker.close()
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
                "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", (queue_name,)
            ).fetchall()
        )
        assert after == before
        # Shared memory went with the crash: the gauges are recounted from
        # the jobs once the maintenance worker is back. (Totals keep what was
        # flushed before the crash: at most the last tick is missing.)
        deadline = time.monotonic() + 30
        while conn.execute("SELECT queue_health() -> 'counters' -> 'recount_pending'").fetchone()[0] is not False:
            assert time.monotonic() < deadline, "no gauge recount after the crash"
            time.sleep(0.05)
        stats = conn.execute("SELECT queue_stats(%s)", (queue_name,)).fetchone()[0]
        assert (stats["pending"], stats["scheduled"], stats["processing"]) == (400, 50, 60)
        assert stats["total_pushed"] <= 550
        stats = conn.execute("SELECT queue_stats(%s)", (grouped,)).fetchone()[0]
        assert (stats["pending"], stats["retrying"], stats["processing"]) == (3, 1, 0)
        # The lease book went with shared memory and is rebuilt from the
        # table: it holds every claim of the crashed worker again, and the
        # lease that ran out meanwhile is found.
        deadline = time.monotonic() + 30
        while conn.execute("SELECT queue_health() -> 'lease_book' ->> 'ready'").fetchone()[0] != "true":
            assert time.monotonic() < deadline, "the lease book was not rebuilt"
            time.sleep(0.05)
        held = conn.execute(
            """SELECT count(*) FROM queue.jobs j JOIN queue.leases_due('infinity', 2147483647) d
                   ON d.id = j.id AND d.attempt = j.attempts AND d.lease_until = j.lease_until
                WHERE j.queue = %s AND j.status = 'processing'""", (queue_name,)).fetchone()[0]
        assert held == 60
        while conn.execute("SELECT status::text FROM queue.all_jobs WHERE id = %s", (lapsing,)).fetchone()[0] != "retrying":
            assert time.monotonic() < deadline, "the lapsed lease was not found after the restart"
            time.sleep(0.05)
        # The claims of the crashed worker are still leased to it; their old
        # attempt can still finish them, and everything else can be claimed.
        assert conn.execute("SELECT queue_ack(%s, attempt => %s)", claimed[50]).fetchone() == (True,)
        rest = conn.execute("SELECT count(*) FROM queue_pop(%s, 'after', 1000)", (queue_name,)).fetchone()[0]
        assert rest == 400


def test_pg_dump_and_restore_keep_jobs_and_schedules(queue_name, tmp_path):
    """Jobs, schedules and the id sequence survive pg_dump / pg_restore into
    a new database (the extension marks its tables as configuration)."""
    import subprocess

    bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    src = connect()
    with src:
        ids = [r[0] for r in src.execute(
            "SELECT queue_push_batch(%s, array_fill('{\"k\": 1}'::jsonb, ARRAY[5]))", (queue_name,)).fetchall()]
        src.execute("SELECT queue_schedule(%s, '@daily', %s)", ("dump-" + queue_name, queue_name))
    params = dict(p.split("=", 1) for p in __import__("conftest").DSN.split())
    target = "restore_" + queue_name.replace("-", "_")
    with connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{target}"')
        admin.execute(f'CREATE DATABASE "{target}"')
    dump = tmp_path / "db.dump"
    common = ["-h", params["host"], "-p", params["port"], "-U", params["user"]]
    subprocess.run([f"{bindir}/pg_dump", *common, "-Fc", "-f", str(dump), params["dbname"]], check=True)
    subprocess.run([f"{bindir}/pg_restore", *common, "-d", target, str(dump)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import psycopg

    with psycopg.connect(__import__("conftest").DSN.replace(f"dbname={params['dbname']}", f"dbname={target}"),
                         autocommit=True) as restored:
        got = [r[0] for r in restored.execute(
            "SELECT id FROM queue.all_jobs WHERE queue = %s ORDER BY id", (queue_name,)).fetchall()]
        assert got == ids
        assert restored.execute(
            "SELECT count(*) FROM queue_schedules() WHERE name = %s", ("dump-" + queue_name,)).fetchone() == (1,)
        new_id = restored.execute("SELECT queue_push(%s, '{}')", (queue_name,)).fetchone()[0]
        assert new_id > max(ids), "the id sequence was restored too"
    with connect() as admin:
        admin.execute(f'DROP DATABASE "{target}"')
        admin.execute("SELECT queue_unschedule(%s)", ("dump-" + queue_name,))


def test_a_new_installation_starts_counting_from_zero():
    """Counters of a dropped installation that were still in shared memory
    (not yet flushed) do not leak into the next CREATE EXTENSION."""
    with connect() as conn:
        conn.execute("SELECT queue_push('reinstalled', '{}') FROM generate_series(1, 5)")
        conn.execute("DROP EXTENSION queue")
        conn.execute("CREATE EXTENSION queue")
        time.sleep(0.5)  # several maintenance ticks, each of which flushes
        assert conn.execute("SELECT queue_stats() ->> 'total_pushed'").fetchone()[0] == "0"
        assert conn.execute("SELECT count(*) FROM queue.stats").fetchone()[0] == 0
