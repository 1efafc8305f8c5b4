"""Internals shared by the threaded and the asyncio worker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import os
import platform
import random
import secrets
import socket
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .errors import PermanentError, RetryIn
from .hooks import _Hooks, logger as default_logger
from .push import check_queue_name

VERSION = "0.1.0"

# Statements of the worker. Every value is a parameter.
_POP_COLUMNS = (
    "SELECT id, queue, payload, priority, serial_group, attempt, max_attempts, lease_until, created_at,"
    " lease_until - now() AS lease"  # now() is the claim's own time: this is the lease granted
)
POP_SQL = _POP_COLUMNS + " FROM queue_pop(%s::text, %s::text, %s::int)"
# Pooler mode: sleep in the server (up to the interval) when nothing is claimable.
POP_WAIT_SQL = _POP_COLUMNS + " FROM queue_pop(%s::text, %s::text, %s::int, wait => %s::interval)"
ACK_SQL = "SELECT queue_ack(%s::bigint, %s::jsonb, %s::int)"
FAIL_SQL = "SELECT queue_fail(%s::bigint, %s::text, %s::int, %s::interval, %s::boolean)"
TOUCH_SQL = "SELECT queue_touch(%s::bigint, %s::interval, %s::int)"
PROGRESS_SQL = "SELECT queue_progress(%s::bigint, %s::int, %s::int, %s::text, %s::int)"
HEARTBEAT_SQL = "SELECT queue_heartbeat(%s::text, %s::jsonb)"
RELEASE_SQL = "SELECT queue_release(%s::bigint, %s::int)"

# What an extension older than 0.2.0 lacks, said plainly (SQLSTATE 42883).
NO_RELEASE_MESSAGE = (
    "job %s: could not be given back: the server has no queue_release(bigint, integer) (the queue"
    " extension is older than 0.2.0; run ALTER EXTENSION queue UPDATE); it returns after its lease"
)
NO_WAIT_MESSAGE = (
    "claim failed: the server has no queue_pop(text, text, integer, interval), which pooler mode"
    " needs (the queue extension is older than 0.2.0; run ALTER EXTENSION queue UPDATE); retrying in %.1fs"
)


def is_missing_function(exc: BaseException) -> bool:
    """An extension too old for a call: ``undefined_function`` (42883)."""
    return isinstance(exc, psycopg.errors.UndefinedFunction)


def listen_statement(queue: str) -> sql.Composed:
    """``LISTEN "queue_<name>"`` with the channel quoted as an identifier."""
    return sql.SQL("LISTEN {}").format(sql.Identifier("queue_" + check_queue_name(queue)))


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying on a fresh connection: lost connections, server
    restarts, cancelled statements, serialization failures (all of them
    ``OperationalError``), and operations on a connection already closed."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


class Backoff:
    """Exponential backoff with jitter: ``first``, doubling, capped at ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        """Start at ``first`` seconds; never wait longer than ``cap``."""
        self.first, self.cap = first, cap
        self._next = first

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self.first

    def next(self) -> float:
        """The next delay in seconds, +-20% jitter."""
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)


MAX_ERROR_CHARS = 16000  # well inside queue.max_error_size (64 kB by default)


def as_status(value: Any) -> Optional[str]:
    """A status returned by ``queue_fail`` (``None`` when nothing changed)."""
    return None if value is None else str(value)


def describe_error(exc: BaseException, with_traceback: bool = True) -> str:
    """The text stored as a job's last error: ``Type: message``, then the traceback."""
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if with_traceback and not isinstance(exc, (PermanentError, RetryIn)):
        head += "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(head) > MAX_ERROR_CHARS:
        head = head[: MAX_ERROR_CHARS - 20] + "\n... (truncated)"
    return head


