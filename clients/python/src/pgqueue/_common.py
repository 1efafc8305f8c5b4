"""Internals shared by the threaded and the asyncio worker."""

from __future__ import annotations

import collections
import operator as _operator
import datetime as dt
import inspect
import math
import os
import platform
import random
import secrets
import socket
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import psycopg
from psycopg import sql
from psycopg.adapt import Loader, PyFormat
from psycopg.pq import Format
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from .errors import MaxRuntimeExceeded, PermanentError, RetryIn, format_duration
from .hooks import _Hooks, logger as default_logger
from .push import check_queue_name

VERSION = "0.1.0"

# Statements of the worker. Every value is a parameter.
# (lease_until itself is not fetched: a job exposes only the lease it grants.)
_POP_COLUMNS = (
    "SELECT id, queue, payload, priority, serial_group, attempt, max_attempts, created_at,"
    " lease_until - now() AS lease"  # now() is the claim's own time: this is the lease granted
)
POP_SQL = _POP_COLUMNS + " FROM queue_pop(%s::text, %s::text, %s::int)"
# Pooler mode: sleep in the server (up to the interval) when nothing is claimable.
POP_WAIT_SQL = _POP_COLUMNS + " FROM queue_pop(%s::text, %s::text, %s::int, wait => %s::interval)"
ACK_SQL = "SELECT queue_ack(%s::bigint, %s::jsonb, %s::int)"
# Many acks in one statement and one commit (typed arrays: ids, attempts, results).
ACK_BATCH_SQL = "SELECT queue_ack_batch(%s::bigint[], %s::int[], %s::jsonb[])"
# The acks of a batch and a claim of the next jobs of one queue, in one statement
# (one commit, one round trip): what the acker sends when a queue may have work.
# The first claimed row (or the one row, id NULL, of an empty claim) carries the
# ids the ack completed (``acked``; NULL on the others, which would otherwise
# each repeat the array: c rows of c ids to send and parse); then the columns
# of POP_SQL. The claim is a
# LATERAL subquery reading the ack's output (``after_the_ack``), so it can only
# run once the ack's row exists; OFFSET 0 keeps it from being flattened into the
# join. So a serial group the ack releases can hand its next job to this claim.
# Parameters: ids, attempts, results, queue, worker name, how many to claim.
ACK_CLAIM_SQL = (
    "SELECT CASE WHEN coalesce(p.ordinality, 1) = 1 THEN a.acked END, p.after_the_ack, p.id, p.queue, p.payload,"
    " p.priority, p.serial_group, p.attempt, p.max_attempts, p.created_at, p.lease"
    " FROM (SELECT queue_ack_batch(%s::bigint[], %s::int[], %s::jsonb[]) AS acked) AS a"
    " LEFT JOIN LATERAL (SELECT q.*, q.lease_until - now() AS lease,"
    " a.acked IS NOT NULL AS after_the_ack"
    " FROM queue_pop(%s::text, %s::text, %s::int) WITH ORDINALITY AS q OFFSET 0) AS p ON true"
)
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
    """The text stored as a job's last error: ``Type: message``, then the
    traceback. Never raises, and the text is one PostgreSQL can store: a NUL
    (which text cannot hold) is written ``\\x00``, a lone surrogate as its
    escape; an exception whose ``str()`` itself raises is named without its
    message. A :class:`~pgqueue.MaxRuntimeExceeded` is its message alone (the
    text every client records for it)."""
    try:
        message = str(exc)
    except Exception:
        message = "(its message could not be read)"
    if isinstance(exc, MaxRuntimeExceeded):
        return storable_text(message)
    head = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if with_traceback and not isinstance(exc, (PermanentError, RetryIn)):
        try:
            head += "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            pass
    if len(head) > MAX_ERROR_CHARS:
        head = head[: MAX_ERROR_CHARS - 20] + "\n... (truncated)"
    return storable_text(head)


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL text can hold it: NUL written ``\\x00``, lone
    surrogates as backslash escapes."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def fail_attempts(job_id: int, text: str, attempt: int, retry_in: Any, permanent: bool) -> List[tuple]:
    """The parameters of ``queue_fail`` to try in turn until one is accepted:
    as given; without the retry delay (one the server refuses, such as one
    beyond ``queue.max_delay``); then with a short fixed text (an error text
    the server refuses, such as one above a lowered ``queue.max_error_size``).
    A job whose failure cannot be recorded as given still fails, instead of
    waiting out its lease with its real error lost."""
    tries = [(job_id, text, attempt, retry_in, permanent)]
    if retry_in is not None:
        tries.append((job_id, text, attempt, None, permanent))
    tries.append((job_id, storable_text(text[:1000]) + "\n(the full error text was refused by the server)",
                  attempt, None, permanent))
    return tries


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


