"""A Python worker for test_cross_language.py: ``python cross_worker_proc.py DSN QUEUE``.

Serves the queue next to a Node and a Rust worker. Each handler sleeps ``payload["ms"]``
milliseconds and returns ``{lang, pid, start, end}`` (milliseconds of the
system's monotonic clock, CLOCK_MONOTONIC, which the Node and Rust workers read
too) as the job's result. Prints JSON lines: ``ready``, one ``start`` per job, ``exit``.
SIGTERM stops it gracefully.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import pgqueue  # noqa: E402

_out = threading.Lock()


def say(**fields):
    with _out:
        print(json.dumps(fields), flush=True)


def main():
    dsn, queue = sys.argv[1], sys.argv[2]

    def handler(job):
        start = time.monotonic_ns() / 1e6
        say(event="start", id=job.id, attempt=job.attempt)
        time.sleep(job.payload.get("ms", 0) / 1000)
        return {"lang": "python", "pid": os.getpid(), "start": start, "end": time.monotonic_ns() / 1e6}

    worker = pgqueue.Worker(dsn, {queue: handler}, concurrency=4, grace=5, poll_interval=1)

    def announce():
        while not worker.listening:
            time.sleep(0.02)
        say(event="ready", name=worker.name)

    threading.Thread(target=announce, daemon=True).start()
    worker.run()
    say(event="exit")


if __name__ == "__main__":
    main()
