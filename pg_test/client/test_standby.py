"""A streaming standby and a failover: the configuration every production
primary has beside it.

A standby runs with the primary's settings, `shared_preload_libraries =
'queue'` included. It must run no service (nothing there can write), answer
the reads a dashboard or `queuectl` points at a replica for, refuse what
writes with SQLSTATE 25006 rather than wait or half-run, and, once promoted,
serve the queue from where the old primary stopped: leases it handed out
expire, delayed jobs come due, serial groups keep their order, claims made
on the old primary can still be acked, schedules fire, wake-ups and counters
work.

These tests start a primary of their own and a standby made from it with
`pg_basebackup`, both real servers with the installed extension.
"""
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
PRIMARY_DIR = RUN_DIR / "standby-test" / "primary"
STANDBY_DIR = RUN_DIR / "standby-test" / "standby"
PRIMARY_PORT, STANDBY_PORT = 25441, 25442
ROLES = ("queue launcher", "queue maintenance", "queue notifier", "queue scheduler")


def dsn(port):
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def as_postgres(*cmd):
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                   stdout=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                   if not k.startswith("RUST_")})


def bindir():
    return subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout.strip()


def replayed(primary, standby):
    """Wait until the standby has replayed everything the primary wrote."""
    lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    wait_until("standby caught up", lambda: standby.execute(
        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0])


def services(conn):
    return sorted(r[0] for r in conn.execute(
        "SELECT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'queue %'").fetchall())


def counts_of(conn, queue):
    """The status counts of queue_stats, and the same counted from the table."""
    s = conn.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]
    stats = {k: s[k] for k in ("pending", "scheduled", "processing", "retrying", "completed", "failed")}
    table = dict.fromkeys(stats, 0)
    table.update(conn.execute(
        "SELECT status::text, count(*) FROM (SELECT status FROM queue.jobs WHERE queue = %s"
        " UNION ALL SELECT status FROM queue.finished_jobs WHERE queue = %s) j GROUP BY 1", (queue, queue)).fetchall())
    return stats, {k: table[k] for k in stats}


@pytest.fixture(scope="module")
def pair():
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "start", str(PRIMARY_DIR), str(PRIMARY_PORT),
                    "queue.tick = 100ms"], check=True)
    try:
        with psycopg.connect(dsn(PRIMARY_PORT), autocommit=True) as c:
            c.execute("CREATE EXTENSION queue")
        subprocess.run(["rm", "-rf", str(STANDBY_DIR)], check=True)
        STANDBY_DIR.mkdir(parents=True)
        subprocess.run(["chown", "postgres:postgres", str(STANDBY_DIR)], check=True)
        as_postgres(f"{bindir()}/pg_basebackup", "-h", "127.0.0.1", "-p", str(PRIMARY_PORT), "-U", "postgres",
                    "-D", str(STANDBY_DIR / "data"), "-R", "-X", "stream")
        with open(STANDBY_DIR / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"port = {STANDBY_PORT}\nunix_socket_directories = '{STANDBY_DIR}'\n")
        as_postgres(f"{bindir()}/pg_ctl", "-D", str(STANDBY_DIR / "data"), "-l", str(STANDBY_DIR / "server.log"),
                    "-w", "-t", "60", "start")
        with psycopg.connect(dsn(PRIMARY_PORT), autocommit=True) as primary, \
                psycopg.connect(dsn(STANDBY_PORT), autocommit=True) as standby:
            assert standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            yield primary, standby
    finally:
        for d in (STANDBY_DIR, PRIMARY_DIR):
            if (d / "data" / "postmaster.pid").exists():
                as_postgres(f"{bindir()}/pg_ctl", "-D", str(d / "data"), "-m", "immediate", "-w", "stop")