def check_max_runtime(value: Any, what: str = "max_runtime") -> float:
    """``value`` (seconds, or a :class:`datetime.timedelta`) as seconds; a
    TypeError or ValueError unless it is a positive, finite span."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}")
    else:
        seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be a positive, finite span: {value!r}")
    return seconds


class Handler:
    """A queue's handler with settings of its own, for a worker's ``handlers``
    mapping in place of the bare function::

        Worker(DSN, {"emails": send_email, "reports": Handler(render, max_runtime=600)},
               max_runtime=30)

    Args:
        fn: the handler (a function for :class:`~pgqueue.Worker`, an ``async``
            function for :class:`~pgqueue.AsyncWorker`).
        max_runtime: the longest one run of ``fn`` may take, in seconds or as
            a :class:`datetime.timedelta`; it overrides the worker's
            ``max_runtime`` for this queue. ``None`` (the default): the
            worker's.
    """

    __slots__ = ("fn", "max_runtime")

    def __init__(self, fn: Callable[..., Any], *, max_runtime: Any = None) -> None:
        """Validated at once: a TypeError / ValueError for a bad ``fn`` or ``max_runtime``."""
        if not callable(fn):
            raise TypeError("a Handler's fn must be callable")
        self.fn = fn
        self.max_runtime: Optional[float] = None if max_runtime is None else check_max_runtime(max_runtime)

    def __repr__(self) -> str:
        return f"Handler({self.fn!r}, max_runtime={self.max_runtime!r})"


def check_handlers(handlers: Mapping[str, Any], want_async: bool) -> Dict[str, Callable[..., Any]]:
    """Validate the queue -> handler mapping of a worker: queue -> the
    function (a :class:`Handler` gives its ``fn``)."""
    if not isinstance(handlers, Mapping) or not handlers:
        raise ValueError("handlers must be a non-empty mapping of queue name to handler")
    out: Dict[str, Callable[..., Any]] = {}
    for queue, fn in handlers.items():
        check_queue_name(queue)
        if isinstance(fn, Handler):
            fn = fn.fn
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


def runtime_limits(handlers: Mapping[str, Any], default: Optional[float]) -> Dict[str, float]:
    """queue -> the ``max_runtime`` of its handler in seconds: the
    :class:`Handler`'s own, else ``default``; queues without one are left out."""
    limits: Dict[str, float] = {}
    for queue, fn in handlers.items():
        own = fn.max_runtime if isinstance(fn, Handler) else None
        limit = own if own is not None else default
        if limit is not None:
            limits[queue] = limit
    return limits


# Job states (client side).
RUNNING, FINISHING, DONE, RELEASED = "running", "finishing", "done", "released"


