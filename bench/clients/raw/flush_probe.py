#!/usr/bin/env python3
"""This disk's commit flush time, the floor under every latency of run.sh.

    python3 bench/clients/raw/flush_probe.py DSN [COMMITS]

COMMITS (200) one-row INSERT commits on one autocommit connection, back to
back, into a scratch table; prints one JSON line with p50 / p99 / max of one
commit's round trip (ms). With synchronous_commit = on each one waits for its
WAL flush, as a claim (queue_pop) and an ack (queue_ack) of a worker do.
"""
import json
import sys
import time

import psycopg


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    dsn, commits = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 200
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS clients_bench_flush (id bigserial PRIMARY KEY, at timestamptz)")
        ms = []
        for _ in range(commits):
            t = time.monotonic()
            c.execute("INSERT INTO clients_bench_flush (at) VALUES (now())")
            ms.append((time.monotonic() - t) * 1000)
        c.execute("DROP TABLE clients_bench_flush")
    print(json.dumps({"client": "raw", "kind": "flush", "ms": ms}))


if __name__ == "__main__":
    main()
