"""A worker process for the shutdown tests: ``python worker_proc.py DSN QUEUE GRACE``.

Each job sleeps ``payload["sleep"]`` seconds. Events are printed as JSON
lines on stdout: ``{"event": "listening"}`` once LISTEN is up, then one line
per started / finished / failed / released job, and ``{"event": "exit"}``.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import pgqueue  # noqa: E402


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    dsn, queue, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def handler(job):
        time.sleep(job.payload.get("sleep", 0))
        return {"slept": job.payload.get("sleep", 0)}

    def event(e):
        say(event=e.kind, id=e.job.id, attempt=e.job.attempt, status=e.status)

    listener = pgqueue.CallbackListener(on_started=event, on_finished=event, on_failed=event, on_released=event)
    worker = pgqueue.Worker(dsn, {queue: handler}, concurrency=2, grace=grace, listeners=[listener],
                            poll_interval=0.5)

    import threading

    def announce():
        while not worker.listening:
            time.sleep(0.02)
        say(event="listening")

    threading.Thread(target=announce, daemon=True).start()
    worker.run()  # installs the SIGTERM / SIGINT handlers
    say(event="exit")


if __name__ == "__main__":
    main()