class ClaimedRow(NamedTuple):
    """One row of ``queue_pop`` (a tuple: built in C from the row psycopg made).

    ``payload`` and ``created_at`` are what the claim's cursor loaded: the
    job's JSON text and the timestamp's text, still undecoded, when the worker
    claimed through :func:`claim_cursor` (the job decodes them on first use,
    see :attr:`JobBase.payload`, :attr:`JobBase.created_at`)."""

    id: int
    queue: str
    payload: Any
    priority: int
    serial_group: Optional[str]
    attempt: int
    max_attempts: int
    created_at: dt.datetime
    lease: dt.timedelta

    @classmethod
    def from_rows(cls, rows: List[Sequence[Any]]) -> List["ClaimedRow"]:
        """Rows of :data:`POP_SQL` as claims."""
        make = cls._make
        return [make(r) for r in rows]


def split_ack_claim(rows: Sequence[Sequence[Any]]) -> Tuple[List[int], List[ClaimedRow]]:
    """The rows of :data:`ACK_CLAIM_SQL`: (the ids the ack completed, the claimed jobs).
    Rows with a NULL id are not jobs (the one row of an empty claim)."""
    acked = next((r[0] for r in rows if r[0] is not None), None)  # the first row's
    make = ClaimedRow._make
    return list(acked or ()), [make(r[2:]) for r in rows if r[2] is not None]


JSONB_OID = psycopg.adapters.types["jsonb"].oid
TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid


class _RawLoader(Loader):
    """Loads a column as its text (bytes), undecoded: the payload and the
    creation time of a claim, which the job decodes only when read."""

    def load(self, data: Any) -> bytes:
        return data if type(data) is bytes else bytes(data)


class ClaimDecoders(NamedTuple):
    """How the jobs of one claim decode what :func:`claim_cursor` left as text:
    the ``load`` of the loaders the connection would have used for
    ``jsonb`` (the payload) and ``timestamptz`` (``created_at``)."""

    payload: Callable[[bytes], Any]
    created_at: Callable[[bytes], Any]


def claim_cursor(conn: Any) -> Tuple[Any, ClaimDecoders]:
    """A cursor of ``conn`` for a claim, and the functions that decode its jobs' fields.

    The cursor loads ``jsonb`` and ``timestamptz`` as undecoded text; the
    decoders are the ``load`` of the loaders ``conn`` would have used
    (``json.loads`` unless changed with
    :func:`psycopg.types.json.set_json_loads`; the connection's time zone),
    taken now as any statement would take them. A job decodes its payload
    and its creation time when first read: a handler that never reads them
    costs no parse (a timestamp's was half of a claimed row's load)."""
    adapters = conn.adapters
    decoders = ClaimDecoders(adapters.get_loader(JSONB_OID, Format.TEXT)(JSONB_OID, conn).load,
                             adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)(TIMESTAMPTZ_OID, conn).load)
    # One such cursor per connection, kept on it (a connection is used by one
    # claim at a time): made and given its loaders once, not at every claim.
    cur = getattr(conn, "_pgqueue_claim_cursor", None)
    if cur is None or cur.closed:
        cur = conn.cursor()
        cur.adapters.register_loader(JSONB_OID, _RawLoader)
        cur.adapters.register_loader(TIMESTAMPTZ_OID, _RawLoader)
        try:
            conn._pgqueue_claim_cursor = cur
        except AttributeError:  # a connection class without a __dict__: a cursor per claim
            pass
    return cur, decoders


def hand_over_slots(active: Dict[int, Any], batch: Sequence[Any], jobs: Sequence[Any],
                    stopping: bool) -> Tuple[List[Any], List[Any]]:
    """The slot hand-over of an ack that claimed: the acked jobs of ``batch``
    (whose ack just committed) leave ``active``, and the claimed ``jobs``
    take their slots, never more of them than left (a job that left
    ``active`` already, e.g. given back at a hard stop, frees nothing).
    Returns (the jobs now active, the jobs to give back: claimed while
    ``stopping``, or beyond the slots freed). The caller holds whatever
    guards ``active`` (the worker's lock; the event loop for asyncio)."""
    freed = 0
    for ack in batch:
        if active.get(ack.job.id) is ack.job:
            del active[ack.job.id]  # its ack committed: its slot passes on
            freed += 1
    started: List[Any] = []
    unstarted: List[Any] = []
    for job in jobs:
        if freed > 0 and not stopping:
            freed -= 1
            active[job.id] = job
            started.append(job)
        else:
            unstarted.append(job)
    return started, unstarted


