"""pgqueue: Python workers and producers for the ``queue`` PostgreSQL extension.

Push jobs on your own connection (they exist only if your transaction
commits) and run handlers with a threaded :class:`Worker` or an asyncio
:class:`AsyncWorker`::

    import pgqueue, psycopg

    with psycopg.connect(DSN) as conn:
        pgqueue.push(conn, "emails", {"to": "a@example.com"}, priority="high")

    def send_email(job: pgqueue.Job):
        ...
        return {"sent": True}

    pgqueue.Worker(DSN, {"emails": send_email}, concurrency=8).run()
"""

from ._common import VERSION as __version__
from .aio import AsyncJob, AsyncWorker
from .errors import PermanentError, RetryIn, WorkerStopped
from .hooks import CallbackListener, JobEvent, WorkerListener, tracing_available
from .push import Priority, PushOptions, apush, apush_batch, check_queue_name, push, push_batch
from .worker import Job, Worker

__all__ = [
    "__version__",
    "push",
    "push_batch",
    "apush",
    "apush_batch",
    "PushOptions",
    "Priority",
    "check_queue_name",
    "Worker",
    "Job",
    "AsyncWorker",
    "AsyncJob",
    "PermanentError",
    "RetryIn",
    "WorkerStopped",
    "WorkerListener",
    "CallbackListener",
    "JobEvent",
    "tracing_available",
]
