#!/usr/bin/env python3
"""The raw-SQL drain of bench/clients/run.sh, the reference of the clients' drains.

    python3 bench/clients/raw/raw_drain.py DSN QUEUE JOBS BATCH CONNECTIONS [ids|job]

Prefills JOBS jobs with one queue_push_batch call (the same 64-byte payloads
as the client drivers), then CONNECTIONS threads, each on its own connection,
loop one round trip = one transaction, as bench/src/main.rs's W3/W4 do:

    BEGIN; SELECT queue_ack('{previous ids}'::bigint[]); SELECT id FROM queue_pop(q, w, BATCH); COMMIT;

until the queue is empty. With `job` (the least a worker that runs handlers
must do) each claim also fetches every job's payload (decoded) and attempt,
and the acks carry the attempts:

    BEGIN; SELECT queue_ack_batch('{ids}'::bigint[], '{attempts}'::int[]);
           SELECT id, attempt, payload FROM queue_pop(q, w, BATCH); COMMIT;

Prints one JSON line with jobs/s (time from the threads' start, connecting
included, to the last commit).
"""
import json
import sys
import threading
import time

import psycopg


def main():
    if len(sys.argv) not in (6, 7) or sys.argv[6:] not in ([], ["ids"], ["job"]):
        sys.exit(__doc__)
    dsn, queue, jobs, batch, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    whole_job = sys.argv[6:] == ["job"]
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
                    if held and whole_job:
                        sql += "SELECT queue_ack_batch('{%s}'::bigint[], '{%s}'::int[]);" % (
                            ",".join(str(r[0]) for r in held), ",".join(str(r[1]) for r in held))
                    elif held:
                        sql += "SELECT queue_ack('{%s}'::bigint[]);" % ",".join(str(r[0]) for r in held)
                    columns = "id, attempt, payload" if whole_job else "id"
                    sql += f"SELECT {columns} FROM queue_pop('{queue}', 'raw{w}', {batch});COMMIT;"
                    cur = conn.execute(sql)
                    acked = len(held)
                    held = []
                    while True:
                        if cur.description and cur.description[0].name == "id":
                            held = cur.fetchall()
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
    print(json.dumps({"client": "raw-job" if whole_job else "raw", "kind": "drain", "batch": batch,
                      "connections": conns, "jobs": jobs,
                      "seconds": seconds, "rate": jobs / seconds}))


if __name__ == "__main__":
    main()
