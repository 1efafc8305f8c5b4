#!/usr/bin/env python3
"""A long transaction holding the xmin horizon while the queue runs at load.

Issue 16, item 6. Two producers push at a fixed rate (RATE jobs/s in all),
two workers pop and ack as fast as they can. After BEFORE seconds a separate
session opens a REPEATABLE READ transaction, takes a snapshot and holds it
for HOLD seconds, then ends it; the run goes on for AFTER seconds. Every 5 s
the script prints the phase, jobs done per second, pop latency (p50 / p99),
the live table's size and dead tuples, and what queue_health() reports as
the oldest snapshot.

    python3 bench/xmin_horizon.py [--dsn DSN] [--rate 1500] [--before 20] [--hold 60] [--after 30]

Without --dsn it starts a throwaway cluster of its own (scripts/cluster.sh,
port 25462, the extension preloaded, default settings).
"""
import argparse
import os
import subprocess
import threading
import time

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nearest_rank(values, p):
    """The p-quantile of values by nearest rank (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(int(round(p * len(ordered) + 0.5)) - 1, 0)]


class Load:
    """Producers at a fixed rate, workers as fast as they go; records each
    ack's time and each pop's latency."""

    def __init__(self, dsn, rate):
        self.dsn, self.rate = dsn, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = []      # monotonic time of each ack
        self.pops = []      # (monotonic time, latency) of each pop that claimed a job
        self.errors = []

    def producer(self, share):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                interval, next_at = 1.0 / share, time.monotonic()
                while not self.stop.is_set():
                    c.execute("SELECT queue_push('horizon', '{\"n\": 1}')")
                    next_at += interval
                    pause = next_at - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except Exception as e:  # reported at the end
            self.errors.append(e)

    def worker(self, n):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                while not self.stop.is_set():
                    t = time.monotonic()
                    row = c.execute("SELECT id, attempt FROM queue_pop('horizon', %s)", (f"w{n}",)).fetchone()
                    took = time.monotonic() - t
                    if row is None:
                        time.sleep(0.001)
                        continue
                    c.execute("SELECT queue_ack(%s, NULL, %s)", row)
                    now = time.monotonic()
                    with self.lock:
                        self.pops.append((t, took))
                        self.done.append(now)
        except Exception as e:
            self.errors.append(e)

    def start(self):
        self.threads = [threading.Thread(target=self.producer, args=(self.rate / 2,)) for _ in range(2)]
        self.threads += [threading.Thread(target=self.worker, args=(i,)) for i in range(2)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def table_state(c):
    """(live table + index size in MB, dead tuples, oldest snapshot kind/age)."""
    size = c.execute("SELECT pg_total_relation_size('queue.jobs') / 1e6").fetchone()[0]
    dead = c.execute("SELECT n_dead_tup FROM pg_stat_all_tables WHERE relid = 'queue.jobs'::regclass").fetchone()[0]
    snap = c.execute("SELECT queue_health() -> 'oldest_snapshot'").fetchone()[0]
    return size, dead, snap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn")
    ap.add_argument("--rate", type=float, default=1500)
    ap.add_argument("--before", type=int, default=20)
    ap.add_argument("--hold", type=int, default=60)
    ap.add_argument("--after", type=int, default=30)
    args = ap.parse_args()
    cluster = None
    if not args.dsn:
        cluster = os.path.join(ROOT, ".run", "xmin-horizon")
        subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "start", cluster, "25462"], check=True)
        args.dsn = "host=127.0.0.1 port=25462 user=postgres dbname=postgres"
        with psycopg.connect(args.dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION queue")
    try:
        run(args)
    finally:
        if cluster:
            subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "stop", cluster], check=False)


def run(args):
    load = Load(args.dsn, args.rate)
    load.start()
    holder = psycopg.connect(args.dsn)
    start = time.monotonic()
    phases = [("before", args.before), ("during", args.hold), ("after", args.after)]
    print(f"rate {args.rate:.0f} jobs/s pushed; 2 workers; a REPEATABLE READ snapshot held for {args.hold} s")
    print(f"{'t (s)':>6} {'phase':<7} {'done/s':>7} {'pop p50':>8} {'pop p99':>8} {'jobs MB':>8} {'dead':>8}  oldest snapshot")
    summary = {}
    with psycopg.connect(args.dsn, autocommit=True) as probe:
        window_start = start
        for phase, seconds in phases:
            if phase == "during":
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holder.execute("SELECT count(*) FROM queue.jobs")
            if phase == "after":
                holder.rollback()
            phase_end = time.monotonic() + seconds
            while time.monotonic() < phase_end - 0.01:
                time.sleep(max(0.0, min(5.0, phase_end - time.monotonic())))
                now = time.monotonic()
                with load.lock:
                    done = [t for t in load.done if window_start <= t < now]
                    pops = [d for t, d in load.pops if window_start <= t < now]
                size, dead, snap = table_state(probe)
                rate = len(done) / (now - window_start)
                p50, p99 = nearest_rank(pops, 0.5), nearest_rank(pops, 0.99)
                snap_text = f"{snap['kind']} {snap['age_seconds']} s" if snap else "-"
                print(f"{now - start:6.0f} {phase:<7} {rate:7.0f} {p50 * 1000 if p50 else 0:7.2f}ms"
                      f" {p99 * 1000 if p99 else 0:7.2f}ms {size:8.1f} {dead:8}  {snap_text}")
                summary.setdefault(phase, []).append((rate, p50 or 0, p99 or 0, size))
                window_start = now
    load.finish()
    holder.close()
    for phase, rows in summary.items():
        rates = [r[0] for r in rows]
        p99s = [r[2] for r in rows]
        print(f"{phase}: done/s median {sorted(rates)[len(rates) // 2]:.0f}, pop p99 worst {max(p99s) * 1000:.2f} ms, "
              f"live table {rows[0][3]:.1f} -> {rows[-1][3]:.1f} MB")
    if load.errors:
        raise SystemExit(f"errors: {load.errors[:3]}")


if __name__ == "__main__":
    main()