def test_a_standby_runs_no_service_answers_reads_and_refuses_writes(pair):
    primary, standby = pair
    q = "sb"
    ids = [primary.execute("SELECT queue_push(%s, %s::jsonb, tags => '{t}')", (q, f'{{"n": {n}}}')).fetchone()[0]
           for n in range(4)]
    primary.execute("SELECT queue_push(%s, '{}', delay => '1 hour')", (q,))
    claimed = primary.execute("SELECT id, attempt FROM queue_pop(%s, 'w', batch => 2)", (q,)).fetchall()
    primary.execute("SELECT queue_ack(%s, '{\"ok\": 1}', attempt => %s)", claimed[0])
    primary.execute("SELECT queue_fail(%s, 'broken', attempt => %s, permanent => true)", claimed[1])
    primary.execute("SELECT queue_schedule('sb-every', 'every 1 hour', %s)", (q,))
    # Counters flushed on the primary, replayed on the standby.
    wait_until("the standby's counts reach the primary's", lambda: (
        replayed(primary, standby),
        counts_of(standby, q)[0] == counts_of(primary, q)[0])[1])

    time.sleep(1.5)  # long enough for a launcher to have started services
    assert services(standby) == [], "a standby runs no queue service"
    health = standby.execute("SELECT queue_health()").fetchone()[0]
    assert health["healthy"] is False and any("standby" in p for p in health["problems"]), health

    for query, args in [
        ("SELECT queue_job(%s)", (ids[0],)),
        ("SELECT queue_job(%s)", (claimed[1][0],)),
        ("SELECT queue_size(%s)", (q,)),
        ("SELECT array_agg(id ORDER BY id) FROM queue_peek(%s, 10)", (q,)),
        ("SELECT array_agg(id ORDER BY id) FROM queue_dead(%s)", (q,)),
        ("SELECT array_agg(name) FROM queue_schedules()", ()),
        ("SELECT count(*) FROM queue_list()", ()),
        ("SELECT (queue_metrics(%s)) ->> 'completed'", (q,)),
    ]:
        assert standby.execute(query, args).fetchone() == primary.execute(query, args).fetchone(), query
    assert standby.execute("SELECT queue_prometheus()").fetchone()[0].count("queue_up 0") == 1

    before = standby.execute("SELECT count(*), max(id), sum(attempts) FROM queue.jobs").fetchone()
    for query, args in [
        ("SELECT queue_push(%s, '{}')", (q,)),
        ("SELECT * FROM queue_pop(%s, 'w')", (q,)),
        ("SELECT queue_ack(%s, attempt => 1)", (ids[2],)),
        ("SELECT queue_tick()", ()),
    ]:
        with pytest.raises(errors.ReadOnlySqlTransaction):
            standby.execute(query, args)
    # A waiting pop of a queue with nothing claimable claims nothing, so on a
    # standby it would wait out every call and return nothing (nothing there
    # ever becomes claimable): it refuses at once.
    start = time.monotonic()
    with pytest.raises(errors.ReadOnlySqlTransaction, match="standby"):
        standby.execute("SELECT * FROM queue_pop('sb-empty', 'w', wait => '5 seconds')")
    assert time.monotonic() - start < 1.0
    with pytest.raises(errors.ReadOnlySqlTransaction, match="standby"):
        standby.execute("SELECT queue_tick()")
    assert standby.execute("SELECT count(*), max(id), sum(attempts) FROM queue.jobs").fetchone() == before


def test_a_waiting_pop_in_a_read_only_transaction_refuses_at_once(pair):
    primary, _ = pair
    with psycopg.connect(dsn(PRIMARY_PORT)) as c:
        c.execute("SET TRANSACTION READ ONLY")
        start = time.monotonic()
        with pytest.raises(errors.ReadOnlySqlTransaction, match="read-only transaction"):
            c.execute("SELECT * FROM queue_pop('ro-empty', 'w', wait => '5 seconds')")
        assert time.monotonic() - start < 1.0


