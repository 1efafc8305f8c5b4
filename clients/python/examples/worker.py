"""A runnable pgqueue worker.

    python examples/worker.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres" --demo

``--demo`` first pushes a few jobs (one that fails once, one permanent
failure, one long report with progress). Stop with Ctrl-C or SIGTERM: running
jobs get ``--grace`` seconds, then are given back. ``--pooler`` waits inside
``queue_pop`` instead of LISTEN (behind PgBouncer in transaction mode).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import pgqueue  # noqa: E402


def send_email(job: pgqueue.Job) -> dict:
    """Pretend to send an email; fails once when the payload asks for it."""
    to = job.payload.get("to")
    if not to:
        raise pgqueue.PermanentError("payload has no 'to'")  # retrying cannot help
    if job.payload.get("flaky") and job.attempt == 1:
        raise pgqueue.RetryIn(2, "SMTP 421, try again in 2 s")
    print(f"  sent email to {to} (attempt {job.attempt})", flush=True)
    return {"delivered_to": to}


def build_report(job: pgqueue.Job) -> dict:
    """A long job: reports progress; its lease is extended while it runs (up
    to its max_runtime, which it checks between pages: a thread cannot be
    interrupted)."""
    pages = int(job.payload.get("pages", 5))
    for page in range(1, pages + 1):
        if job.lease_lost:  # past its max_runtime (or the claim was taken away): the outcome would be dropped
            return {"stopped_at": page}
        time.sleep(0.5)
        job.progress(page, pages, f"page {page} of {pages}")
    return {"pages": pages}


class PrintListener(pgqueue.WorkerListener):
    """Prints every outcome with its duration."""

    def on_finished(self, event: pgqueue.JobEvent) -> None:
        print(f"  job {event.job.id} ({event.job.queue}) {event.status} in {event.duration:.2f}s", flush=True)

    def on_failed(self, event: pgqueue.JobEvent) -> None:
        print(f"  job {event.job.id} ({event.job.queue}) failed -> {event.status}: {event.error}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "dbname=postgres"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--pooler", action="store_true", help="no LISTEN: wait inside queue_pop (PgBouncer transaction mode)")
    parser.add_argument("--demo", action="store_true", help="push some jobs first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.demo:
        with psycopg.connect(args.dsn) as conn:  # one transaction: all or nothing
            pgqueue.push(conn, "emails", {"to": "a@example.com"}, priority="high")
            pgqueue.push(conn, "emails", {"to": "b@example.com", "flaky": True})
            pgqueue.push(conn, "emails", {}, max_attempts=5)  # goes to the dead letters at once
            pgqueue.push_batch(conn, "emails", [{"to": f"user{i}@example.com"} for i in range(3)], priority="low")
            pgqueue.push(conn, "reports", {"pages": 6}, timeout=2)  # outlives its 2 s lease, kept alive
        print("pushed the demo jobs", flush=True)

    worker = pgqueue.Worker(
        args.dsn,
        {"emails": send_email, "reports": pgqueue.Handler(build_report, max_runtime=60)},
        concurrency=args.concurrency,
        max_runtime=10,  # a hung handler fails its attempt after 10 s (the reports get 60 s)
        grace=args.grace,
        pooler=args.pooler,
        listeners=[PrintListener()],
    )
    print(f"worker {worker.name} running; Ctrl-C or SIGTERM to stop", flush=True)
    worker.run()  # blocks; SIGTERM / SIGINT stop it gracefully


if __name__ == "__main__":
    main()
