"""Waiting inside queue_pop, through a real PgBouncer in transaction mode.

LISTEN needs a session, which a transaction-mode pooler does not give; so
workers behind one call `queue_pop(..., wait => '5 seconds')` in a loop. The
tests start Debian's pgbouncer in front of the test cluster and check that a
waiting call is woken at once by a push (through shared memory, not by
polling), that every job is claimed exactly once, and that a waiting backend
holds no row, no lock that writers notice, and no snapshot older than its
wait.
"""
import os
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import DSN, connect

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
BOUNCER_DIR = RUN_DIR / "pgbouncer"
BOUNCER_PORT = 25437


def backend_port():
    return dict(kv.split("=", 1) for kv in DSN.split())["port"]


@pytest.fixture(scope="module")
def bouncer():
    """A pgbouncer in transaction mode in front of the test cluster
    (scripts/pgbouncer.sh); its DSN."""
    script = str(ROOT / "scripts/pgbouncer.sh")
    subprocess.run([script, "start", str(BOUNCER_DIR), str(BOUNCER_PORT), backend_port()], check=True)
    try:
        yield f"host=127.0.0.1 port={BOUNCER_PORT} user=postgres dbname=postgres"
    finally:
        subprocess.run([script, "stop", str(BOUNCER_DIR)], check=False)


def pooled(dsn):
    # Transaction pooling: no server-side prepared statements, no session state.
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def test_a_waiting_pop_is_woken_by_each_push_through_the_pooler(bouncer, queue_name):
    """8 workers wait in queue_pop through pgbouncer; 300 jobs are pushed one
    by one. Each is claimed once, within a few milliseconds of its commit."""
    claimed = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def worker(n):
        try:
            with pooled(bouncer) as c:
                while not stop.is_set():
                    rows = c.execute(
                        "SELECT id FROM queue_pop(%s, %s, 1, wait => '5 seconds')", (queue_name, f"w{n}")
                    ).fetchall()
                    now = time.monotonic()
                    for (job,) in rows:
                        with lock:
                            assert job not in claimed, f"job {job} claimed twice"
                            claimed[job] = now
                        c.execute("SELECT queue_ack(%s)", (job,))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every worker is waiting
    committed = {}
    with pooled(bouncer) as producer:
        for _ in range(300):
            job = producer.execute("SELECT queue_push(%s, '{}')", (queue_name,)).fetchone()[0]
            committed[job] = time.monotonic()
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while len(claimed) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    # Unblock the waits: one push each that nobody needs to claim.
    with connect() as c:
        c.execute("SELECT queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[8]))", (queue_name,))
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors
    assert set(committed) <= set(claimed), "every pushed job was claimed"
    lat = sorted((claimed[j] - committed[j]) * 1000 for j in committed)
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]
    print(f"wake-up through pgbouncer, 8 waiting workers: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")
    # Woken, not polled: a missed wake-up would show as a wait of up to 5 s.
    # The latency target itself (p99 under 10 ms) is the benchmark's
    # (bench/pooler_wait.py), not a timed test's.
    assert lat[-1] < 1000, f"a job waited {lat[-1]:.0f} ms: a wake-up was missed"
    assert p50 < 20, f"p50 {p50:.2f} ms"


def test_a_wait_ends_empty_and_holds_no_lock_row_or_old_snapshot(bouncer, queue_name):
    """Waiting pops hold an ACCESS SHARE lock and a snapshot no older than
    their wait, nothing else; a wait with nothing pushed returns no row after
    its interval."""
    samples = []
    stop = threading.Event()

    def waiter():
        with pooled(bouncer) as c:
            while not stop.is_set():
                start = time.monotonic()
                rows = c.execute("SELECT id FROM queue_pop(%s, 'idle', 1, wait => '1 second')", (queue_name,)).fetchall()
                samples.append((rows, time.monotonic() - start))

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        seen = 0
        with connect() as obs:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                rows = obs.execute(
                    """SELECT a.pid, a.wait_event_type, a.wait_event,
                              extract(epoch FROM clock_timestamp() - a.xact_start),
                              (SELECT array_agg(DISTINCT l.mode) FROM pg_locks l
                                WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted),
                              (SELECT count(*) FROM pg_locks l
                                WHERE l.pid = a.pid AND l.locktype IN ('tuple', 'advisory', 'transactionid'))
                         FROM pg_stat_activity a
                        WHERE a.query LIKE '%%queue_pop%%''idle''%%' AND a.state = 'active'
                          AND a.pid <> pg_backend_pid()"""
                ).fetchall()
                for pid, wtype, wevent, age, modes, others in rows:
                    if wtype == "Extension":
                        seen += 1
                        assert age < 1.5, f"backend {pid} holds a snapshot {age:.2f} s old"
                        assert set(modes or []) <= {"AccessShareLock"}, modes
                        assert others == 0, "no row, advisory or xid lock while waiting"
                time.sleep(0.05)
        assert seen > 20, "the waiting backends were observed waiting"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    empty = [d for rows, d in samples if not rows]
    assert empty and all(0.9 < d < 1.6 for d in empty), empty[:5]


def test_a_batch_push_wakes_enough_waiters_and_a_cancel_ends_a_wait(bouncer, queue_name):
    """A batch of 40 jobs reaches 4 waiters claiming 10 each: the first woken
    passes the wake-up on. A waiting call is cancelled like any statement."""
    got = []
    lock = threading.Lock()

    def waiter(n):
        with pooled(bouncer) as c:
            rows = c.execute("SELECT id FROM queue_pop(%s, %s, 10, wait => '5 seconds')", (queue_name, f"b{n}")).fetchall()
            with lock:
                got.append((n, len(rows), time.monotonic()))

    threads = [threading.Thread(target=waiter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start = time.monotonic()
    with connect() as c:
        c.execute("SELECT queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[40]))", (queue_name,))
    for t in threads:
        t.join(timeout=10)
    assert sorted(n for _, n, _ in got) == [10, 10, 10, 10], got
    assert max(t for _, _, t in got) - start < 1.0, "all four woken at once, not at the end of their wait"

    with connect() as c:
        c.execute("SET statement_timeout = '300ms'")
        begun = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT * FROM queue_pop(%s, 'cancelled', 1, wait => '10 seconds')", (queue_name,))
        assert time.monotonic() - begun < 2
        c.execute("RESET statement_timeout")
        # Cancelled, it left no waiter behind that a push would still wake.
        c.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        assert c.execute("SELECT count(*) FROM queue_pop(%s, 'after', 1)", (queue_name,)).fetchone() == (1,)