class JobBase:
    """The data of a claimed job, shared by :class:`Job` and :class:`AsyncJob`."""

    __slots__ = ("_row", "_owner", "_worker", "_lock", "_state", "_lost", "_next_touch", "_started", "_payload",
                 "_loads", "_created", "_created_load", "_task", "_deadline", "_expiry", "_expired")

    def __init__(self, row: ClaimedRow, owner: Any, now: Optional[float] = None,
                 loads: Optional[ClaimDecoders] = None) -> None:
        """A running claim of ``row`` by the worker ``owner`` (built by the
        worker, not by users), claimed at ``now`` (the monotonic clock;
        default: now); first lease extension at half the lease. With
        ``loads`` (a claim's :class:`ClaimDecoders`), ``row.payload`` and
        ``row.created_at`` are text, decoded with them when first read. The
        subclasses add no ``__init__`` of their own: one is made per job."""
        self._row = row
        self._owner = owner
        self._worker = owner.name
        self._task = None  # the asyncio worker's task that runs it (AsyncJob)
        self._lock = threading.Lock()
        self._state = RUNNING
        self._lost = False
        # max_runtime (the threaded worker's lease keeper enforces it): when the
        # handler's run must end (monotonic), None without a limit; what the
        # expiry needs (limit, handler start, span); whether it happened.
        self._deadline: Optional[float] = None
        self._expiry: Any = None
        self._expired = False
        self._started = started = time.monotonic() if now is None else now
        self._next_touch = started + max(0.05, row.lease.total_seconds() / 2)  # touch_every, inlined
        self._payload = row.payload
        self._created = row.created_at
        if loads is None:
            self._loads = self._created_load = None
        else:
            self._loads = None if self._payload is None else loads.payload
            self._created_load = None if self._created is None else loads.created_at

    # The claim, read-only (getters in C: the workers read some of these many times a job).
    id = property(_operator.attrgetter("_row.id"), doc="The job id.")

    queue = property(_operator.attrgetter("_row.queue"), doc="The queue the job was pushed to.")

    @property
    def payload(self) -> Any:
        """The job's payload, decoded from JSON (on first read; then the same object)."""
        if self._loads is not None:
            with self._lock:
                loads = self._loads
                if loads is not None:
                    self._payload = loads(self._payload)
                    self._loads = None
        return self._payload

    priority = property(_operator.attrgetter("_row.priority"), doc="The job's priority (lower runs first).")

    serial_group = property(_operator.attrgetter("_row.serial_group"), doc="The job's serial group, or ``None``.")

    attempt = property(_operator.attrgetter("_row.attempt"), doc="This claim's attempt number (1 for the first try).")

    max_attempts = property(_operator.attrgetter("_row.max_attempts"), doc="How many attempts the job has in all.")

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure now sends the job to the dead letters."""
        return self._row.attempt >= self._row.max_attempts

    @property
    def created_at(self) -> dt.datetime:
        """When the job was pushed (decoded on first read; then the same object)."""
        if self._created_load is not None:
            with self._lock:
                load = self._created_load
                if load is not None:
                    self._created = load(self._created)
                    self._created_load = None
        return self._created

    lease = property(_operator.attrgetter("_row.lease"), doc="The lease each claim or touch grants (the job's timeout).")

    @property
    def worker(self) -> str:
        """The name of the worker that claimed the job."""
        return self._worker

    @property
    def lease_lost(self) -> bool:
        """True once the worker learnt that this claim is no longer current.

        Set when a lease extension was refused (the lease ran out and the job
        was claimed again, or it was reaped), when the worker gave the job
        back at shutdown, or when the handler ran past its ``max_runtime``
        (the worker failed the attempt). A handler may check it to stop
        early; its result will not be recorded.
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

    def _begin_expire(self) -> bool:
        """The handler ran past its max_runtime: the worker fails the attempt
        (FINISHING, as for any failure), and the handler's own outcome, when
        it comes, finds the job taken (``_expired``) and is dropped. One
        step, so that whoever loses the race to finish sees ``_expired``."""
        with self._lock:
            if self._state != RUNNING:
                return False
            self._state = FINISHING
            self._expired = True
            self._lost = True  # lease_lost: the stop signal a handler can check
            return True

    def _may_report(self) -> bool:
        with self._lock:
            return self._state == RUNNING and not self._lost


