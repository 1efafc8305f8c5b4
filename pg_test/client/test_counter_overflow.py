"""More (queue, priority) keys active at once than the shared counters table
holds (queue.max_counter_keys, 1,536 here): the counters stay exact, commits
are never lost, and what spilled into queue.stats is folded back.

A committing transaction pins a slot for each of its keys before commit; a
key the full table cannot take goes into the backend's rows of queue.stats
inside the transaction (src/stats.rs). Before this, such a commit's counts
were dropped after the commit and only the gauges were recounted: the totals
(pushed, completed, ...) and the throughput of those queues were lost.
"""
import random
import threading
import time

import pytest

from conftest import connect, remove_namespace

KEYS = 2_000  # beyond the table's 1,536 keys


@pytest.fixture
def prefix(queue_name):
    """The test's queues; removed afterwards, so that the thousands of
    queues do not slow the later tests' readers of every queue."""
    yield queue_name + "-"
    remove_namespace(queue_name + "-")


def totals(conn, prefix):
    """Counters summed over the queues of `prefix`, as queue_stats reads them."""
    return conn.execute(
        "SELECT coalesce(sum(pushed), 0), coalesce(sum(completed), 0), coalesce(sum(pending), 0),"
        "       coalesce(sum(processing), 0), count(*)"
        "  FROM queue.stats_rows() WHERE queue LIKE %s",
        (prefix + "%",),
    ).fetchone()


def throughput(conn, prefix):
    return conn.execute(
        "SELECT coalesce(sum(pushed), 0), coalesce(sum(completed), 0)"
        "  FROM queue_throughput(NULL, '10 minutes') WHERE queue_name LIKE %s",
        (prefix + "%",),
    ).fetchone()


def lost_tallies(conn):
    return int(conn.execute("SELECT queue_health() -> 'counters' ->> 'lost_tallies'").fetchone()[0])


def spilled_rows(conn, prefix):
    return conn.execute(
        "SELECT count(*) FROM queue.stats WHERE slot <> 0 AND queue LIKE %s", (prefix + "%",)
    ).fetchone()[0]


def test_one_transaction_with_more_keys_than_the_table_is_counted_exactly(prefix):
    with connect() as c:
        lost = lost_tallies(c)
        c.execute(
            "SELECT count(queue_push(%s || g, '{}')) FROM generate_series(1, %s) g", (prefix, KEYS)
        )
        # Exact at once, before any flush: nothing is left to shared memory
        # that it could not hold.
        pushed, completed, pending, processing, keys = totals(c, prefix)
        assert (pushed, pending, keys) == (KEYS, KEYS, KEYS)
        assert spilled_rows(c, prefix) > 0, "the keys beyond the table went to queue.stats"
        acked = c.execute(
            "SELECT count(queue_ack(p.id, NULL, p.attempt))"
            "  FROM generate_series(1, %s) g, LATERAL queue_pop(%s || g, 'w') p",
            (KEYS, prefix),
        ).fetchone()[0]
        assert acked == KEYS
        assert totals(c, prefix)[:4] == (KEYS, KEYS, 0, 0)
        # The throughput sums the flushed minutes and the backends' rows.
        deadline = time.monotonic() + 10
        while throughput(c, prefix) != (KEYS, KEYS) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert throughput(c, prefix) == (KEYS, KEYS)
        assert lost_tallies(c) == lost, "no commit's counts were dropped"
        # The per-queue view agrees.
        stats = c.execute("SELECT queue_stats(%s)", (prefix + "1",)).fetchone()[0]
        assert stats["pending"] == 0 and stats["completed"] == 1, stats


def test_concurrent_writers_over_many_keys_keep_exact_counts_and_the_spill_is_folded(prefix):
    writers, rounds, per_round = 4, 60, 12
    errors = []

    def work(seed):
        rng = random.Random(seed)
        try:
            with connect() as c:
                for _ in range(rounds):
                    picked = [f"{prefix}{rng.randrange(3 * KEYS // 2)}" for _ in range(per_round)]
                    # A push and an ack of a job of each queue, in one
                    # transaction per round, each at one of three priorities.
                    with c.transaction():
                        for q in picked:
                            c.execute("SELECT queue_push(%s, '{}', priority => %s)", (q, rng.choice([0, 5, 10])))
                    with c.transaction():
                        for q in set(picked):
                            for job, attempt in c.execute("SELECT id, attempt FROM queue_pop(%s, 'w', 20)", (q,)):
                                c.execute("SELECT queue_ack(%s, NULL, %s)", (job, attempt))
        except Exception as e:  # reported by the main thread
            errors.append(e)

    with connect() as c:
        lost = lost_tallies(c)
        # Fill the table beyond its size first, so that every writer spills.
        c.execute("SELECT count(queue_push(%s || 'fill-' || g, '{}')) FROM generate_series(1, %s) g", (prefix, KEYS))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        jobs = KEYS + writers * rounds * per_round
        assert totals(c, prefix)[:4] == (jobs, jobs - KEYS, KEYS, 0)
        truth = c.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'completed')"
            "  FROM queue.all_jobs WHERE queue LIKE %s",
            (prefix + "%",),
        ).fetchone()
        assert truth == (KEYS, jobs - KEYS)
        assert lost_tallies(c) == lost
        # The spilled rows are folded into the flushed ones within 100 ticks
        # (10 s here) and nothing changes in the sums. A fold pass takes at
        # most 500 rows (a backend that upserts a row being folded waits for
        # the pass), so this takes several passes, one per tick.
        assert spilled_rows(c, prefix) > 500
        deadline = time.monotonic() + 30
        while spilled_rows(c, prefix) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert spilled_rows(c, prefix) == 0
        assert totals(c, prefix)[:4] == (jobs, jobs - KEYS, KEYS, 0)
