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

Workflows: ``push(..., depends_on=[a, b])`` blocks a job until ``a`` and ``b``
completed (its handler reads their results with :func:`dependencies`);
:func:`batch_open` / :func:`batch_close` group jobs under a callback job.
"""

from ._common import VERSION as __version__
from ._common import Handler
from .aio import AsyncJob, AsyncWorker
from .errors import MaxRuntimeExceeded, PermanentError, RetryIn, WorkerStopped
from .hooks import CallbackListener, JobEvent, WorkerListener, tracing_available
from .push import Priority, PushOptions, apush, apush_batch, check_queue_name, push, push_batch
from .worker import Job, Worker
from .workflows import (
    BatchStatus,
    Dependency,
    abatch_cancel,
    abatch_close,
    abatch_open,
    abatch_status,
    adependencies,
    batch_cancel,
    batch_close,
    batch_open,
    batch_status,
    dependencies,
)

__all__ = [
    "__version__",
    "push",
    "push_batch",
    "apush",
    "apush_batch",
    "PushOptions",
    "Priority",
    "check_queue_name",
    "dependencies",
    "adependencies",
    "Dependency",
    "batch_open",
    "batch_close",
    "batch_cancel",
    "batch_status",
    "abatch_open",
    "abatch_close",
    "abatch_cancel",
    "abatch_status",
    "BatchStatus",
    "Worker",
    "Job",
    "Handler",
    "AsyncWorker",
    "AsyncJob",
    "PermanentError",
    "RetryIn",
    "WorkerStopped",
    "MaxRuntimeExceeded",
    "WorkerListener",
    "CallbackListener",
    "JobEvent",
    "tracing_available",
]