class WorkerBase:
    """Settings shared by :class:`~pgqueue.Worker` and :class:`~pgqueue.AsyncWorker`."""

    # When the worker's lease keeper wakes next by itself (monotonic), set by
    # the keeper before each sleep: a claim wakes it sooner only for a job
    # whose lease is due before (:meth:`_keeper_due`).
    _keeper_until = 0.0

    def _keeper_due(self, jobs: Sequence["JobBase"]) -> bool:
        """Whether the lease keeper must wake before its time for one of
        ``jobs`` (just claimed; the threaded worker calls it under its lock)."""
        until = self._keeper_until
        for job in jobs:
            if job._next_touch < until:
                return True
        return False

    def _configure(self, dsn: str, handlers: Mapping[str, Callable[..., Any]], want_async: bool, *,
                   concurrency: int, name: Optional[str], grace: float, poll_interval: float,
                   heartbeat_interval: float, pooler: bool, pooler_wait: float, listeners: Sequence[Any], reconnect_max: float,
                   tracing: bool, logger: Any, connect_kwargs: Optional[Mapping[str, Any]],
                   max_runtime: Any = None) -> None:
        if not isinstance(dsn, str):
            raise TypeError("dsn must be a connection string")
        self._dsn = dsn
        self._handlers = check_handlers(handlers, want_async)
        self.queues: List[str] = list(self._handlers)
        #: The default ``max_runtime`` of the worker's handlers, in seconds (None: no limit).
        self.max_runtime: Optional[float] = None if max_runtime is None else check_max_runtime(max_runtime)
        self._limits = runtime_limits(handlers, self.max_runtime)
        # Jobs whose handler ran past its max_runtime and has not returned yet:
        # failed already and out of the active set (a retry of the job may be
        # claimed meanwhile, by its id), but their slots stay taken: the
        # capacity is concurrency - len(active) - len(overtime).
        self._overtime: "set[Any]" = set()
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
        # Queues that may have work right now (the last claim from them returned
        # jobs), in the order they were marked: the acker claims from one of them
        # in its ack's own statement (ACK_CLAIM_SQL). Whoever claims from a queue
        # takes it off first (_take_dirty), so the claim loop and the acker never
        # both count on it; a claim that returned jobs marks it again. The threaded
        # worker touches it under its lock, the asyncio one on its loop.
        self._dirty: Dict[str, None] = {}

    def _mark_dirty(self, queue: str) -> None:
        """``queue`` may have more work (call under the worker's lock / on its loop)."""
        self._dirty[queue] = None

    def _take_dirty(self, queue: Optional[str] = None) -> Optional[str]:
        """Take ``queue`` (or, when None, the oldest marked queue) off the marked
        ones: the queue now, or None when it was not marked."""
        if queue is None:
            queue = next(iter(self._dirty), None)
            if queue is None:
                return None
        return queue if self._dirty.pop(queue, 0) is None else None

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

    def _overran(self, job: JobBase, exc: Optional[BaseException]) -> None:
        """The handler of ``job``, failed for running past its max_runtime, ended
        now: what it returned or raised (``exc``) is dropped, only logged."""
        limit, start = job._expiry[0], job._expiry[1]
        self._log.info("job %s: the handler %s after %.3fs, past its max_runtime of %s; that is dropped"
                       " (the attempt was failed already)", job.id,
                       "returned" if exc is None else f"raised {type(exc).__name__}",
                       time.monotonic() - start, format_duration(limit))


