"""A small queue worker in Python, for `make demo`.

It LISTENs on the queue's channel, claims jobs with queue_pop, acks them,
and fails the job whose payload asks for it (once), so the demo shows a
retry coming back after its backoff. It stops after `expected` completions.
"""
import sys
import time

import psycopg

dsn, queue, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.monotonic()


def say(msg):
    print(f"  [worker {time.monotonic() - start:5.2f}s] {msg}", flush=True)


with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(f'LISTEN "queue_{queue}"')
    say(f'listening on channel "queue_{queue}"')
    done = 0
    while done < expected:
        job = conn.execute(
            "SELECT id, priority, attempt, payload FROM queue_pop(%s, 'demo-worker')", (queue,)
        ).fetchone()
        if job is None:
            if not list(conn.notifies(timeout=15, stop_after=1)):
                say("no notification for 15 s, giving up")
                sys.exit(1)
            say("woken by NOTIFY")
            continue
        job_id, priority, attempt, payload = job
        say(f"claimed job {job_id} (priority {priority}, attempt {attempt}): {payload}")
        if payload.get("fail_first_try") and attempt == 1:
            status = conn.execute(
                "SELECT queue_fail(%s, 'SMTP server said 421, try later', attempt => %s)", (job_id, attempt)
            ).fetchone()[0]
            say(f"failed job {job_id} -> {status} (the maintenance worker brings it back after the backoff)")
            continue
        conn.execute("SELECT queue_ack(%s, %s::jsonb, attempt => %s)", (job_id, '{"ok": true}', attempt))
        done += 1
        say(f"acked job {job_id}")
    say(f"done: {done} jobs completed")