def default_worker_name() -> str:
    """``host-pid-xxxxxx``: unique per process, readable in ``queue_workers()``."""
    host = socket.gethostname().split(".")[0][:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def worker_info(name: str, queues: Sequence[str], concurrency: int, pooler: bool, state: str) -> Dict[str, Any]:
    """What the worker tells ``queue_heartbeat`` about itself."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "library": "pgqueue-python",
        "version": VERSION,
        "python": platform.python_version(),
        "queues": list(queues),
        "concurrency": concurrency,
        "pooler": pooler,
        "state": state,
    }


def check_handlers(handlers: Mapping[str, Callable[..., Any]], want_async: bool) -> Dict[str, Callable[..., Any]]:
    """Validate the queue -> handler mapping of a worker."""
    if not isinstance(handlers, Mapping) or not handlers:
        raise ValueError("handlers must be a non-empty mapping of queue name to handler")
    out: Dict[str, Callable[..., Any]] = {}
    for queue, fn in handlers.items():
        check_queue_name(queue)
        if not callable(fn):
            raise TypeError(f"handler for {queue!r} is not callable")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        if want_async and not is_async:
            raise TypeError(f"handler for {queue!r} must be an async function (use Worker for blocking handlers)")
        if not want_async and is_async:
            raise TypeError(f"handler for {queue!r} is an async function: use AsyncWorker")
        out[queue] = fn
    return out


def check_positive(what: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as seconds, or TypeError / ValueError when not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else '> 0'}: {value}")
    return float(value)


# Job states (client side).
RUNNING, FINISHING, DONE, RELEASED = "running", "finishing", "done", "released"


@dataclasses.dataclass(frozen=True)
class ClaimedRow:
    """One row of ``queue_pop``."""

    id: int
    queue: str
    payload: Any
    priority: int
    serial_group: Optional[str]
    attempt: int
    max_attempts: int
    lease_until: dt.datetime
    created_at: dt.datetime
    lease: dt.timedelta

    @classmethod
    def from_rows(cls, rows: List[Sequence[Any]]) -> List["ClaimedRow"]:
        """Rows of :data:`POP_SQL` as claims."""
        return [cls(*r) for r in rows]


class JobBase:
    """The data of a claimed job, shared by :class:`Job` and :class:`AsyncJob`."""

    __slots__ = ("_row", "_worker", "_lock", "_state", "_lost", "_next_touch", "_started")

    def __init__(self, row: ClaimedRow, worker: str) -> None:
        """A running claim of ``row`` by ``worker``; first lease extension at half the lease."""
        self._row = row
        self._worker = worker
        self._lock = threading.Lock()
        self._state = RUNNING
        self._lost = False
        self._started = time.monotonic()
        self._next_touch = self._started + self.touch_every

    # The claim, read-only.
    @property
    def id(self) -> int:
        """The job id."""
        return self._row.id

    @property
    def queue(self) -> str:
        """The queue the job was pushed to."""
        return self._row.queue

    @property
    def payload(self) -> Any:
        """The job's payload, decoded from JSON."""
        return self._row.payload

    @property
    def priority(self) -> int:
        """The job's priority (lower runs first)."""
        return self._row.priority

    @property
    def serial_group(self) -> Optional[str]:
        """The job's serial group, or ``None``."""
        return self._row.serial_group

    @property
    def attempt(self) -> int:
        """This claim's attempt number (1 for the first try)."""
        return self._row.attempt

    @property
    def max_attempts(self) -> int:
        """How many attempts the job has in all."""
        return self._row.max_attempts

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now sends the job to the dead letters."""
        return self._row.attempt >= self._row.max_attempts

    @property
    def created_at(self) -> dt.datetime:
        """When the job was pushed."""
        return self._row.created_at

    @property
    def lease(self) -> dt.timedelta:
        """The lease each claim or touch grants (the job's timeout)."""
        return self._row.lease

    @property
    def worker(self) -> str:
        """The name of the worker that claimed the job."""
        return self._worker

    @property
    def lease_lost(self) -> bool:
        """True once the worker learnt that this claim is no longer current.

        Set when a lease extension was refused (the lease ran out and the job
        was claimed again, or it was reaped) or when the worker gave the job
        back at shutdown. A handler may check it to stop early; its result
        will not be recorded.
        """
        return self._lost or self._state == RELEASED

    @property
    def touch_every(self) -> float:
        """Seconds between lease extensions: half the lease."""
        return max(0.05, self._row.lease.total_seconds() / 2)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} queue={self.queue!r} attempt={self.attempt}/{self.max_attempts}>"

    # State transitions, under the job's lock.
    def _begin_finish(self) -> bool:
        with self._lock:
            if self._state != RUNNING:
                return False
            self._state = FINISHING
            return True

    def _end_finish(self) -> None:
        with self._lock:
            self._state = DONE

    def _begin_release(self) -> bool:
        with self._lock:
            if self._state != RUNNING:
                return False
            self._state = RELEASED
            return True

    def _may_report(self) -> bool:
        with self._lock:
            return self._state == RUNNING and not self._lost


class WorkerBase:
    """Settings shared by :class:`~pgqueue.Worker` and :class:`~pgqueue.AsyncWorker`."""

    def _configure(self, dsn: str, handlers: Mapping[str, Callable[..., Any]], want_async: bool, *,
                   concurrency: int, name: Optional[str], grace: float, poll_interval: float,
                   heartbeat_interval: float, pooler: bool, pooler_wait: float, listeners: Sequence[Any], reconnect_max: float,
                   tracing: bool, logger: Any, connect_kwargs: Optional[Mapping[str, Any]]) -> None:
        if not isinstance(dsn, str):
            raise TypeError("dsn must be a connection string")
        self._dsn = dsn
        self._handlers = check_handlers(handlers, want_async)
        self.queues: List[str] = list(self._handlers)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be an int >= 1")
        self.concurrency = concurrency
        self.name = name if name is not None else default_worker_name()
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name must be a non-empty str")
        self.grace = check_positive("grace", grace, allow_zero=True)
        self.poll_interval = check_positive("poll_interval", poll_interval)
        self.heartbeat_interval = check_positive("heartbeat_interval", heartbeat_interval)
        self.pooler = bool(pooler)
        # The longest a pooler-mode claim sleeps in the server; keep it short (it holds a
        # pooled server connection and the xmin horizon for that long).
        self.pooler_wait = check_positive("pooler_wait", pooler_wait)
        self._reconnect_max = check_positive("reconnect_max", reconnect_max)
        self._log = logger or default_logger
        kwargs: Dict[str, Any] = {"application_name": f"pgqueue {self.name}"[:63]}
        given = conninfo_to_dict(dsn)
        # Fail fast on an unreachable server, and notice a dead peer on TCP.
        for key, value in (("connect_timeout", 10), ("keepalives", 1), ("keepalives_idle", 30),
                           ("keepalives_interval", 10), ("keepalives_count", 3)):
            if key not in given:
                kwargs[key] = value
        if self.pooler:
            kwargs["prepare_threshold"] = None  # transaction pooling breaks prepared statements
        kwargs.update(connect_kwargs or {})
        self._connect_kwargs = kwargs
        self._hooks = _Hooks(listeners, self._log, tracing, VERSION)
        self._rotation = 0

    def _queue_order(self) -> List[str]:
        """The handled queues, starting one further each call (fair claims)."""
        n = len(self.queues)
        self._rotation = (self._rotation + 1) % n
        return [self.queues[(self._rotation + i) % n] for i in range(n)]

    def _server_wait(self, until_heartbeat: float) -> dt.timedelta:
        """How long the next pooler-mode claim may sleep in the server: ``pooler_wait``,
        at most ``poll_interval`` when several queues share the worker (the wait watches
        one queue: the others are claimed from between waits), and never past the
        next heartbeat."""
        wait = self.pooler_wait if len(self.queues) == 1 else min(self.pooler_wait, self.poll_interval)
        return dt.timedelta(seconds=max(0.05, min(wait, until_heartbeat)))

    def _info(self, state: str) -> Dict[str, Any]:
        return worker_info(self.name, self.queues, self.concurrency, self.pooler, state)