def test_a_promoted_standby_serves_the_queue_where_the_primary_left_it(pair):
    primary, standby = pair
    # A job whose lease runs out after the failover, retried at once.
    lost = primary.execute("SELECT queue_push('fo-lost', '{}', timeout => '1 second', retry_delays => '{0}')"
                           ).fetchone()[0]
    assert primary.execute("SELECT id FROM queue_pop('fo-lost', 'old-worker')").fetchone() == (lost,)
    # A job that comes due after the failover.
    due = primary.execute("SELECT queue_push('fo-due', '{}', delay => '2 seconds')").fetchone()[0]
    # A serial group: the first claimed on the old primary, acked on the new one.
    g1 = primary.execute("SELECT queue_push('fo-group', '{\"n\": 1}', serial_group => 'g')").fetchone()[0]
    g2 = primary.execute("SELECT queue_push('fo-group', '{\"n\": 2}', serial_group => 'g')").fetchone()[0]
    first = primary.execute("SELECT id, attempt FROM queue_pop('fo-group', 'old-worker')").fetchone()
    assert first[0] == g1
    # Plain work in every state.
    for n in range(20):
        primary.execute("SELECT queue_push('fo-plain', %s::jsonb)", (f'{{"n": {n}}}',))
    plain = primary.execute("SELECT id, attempt FROM queue_pop('fo-plain', 'old-worker', batch => 5)").fetchall()
    for job in plain[:3]:
        primary.execute("SELECT queue_ack(%s, attempt => %s)", job)
    primary.execute("SELECT queue_schedule('fo-every', 'every 1 second', 'fo-scheduled')")
    replayed(primary, standby)

    # The primary dies (no shutdown checkpoint, no last flush of its
    # counters), and the standby is promoted.
    as_postgres(f"{bindir()}/pg_ctl", "-D", str(PRIMARY_DIR / "data"), "-m", "immediate", "-w", "stop")
    promoted_at = time.monotonic()
    assert standby.execute("SELECT pg_promote(wait => true)").fetchone() == (True,)
    new = standby
    wait_until("services on the promoted server", lambda: services(new) == sorted(ROLES), timeout=10)
    print(f"services running {time.monotonic() - promoted_at:.2f} s after the promotion began")

    with psycopg.connect(dsn(STANDBY_PORT), autocommit=True) as listener:
        listener.execute('LISTEN "queue_fo-wake"')
        new.execute("SELECT queue_push('fo-wake', '{}')")
        woken = [n.channel for n in listener.notifies(timeout=5, stop_after=1)]
        assert woken == ["queue_fo-wake"], "a push on the promoted server wakes its listeners"

    # The old primary's claim can still be acked with its attempt; then the
    # group's next job is released.
    assert new.execute("SELECT id FROM queue_pop('fo-group', 'w')").fetchone() is None, "g2 waits for g1"
    assert new.execute("SELECT queue_ack(%s, attempt => %s)", first).fetchone() == (True,)
    assert new.execute("SELECT id FROM queue_pop('fo-group', 'w')").fetchone() == (g2,)
    # The lease handed out by the old primary expires here, and the job is claimed again.
    again = wait_until("the lost job claimable again", lambda: new.execute(
        "SELECT id, attempt FROM queue_pop('fo-lost', 'new-worker')").fetchone(), timeout=10)
    assert again == (lost, 2)
    assert new.execute("SELECT queue_job(%s) -> 'errors' -> 0 ->> 'error'", (lost,)).fetchone()[0] is not None
    assert wait_until("the delayed job due", lambda: new.execute(
        "SELECT id FROM queue_pop('fo-due', 'w')").fetchone(), timeout=10) == (due,)
    wait_until("the schedule fires on the promoted server", lambda: new.execute(
        "SELECT count(*) FROM queue.jobs WHERE queue = 'fo-scheduled' AND created_at > now() - interval '3 seconds'"
    ).fetchone()[0] > 0, timeout=10)
    # New work flows. The gauges are recounted when the promoted server's
    # services start, so they are exact whatever the old primary had not
    # flushed; the cumulative totals lose at most what committed on it after
    # its last flush (README, Guarantees): here at most its last three acks.
    rest = new.execute("SELECT id, attempt FROM queue_pop('fo-plain', 'new-worker', batch => 100)").fetchall()
    assert len(rest) == 15
    for job in rest:
        new.execute("SELECT queue_ack(%s, attempt => %s)", job)
    gauges = ("pending", "scheduled", "processing", "retrying")
    for q in ("fo-lost", "fo-due", "fo-group", "fo-plain"):
        stats, table = wait_until(f"{q}: queue_stats' gauges equal the tables", lambda: (lambda s, t: (s, t) if all(
            s[k] == t[k] for k in gauges) else None)(*counts_of(new, q)), timeout=10)
        lost = 3 if q == "fo-plain" else 0
        for k in ("completed", "failed"):
            assert table[k] - lost <= stats[k] <= table[k], (q, k, stats, table)
    log = (STANDBY_DIR / "server.log").read_text()
    assert "PANIC" not in log and "terminated by signal" not in log, log[-3000:]
