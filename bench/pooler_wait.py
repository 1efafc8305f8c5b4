#!/usr/bin/env python3
"""Pickup latency of workers that wait inside queue_pop, through PgBouncer.

    python3 bench/pooler_wait.py [--jobs 300] [--workers 1,8,32,64]

Starts a throwaway cluster (scripts/cluster.sh, port 25463, the extension
preloaded) and Debian's pgbouncer in transaction mode in front of it (port
25464). For each worker count, that many connections through pgbouncer loop
`queue_pop(q, w, 1, wait => '5 seconds')` (claims are not acked: the ack's
WAL flush would make a worker busy when the next job comes), while one
producer (a direct connection) pushes jobs one by one, 5 ms apart. Prints the
latency from the return of the push (its commit is flushed) to the return of
the pop that claimed it,
p50 / p95 / p99 / max, and the same with the workers connected directly (no
pooler), each also with claims that commit without waiting for the WAL flush
(synchronous_commit off for the workers' role): the difference is this
disk's flush time. Every job must be claimed exactly once.
"""
import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / ".run" / "pooler-bench-cluster"
BOUNCER = ROOT / ".run" / "pooler-bench-bouncer"
PG_PORT, BOUNCER_PORT = 25463, 25464
DIRECT = f"host=127.0.0.1 port={PG_PORT} user=postgres dbname=postgres"
POOLED = f"host=127.0.0.1 port={BOUNCER_PORT} user=postgres dbname=postgres"


def start():
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "start", str(CLUSTER), str(PG_PORT),
                    "max_connections = 200", "queue.tick = 100ms"], check=True)
    with psycopg.connect(DIRECT, autocommit=True) as c:
        c.execute("CREATE EXTENSION queue")
        # Workers whose claims commit without waiting for the WAL flush: the
        # pickup itself, apart from this disk's flush time.
        c.execute("CREATE ROLE lazy LOGIN SUPERUSER")
        c.execute("ALTER ROLE lazy SET synchronous_commit = off")
    subprocess.run([str(ROOT / "scripts/pgbouncer.sh"), "start", str(BOUNCER), str(BOUNCER_PORT), str(PG_PORT),
                    "postgres", "lazy"], check=True)


def stop():
    subprocess.run([str(ROOT / "scripts/pgbouncer.sh"), "stop", str(BOUNCER)], check=False)
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "stop", str(CLUSTER)], check=False)


def run(dsn, workers, jobs, queue):
    claimed, lock, stop_flag, errors = {}, threading.Lock(), threading.Event(), []

    def worker(n):
        try:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as c:
                while not stop_flag.is_set():
                    rows = c.execute("SELECT id FROM queue_pop(%s, %s, 1, wait => '5 seconds')",
                                     (queue, f"w{n}")).fetchall()
                    now = time.monotonic()
                    for (job,) in rows:
                        with lock:
                            if job in claimed:
                                errors.append(f"job {job} claimed twice")
                            claimed[job] = now
                    # No ack: its commit (a WAL flush) would keep the worker
                    # busy when the next job comes; pickup is what is timed.
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    committed = {}
    with psycopg.connect(DIRECT, autocommit=True) as p:
        for _ in range(jobs):
            committed[p.execute("SELECT queue_push(%s, '{}')", (queue,)).fetchone()[0]] = time.monotonic()
            time.sleep(0.005)
    deadline = time.monotonic() + 15
    while len(claimed) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_flag.set()
    with psycopg.connect(DIRECT, autocommit=True) as p:
        p.execute("SELECT queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[%s]))", (queue, workers))
    for t in threads:
        t.join(timeout=10)
    missing = set(committed) - set(claimed)
    if errors or missing:
        sys.exit(f"errors: {errors[:3]}, unclaimed: {len(missing)}")
    lat = sorted((claimed[j] - committed[j]) * 1000 for j in committed)
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]
    return pick(0.5), pick(0.95), pick(0.99), lat[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--workers", default="1,8,32,64")
    args = ap.parse_args()
    start()
    try:
        print("| workers | path | p50 ms | p95 ms | p99 ms | max ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n in [int(w) for w in args.workers.split(",")]:
            for label, dsn in (("pgbouncer", POOLED), ("direct", DIRECT),
                               ("pgbouncer, claims not flushed", POOLED.replace("user=postgres", "user=lazy")),
                               ("direct, claims not flushed", DIRECT.replace("user=postgres", "user=lazy"))):
                r = run(dsn, n, args.jobs, f"pw-{len(label)}-{n}")
                print(f"| {n} | {label} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} |", flush=True)
    finally:
        stop()


if __name__ == "__main__":
    main()