# ------------------------------------------------------------------ batched acks
#
# A finished job's ack goes to the worker's acker instead of a queue_ack (and a
# commit) of its own: the acker sends everything queued as ONE queue_ack_batch,
# one call in flight at a time, so acks that arrive during a call share the next
# one (group commit: one ack per call when idle, many under load). The batching
# below is shared; the threaded and the asyncio acker only add the loop that
# waits, calls and sleeps in their own way (worker.py, aio.py).
#
# Acks ride with claims: while the worker runs and a queue is marked as possibly
# having work (WorkerBase._dirty), the acker sends ACK_CLAIM_SQL instead, which
# acks the batch and claims up to as many jobs of that queue in one commit; the
# claimed jobs take over the acked jobs' slots (split_ack_claim reads the rows).

MAX_ACK_BATCH = 1000  # acks per call: bounds the statement, its row locks and its parameters
# The serialised results of one call, in bytes, at most (an ack whose own result
# is larger goes in a call of its own). 50 handlers returning 10 MB each (the
# default queue.max_result_size; a superuser may raise it far beyond) would
# otherwise make one 500 MB statement, held in the client's and the server's
# memory at once, and one such batch refused or lost fails every ack in it.
MAX_ACK_BATCH_BYTES = 8 * 1024 * 1024

NO_ACK_BATCH_MESSAGE = (
    "the server has no queue_ack_batch(bigint[], integer[], jsonb[]) (the queue extension is older"
    " than this client; run ALTER EXTENSION queue UPDATE): acking one job per call"
)
ACK_RETRY_MESSAGE = "acks of %d job(s) not delivered yet (%s); retrying in %.2fs"


