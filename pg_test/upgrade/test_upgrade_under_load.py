"""ALTER EXTENSION queue UPDATE while the queue is in use (driven by
scripts/upgrade-test.sh `new`, in a database of its own: `upgraded_busy`,
which `old` created with the oldest release).

Users upgrade a live system: a producer keeps pushing and a worker keeps
claiming and acknowledging while the update replaces the functions they call
(queue_pop and queue_push are dropped and created again with new signatures)
and alters the tables under them; the update's transaction is held open for
1.5 s, so that calls queue behind its locks or run the old functions meanwhile
and meet the new catalog when it commits. What must hold, checked here with this
tree's threaded Python worker and a producer connection:

* the update goes through while both run, and takes this build's version;
* no job is lost and none runs twice: every job pushed is completed, with one
  attempt, and its handler ran once;
* a call that meets the update fails, if at all, with a clear SQLSTATE (not
  an internal error), and no backend crashes.
"""
import collections
import logging
import os
import re
import sys
import threading
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python", "src"))

import pgqueue  # noqa: E402
from test_upgrade import DSN, NEW_VERSION, server_crashes, wait_until  # noqa: E402

BUSY_DSN = re.sub(r"dbname=\S+", "dbname=upgraded_busy", DSN)
QUEUE = "busy"
HOLD_S = 1.5  # how long the update's transaction stays open after the script ran


class Recorded(logging.Handler):
    """Every record of WARNING or above: its message and the SQLSTATEs of the
    database errors it carries (as its exception or among its arguments)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []
        self.sqlstates = []

    def emit(self, record):
        self.lines.append(record.getMessage())
        errors = list(record.args if isinstance(record.args, tuple) else ())
        if record.exc_info:
            errors.append(record.exc_info[1])
        self.sqlstates += [e.diag.sqlstate for e in errors if isinstance(e, psycopg.Error) and e.diag.sqlstate]


def test_update_while_a_worker_drains_and_a_producer_pushes(capsys):
    crashes = len(server_crashes())
    with psycopg.connect(BUSY_DSN, autocommit=True) as conn:
        old = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'queue'").fetchone()[0]
        assert old != NEW_VERSION, "upgraded_busy should still have the old release"

    runs = collections.Counter()
    runs_lock = threading.Lock()

    def handler(job):
        with runs_lock:
            runs[job.id] += 1
        time.sleep(0.002)
        return {"n": job.payload["n"]}

    log = logging.getLogger("pgqueue.upgrade-under-load")
    recorded = Recorded()
    log.addHandler(recorded)
    worker = pgqueue.Worker(BUSY_DSN, {QUEUE: handler}, concurrency=4, poll_interval=0.2, grace=10, logger=log)

    pushed, push_errors = [], []
    stop_pushing = threading.Event()

    def produce():
        n = 0
        with psycopg.connect(BUSY_DSN, autocommit=True) as p:
            while not stop_pushing.is_set():
                try:
                    pushed.append(pgqueue.push(p, QUEUE, {"n": n}))
                    n += 1
                except psycopg.Error as e:  # autocommit: a failed push created nothing
                    push_errors.append((e.diag.sqlstate, str(e).splitlines()[0]))
                    time.sleep(0.01)
                time.sleep(0.003)

    def completed():
        with psycopg.connect(BUSY_DSN, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'completed'",
                             (QUEUE,)).fetchone()[0]

    producer = threading.Thread(target=produce, daemon=True)
    worker.start()
    producer.start()
    try:
        wait_until(lambda: completed() >= 200, "200 jobs completed before the update", timeout=60)
        before = len(pushed)
        with psycopg.connect(BUSY_DSN, autocommit=True) as admin:
            start = time.monotonic()
            # Held open for a while before it commits: calls pile up behind its
            # locks, or run the old functions meanwhile, and then meet the new
            # catalog the moment it commits.
            with admin.transaction():
                admin.execute("ALTER EXTENSION queue UPDATE")
                admin.execute("SELECT pg_sleep(%s)", (HOLD_S,))
            update_ms = (time.monotonic() - start) * 1000
            assert admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'queue'").fetchone()[0] \
                == NEW_VERSION
        at_update = len(pushed)
        wait_until(lambda: len(pushed) >= at_update + 200, "200 pushes after the update", timeout=30)
        stop_pushing.set()
        producer.join(10)
        total = len(pushed)
        wait_until(lambda: completed() == total, f"all {total} jobs completed", timeout=60)
    finally:
        stop_pushing.set()
        worker.stop()
        worker.wait(30)

    with psycopg.connect(BUSY_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT id, status::text, attempts FROM queue.all_jobs WHERE queue = %s",
                            (QUEUE,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(pushed), "a job pushed was lost, or one appeared unasked"
    assert {(r[1], r[2]) for r in rows} == {("completed", 1)}, collections.Counter((r[1], r[2]) for r in rows)
    assert set(runs) == set(pushed) and set(runs.values()) == {1}, \
        f"handlers ran twice: {[i for i, k in runs.items() if k > 1][:10]}"
    assert all(state and state[:2] not in ("XX", "58") for state, _ in push_errors), push_errors
    assert not [s for s in recorded.sqlstates if s[:2] in ("XX", "58")], (recorded.sqlstates, recorded.lines)
    assert len(server_crashes()) == crashes, server_crashes()[crashes:]
    with capsys.disabled():
        print(f"\n[update under load] {old} -> {NEW_VERSION} in {update_ms:.0f} ms (held {HOLD_S} s); "
              f"{before} jobs pushed before it, {total - at_update} after; push errors: {push_errors or 'none'}; "
              f"worker warnings: {recorded.lines or 'none'}")
