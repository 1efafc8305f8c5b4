#!/usr/bin/env python3
"""The raw-SQL drain of bench/clients/run.sh, the reference of the clients' drains.

    python3 bench/clients/raw/raw_drain.py DSN QUEUE JOBS BATCH CONNECTIONS

Prefills JOBS jobs with one queue_push_batch call (the same 64-byte payloads
as the client drivers), then CONNECTIONS threads, each on its own connection,
loop one round trip = one transaction, as bench/src/main.rs's W3/W4 do:

    BEGIN; SELECT queue_ack('{previous ids}'::bigint[]); SELECT id FROM queue_pop(q, w, BATCH); COMMIT;

until the queue is empty. Prints one JSON line with jobs/s (time from the
threads' start, connecting included, to the last commit).
"""
import json
import sys
import threading
import time

import psycopg


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    dsn, queue, jobs, batch, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    with psycopg.connect(dsn, autocommit=True) as c:
        n = c.execute("SELECT count(*) FROM queue_push_batch(%s, ARRAY(SELECT jsonb_build_object('n', i, 's', repeat('x', 64)) "
                      "FROM generate_series(1, %s) i))", (queue, jobs)).fetchone()[0]
        assert n == jobs
    done = [0]
    lock = threading.Lock()
    errors = []

    def worker(w):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                held = []
                while True:
                    sql = "BEGIN;"
                    if held:
                        sql += "SELECT queue_ack('{%s}'::bigint[]);" % ",".join(map(str, held))
                    sql += f"SELECT id FROM queue_pop('{queue}', 'raw{w}', {batch});COMMIT;"
                    cur = conn.execute(sql)
                    acked = len(held)
                    held = []
                    while True:
                        if cur.description and cur.description[0].name == "id":
                            held = [r[0] for r in cur.fetchall()]
                        if not cur.nextset():
                            break
                    with lock:
                        done[0] += acked
                    if not held:
                        return
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    if errors or done[0] != jobs:
        sys.exit(f"raw drain: {done[0]} of {jobs} acked, errors {errors[:3]}")
    print(json.dumps({"client": "raw", "kind": "drain", "batch": batch, "connections": conns, "jobs": jobs,
                      "seconds": seconds, "rate": jobs / seconds}))


if __name__ == "__main__":
    main()