class _PerJob:
    """The type of :data:`PER_JOB`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PER_JOB"


#: The outcome of an ack the acker hands back to its slot: "ack this job with a
#: ``queue_ack`` of its own" (no ``queue_ack_batch`` on the server, a batch the
#: server refused as a whole, or an acker that is stopped).
PER_JOB: Any = _PerJob()


def _as_is(text: str) -> str:
    """The ``dumps`` of a result that :func:`result_doc` serialised already."""
    return text


def result_doc(result: Any) -> Optional[Jsonb]:
    """A handler's result as a ``jsonb`` parameter, serialised now.

    psycopg serialises a :class:`~psycopg.types.json.Jsonb` only when its
    statement runs, so a result that cannot be serialised would break the
    whole batch it joined. Serialised here, in the job's own slot, it raises
    at once and only that job takes the "result could not be stored" path.
    The text comes from the ``dumps`` psycopg uses for ``Jsonb`` (``json.dumps``
    unless changed with :func:`psycopg.types.json.set_json_dumps`); ``None``
    stays SQL NULL.
    """
    if result is None:
        return None
    dumper = psycopg.adapters.get_dumper(Jsonb, PyFormat.TEXT)(Jsonb)
    data = dumper.dump(Jsonb(result))
    if data is None:  # only a None object dumps to NULL; kept for the type checker
        return None
    return Jsonb(bytes(data).decode("utf-8"), dumps=_as_is)


def doc_size(doc: Optional[Jsonb]) -> int:
    """The bytes ``doc`` (of :func:`result_doc`) adds to a statement: its
    JSON text as UTF-8 (0 for NULL)."""
    if doc is None:
        return 0
    text = doc.obj
    if isinstance(text, str):
        # json.dumps escapes non-ASCII by default: the text is almost always
        # ASCII, its length its size, with no copy made to measure it.
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return len(text) if isinstance(text, (bytes, bytearray)) else 0


_size_of = _operator.attrgetter("size")


class PendingAck:
    """One finished job's ack, queued to the worker's acker.

    ``waiter`` is anything with a ``set()`` (e.g. a :class:`threading.Event`):
    :meth:`resolve` calls it. The workers use subclasses with a cheaper
    waiter of their own (``worker._ThreadAck``: a plain lock the slot blocks
    on; ``aio._AsyncAck``: a bare future of the loop). Once :attr:`done`, :attr:`outcome` is
    ``True`` (completed), ``False`` (refused: the claim is no longer current),
    ``None`` (not delivered; the job returns after its lease) or
    :data:`PER_JOB`. ``size`` is what ``doc`` adds to a call (:func:`doc_size`).
    """

    __slots__ = ("job", "doc", "size", "first_try", "waiter", "outcome", "done")

    def __init__(self, job: JobBase, doc: Optional[Jsonb], waiter: Any) -> None:
        """The ack of ``job`` with its serialised result ``doc`` (see :func:`result_doc`)."""
        self.job = job
        self.doc = doc
        self.size = doc_size(doc)
        # When the batcher first handed it to a call (AckBatcher.take): the
        # give-up rule of a per-job delivery counts from there (give_up).
        self.first_try: Optional[float] = None
        self.waiter = waiter
        self.outcome: Any = None
        self.done = False

    @property
    def give_up(self) -> float:
        """Past this (monotonic) time a transient failure gives the ack up:
        ``max(30 s, the lease)`` after its first try, as for a per-job delivery."""
        start = time.monotonic() if self.first_try is None else self.first_try
        return start + max(30.0, self.job.lease.total_seconds())

    def resolve(self, outcome: Any) -> None:
        """Hand ``outcome`` to the waiting slot (the first outcome wins)."""
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self._wake()

    def _wake(self) -> None:
        """Wake the waiting slot (the subclasses' waiters override this)."""
        self.waiter.set()


class AckBatcher:
    """The batching of a worker's acker, shared by the threaded and the asyncio one.

    Holds the acks waiting for the next call and decides what a call's outcome
    means for each of them. It does no I/O and takes no lock: the threaded
    acker calls :meth:`add` and :meth:`take` under its own lock, the asyncio
    one from its loop; :meth:`settle` and :meth:`failed` touch only the batch
    they are given (and the :attr:`supported` flag).

    The acker's loop: :meth:`take` a batch, run :data:`ACK_BATCH_SQL` with
    :meth:`params`, then :meth:`settle` on success, or :meth:`failed` on an
    error, which returns the acks to send again after a backoff delay.
    """

    def __init__(self, log: Any, max_batch: int = MAX_ACK_BATCH, max_bytes: int = MAX_ACK_BATCH_BYTES) -> None:
        """Acks are logged to ``log``; at most ``max_batch`` go in one call,
        with at most ``max_bytes`` of results between them (see :meth:`take`)."""
        self._log = log
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.pending: Deque[PendingAck] = collections.deque()
        # False after 42883 (an extension without queue_ack_batch): every ack goes per job.
        self.supported = True

    def add(self, ack: PendingAck) -> bool:
        """Queue ``ack`` for the next call; False when the server has no
        ``queue_ack_batch`` (then the slot acks the job on its own)."""
        if not self.supported:
            return False
        self.pending.append(ack)
        return True

    def take(self) -> List[PendingAck]:
        """The next batch, oldest first: at most :attr:`max_batch` acks, results
        of at most :attr:`max_bytes` in all, and never two of the same job id
        (one worker may hold a stale and a current claim of a job; the ids
        that come back could not tell them apart, so the later one waits for
        the next call). The batch ends before the first ack that would take
        it past :attr:`max_bytes`, which starts the next one; an ack whose own
        result is larger goes alone. Empty when nothing is queued."""
        if not self.supported:
            self.abandon([], PER_JOB)
            return []
        pending = self.pending
        now = time.monotonic()
        max_bytes = self.max_bytes
        if len(pending) <= self.max_batch and sum(map(_size_of, pending)) <= max_bytes:
            batch = list(pending)
            if len({ack.job.id for ack in batch}) == len(batch):  # the common case: no id twice
                pending.clear()
                for ack in batch:
                    if ack.first_try is None:
                        ack.first_try = now
                return batch
        batch = []
        later: List[PendingAck] = []
        seen = set()
        total = 0
        while pending and len(batch) < self.max_batch:
            ack = pending[0]
            if ack.job.id in seen:
                later.append(pending.popleft())
                continue
            if batch and total + ack.size > max_bytes:
                break  # it starts the next batch
            pending.popleft()
            seen.add(ack.job.id)
            if ack.first_try is None:
                ack.first_try = now
            batch.append(ack)
            total += ack.size
            if total >= max_bytes:
                break  # full, or one result over the cap alone
        pending.extendleft(reversed(later))
        return batch

    @staticmethod
    def params(batch: Sequence[PendingAck]) -> Tuple[List[int], List[int], Optional[List[Optional[Jsonb]]]]:
        """The parameters of :data:`ACK_BATCH_SQL`: ids, attempts, results, in
        the order of the batch. With no result at all, ``results`` is NULL (the
        function's default): psycopg cannot type a list of nothing but None."""
        docs = [a.doc for a in batch]
        return ([a.job.id for a in batch], [a.job.attempt for a in batch],
                docs if any(d is not None for d in docs) else None)

    @classmethod
    def array_params(cls, batch: Sequence[PendingAck]) -> Tuple[str, str, Optional[List[Optional[Jsonb]]]]:
        """:meth:`params` as the worker sends them: the ids and the attempts as
        array literals (``'{1,2}'``, cast by the statement), which psycopg
        passes as one string instead of adapting each element."""
        ids, attempts, docs = cls.params(batch)
        return "{%s}" % ",".join(map(str, ids)), "{%s}" % ",".join(map(str, attempts)), docs

    @staticmethod
    def settle(batch: Sequence[PendingAck], completed: Optional[Sequence[int]]) -> None:
        """A call went through: the acks whose id came back completed, the
        others were refused (stale attempt, unknown or no longer processing)."""
        done = set(completed or ())
        for ack in batch:
            ack.resolve(ack.job.id in done)

    def failed(self, batch: Sequence[PendingAck], exc: BaseException, closing: bool) -> List[PendingAck]:
        """A call raised ``exc``: resolve what it settles, return what to send again.

        * 42883, no ``queue_ack_batch`` (an older extension): logged once; this
          batch and every later ack go per job.
        * Any other non-transient error (e.g. 22023, one result over
          ``queue.max_result_size``) refuses the call as a whole and changes
          nothing: its acks go per job, so only a bad one fails.
        * A transient error (lost connection, restart): the acks past their
          give-up time, or all of them when the worker is ``closing``, are
          given up (logged; they return after their lease); the rest are
          returned, to be retried after a backoff delay.
        """
        if is_missing_function(exc):
            if self.supported:
                self.supported = False
                self._log.warning(NO_ACK_BATCH_MESSAGE)
            for ack in batch:
                ack.resolve(PER_JOB)
            return []
        if not is_transient(exc):
            self._log.warning("a batch of %d ack(s) was refused as a whole (%s: %s); acking them one job per call",
                              len(batch), type(exc).__name__, exc)
            for ack in batch:
                ack.resolve(PER_JOB)
            return []
        now = time.monotonic()
        retry: List[PendingAck] = []
        for ack in batch:
            if closing or now > ack.give_up:
                self._log.error("job %s: outcome not delivered (%s); the job returns after its lease",
                                ack.job.id, exc)
                ack.resolve(None)
            else:
                retry.append(ack)
        return retry

    def abandon(self, batch: Sequence[PendingAck], outcome: Any) -> None:
        """Resolve ``batch`` and everything queued with ``outcome`` (an acker
        that can send no more: ``PER_JOB`` after an internal error, ``None``
        when it was cancelled)."""
        for ack in batch:
            ack.resolve(outcome)
        while self.pending:
            self.pending.popleft().resolve(outcome)
