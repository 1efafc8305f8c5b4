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
    writers, rounds, per_round, fill = 4, 60, 12, 3 * KEYS // 2
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
        # Fill the table beyond its size first, so that every writer spills,
        # with more keys than one fold pass takes (500).
        c.execute("SELECT count(queue_push(%s || 'fill-' || g, '{}')) FROM generate_series(1, %s) g", (prefix, fill))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        jobs = fill + writers * rounds * per_round
        assert totals(c, prefix)[:4] == (jobs, jobs - fill, fill, 0)
        truth = c.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'completed')"
            "  FROM queue.all_jobs WHERE queue LIKE %s",
            (prefix + "%",),
        ).fetchone()
        assert truth == (fill, jobs - fill)
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
        assert totals(c, prefix)[:4] == (jobs, jobs - fill, fill, 0)


def flushed_keys(conn, prefix):
    """Keys of `prefix` that the maintenance flush has written (slot 0)."""
    return conn.execute(
        "SELECT count(*) FROM queue.stats WHERE slot = 0 AND pushed > 0 AND queue LIKE %s", (prefix + "%",)
    ).fetchone()[0]


def test_a_half_full_table_is_flushed_before_the_tick(prefix):
    """A commit that leaves the shared table half full wakes the maintenance
    worker, which flushes at once instead of at its next tick, so that the
    keys of the next commits find room instead of spilling into queue.stats
    (an upsert each). With a 30 s tick the counters of 900 keys reach
    queue.stats within seconds, and none spilled."""
    keys = 900  # more than half of the 1,536 keys the table takes
    with connect() as c:
        c.execute("ALTER SYSTEM SET queue.tick = '30s'")
        c.execute("SELECT pg_reload_conf()")
        try:
            # The worker reads the new tick at its next wake and then sleeps 30 s.
            time.sleep(1.0)
            c.execute("SELECT count(queue_push(%s || g, '{}')) FROM generate_series(1, %s) g", (prefix, keys))
            deadline = time.monotonic() + 10
            while flushed_keys(c, prefix) < keys and time.monotonic() < deadline:
                time.sleep(0.05)
            assert flushed_keys(c, prefix) == keys, "flushed before the 30 s tick"
            assert spilled_rows(c, prefix) == 0
            assert totals(c, prefix)[:3] == (keys, 0, keys)
            # A commit of a few keys leaves the table nearly empty: no early
            # flush, its counts wait in shared memory for the tick.
            c.execute("SELECT queue_push(%s, '{}')", (prefix + "late",))
            time.sleep(1.0)
            assert flushed_keys(c, prefix) == keys
            assert totals(c, prefix)[:3] == (keys + 1, 0, keys + 1)
        finally:
            c.execute("ALTER SYSTEM RESET queue.tick")
            c.execute("SELECT pg_reload_conf()")
