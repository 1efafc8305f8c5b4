"""The asyncio worker: :class:`AsyncWorker` and the :class:`AsyncJob` its handlers get."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import datetime as dt
import logging
import signal
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Union

import psycopg
from psycopg.types.json import Jsonb

from . import _common as c
from .errors import MaxRuntimeExceeded, WorkerStopped, as_timedelta, format_duration, is_permanent, retry_in_of
from .hooks import JobEvent, _event
from .workflows import Dependency, _DEPENDENCIES_SQL, _dependency

__all__ = ["AsyncWorker", "AsyncJob"]

AsyncHandler = Callable[["AsyncJob"], Awaitable[Any]]

# asyncio.Task(..., eager_start=True): Python 3.12 and later (see AsyncWorker._start_jobs).
_EAGER_START = sys.version_info >= (3, 12)


class _AsyncPool:
    """The asyncio twin of the threaded worker's pool (used on one loop only,
    so its bookkeeping needs no lock: a task that finds no connection waits
    on a future of its own, woken in turn as connections come back)."""

    def __init__(self, dsn: str, size: int, connect_kwargs: Mapping[str, Any]) -> None:
        self._dsn = dsn
        self._size = size
        self._kwargs = dict(connect_kwargs)
        self._idle: List[psycopg.AsyncConnection] = []
        self._open = 0
        self._waiters: "collections.deque[asyncio.Future[None]]" = collections.deque()
        self._closed = False

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def acquire(self) -> psycopg.AsyncConnection:
        """A connection of the pool (see :meth:`pgqueue.worker._Pool.acquire`);
        give it back with :meth:`release`."""
        while not self._idle and self._open >= self._size and not self._closed:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # woken, then cancelled: the turn passes on
                raise
        if self._closed:
            raise psycopg.InterfaceError("the worker's connection pool is closed")
        if self._idle:
            return self._idle.pop()
        self._open += 1
        try:
            return await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **self._kwargs)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def release(self, conn: psycopg.AsyncConnection) -> None:
        """Give back a connection of :meth:`acquire` (closed if it broke)."""
        if conn.closed or conn.broken or self._closed:
            await _aclose_quietly(conn)
            self._open -= 1
        else:
            self._idle.append(conn)
        self._wake_one()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    async def _retried(self, work: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        """``await work(conn)`` on a pooled connection; retried once on a fresh
        connection after a transient error."""
        for tries in (1, 2):
            try:
                conn = await self.acquire()
                try:
                    return await work(conn)
                finally:
                    await self.release(conn)
            except Exception as exc:
                if tries == 2 or not c.is_transient(exc) or self._closed:
                    raise
        raise AssertionError("unreachable")

    async def call(self, query: Any, params: Sequence[Any] = (), fetch: str = "one") -> Any:
        """Run one statement (:meth:`_retried`): its first column of its first
        row, or with ``fetch="all"`` every row."""
        async def work(conn: psycopg.AsyncConnection) -> Any:
            cur = await conn.execute(query, params)
            if fetch == "all":
                return await cur.fetchall()
            row = await cur.fetchone()
            return None if row is None else row[0]
        return await self._retried(work)

    async def claim(self, query: Any, params: Sequence[Any]) -> "tuple[List[Any], Any]":
        """A claim through :func:`~pgqueue._common.claim_cursor`: (its rows,
        the jobs' decoders); retried once like :meth:`call`."""
        async def work(conn: psycopg.AsyncConnection) -> "tuple[List[Any], Any]":
            cur, loads = c.claim_cursor(conn)
            await cur.execute(query, params)
            return await cur.fetchall(), loads
        return await self._retried(work)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        while self._waiters:  # they find the pool closed
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        for conn in idle:
            await _aclose_quietly(conn)


def _uncancel() -> None:
    """Take back one cancel request of the current task (``Task.uncancel()``,
    Python 3.11+): the worker's own, which the task has handled."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None and task.cancelling() > 0:  # type: ignore[union-attr]
        uncancel()


def _task_cancelled() -> bool:
    """Whether the current task was asked to cancel (``Task.cancelling()``,
    Python 3.11+; before it, any CancelledError counts as one)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else cancelling() > 0


async def _aclose_quietly(conn: psycopg.AsyncConnection) -> None:
    try:
        await conn.close()
    except Exception:
        pass


class _AsyncAck(c.PendingAck):
    """A :class:`~pgqueue._common.PendingAck` that carries the rest of its job
    instead of a waiter: resolving it (on the loop, in the acker's settle)
    runs :meth:`AsyncWorker._acked` in the job's own context, which reports
    the outcome and frees the slot. The job's task ended when it queued the
    ack, so an ack costs no future, no task and no loop step of its own."""

    __slots__ = ("worker", "result", "duration", "span", "context")

    def __init__(self, job: "AsyncJob", doc: Any, worker: "AsyncWorker", result: Any, duration: float,
                 span: Any, context: contextvars.Context) -> None:
        """The ack of ``job`` (``doc``: its serialised ``result``; ``duration``:
        the handler's run; ``span``: its open span handle or None), finished
        by ``worker`` in ``context`` once resolved."""
        # PendingAck.__init__, inlined (one made per job).
        self.job = job
        self.doc = doc
        self.size = c.doc_size(doc)
        self.first_try = None
        self.waiter = None
        self.outcome = None
        self.done = False
        self.worker = worker
        self.result = result
        self.duration = duration
        self.span = span
        self.context = context

    def _wake(self) -> None:
        """Finish the job in its context (the span is current there, as it
        was for the handler; the listeners see it too)."""
        try:
            self.context.run(self.worker._acked, self)
        except RuntimeError as exc:  # the context is entered already: we are in the job's own code
            if "already entered" not in str(exc):
                raise
            self.worker._acked(self)


class _AsyncAcker:
    """The asyncio twin of the threaded worker's acker: one task that sends the
    acks of finished jobs, everything queued as one ``queue_ack_batch`` call,
    one call at a time; acks queued meanwhile go into the next call. The
    batching is :class:`~pgqueue._common.AckBatcher`'s, shared with the
    threaded worker; this class adds the task and the retry sleep. Like the
    threaded acker it claims in the ack's own statement while a queue may
    have work (:meth:`_ack_and_claim`).
    """

    def __init__(self, worker: "AsyncWorker") -> None:
        """An acker for ``worker``; :meth:`start` it on the worker's loop."""
        self._worker = worker
        self._batcher = c.AckBatcher(worker._log)
        self._wake = asyncio.Event()
        self._stopping = False
        self.task: Optional["asyncio.Task[None]"] = None
        # A batch acked by a call that also claimed, settled later (_defer_settle),
        # and whether that call started jobs (their first steps still to run).
        self._deferred: Optional["tuple[List[c.PendingAck], Any]"] = None
        self._started_jobs = False

    def start(self) -> None:
        """Start the acker's task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run())

    def enqueue(self, ack: _AsyncAck) -> bool:
        """Queue ``ack`` for the next batch: once resolved, its ``outcome``
        (see :meth:`pgqueue.worker._Acker.wait`) goes to its continuation.
        False when the job must be acked on its own
        (:data:`~pgqueue._common.PER_JOB`: the acker is stopped or the server
        has no ``queue_ack_batch``)."""
        if self._stopping or self.task is None or self.task.done() or not self._batcher.add(ack):
            return False
        self._wake.set()
        return True

    async def stop(self, timeout: float) -> None:
        """Take no more acks, deliver the queued and the in-flight ones, then
        end the task; after ``timeout`` seconds it is cancelled (its acks are
        then reported as not delivered: they return after their lease)."""
        self._stopping = True
        self._wake.set()
        if self.task is None or self.task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except asyncio.TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        batch: List[c.PendingAck] = []
        try:
            while True:
                if not self._batcher.pending:
                    if self._started_jobs:
                        # The last call started jobs whose first steps are
                        # scheduled: one step of the loop runs them, and the
                        # acks of those that returned at once are queued then.
                        self._started_jobs = False
                        await asyncio.sleep(0)
                        continue
                    self._settle_deferred()  # no call to overlap it with
                    if self._stopping:
                        return  # everything was delivered
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = self._batcher.take()
                try:
                    if not await self._ack_and_claim(batch):
                        await self._send(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the acker die: its jobs would wait in vain
                    self._worker._log.exception("acker: internal error; acking the queued jobs one by one")
                    self._settle_deferred()
                    self._batcher.abandon(batch, c.PER_JOB)
                batch = []
        finally:
            self._settle_deferred()
            # Cancelled (a stop that ran out of time): nobody is left to send these.
            self._batcher.abandon(batch, None)

    def _defer_settle(self, batch: List[c.PendingAck], completed: Any) -> None:
        """Settle ``batch`` (acked by a call that also claimed: its slots were
        handed over already) a little later: while the next call is in flight
        (:meth:`_overlap_settle`), or before the acker sleeps. Its jobs'
        finished events then run while the server works, instead of between
        a reply and the next call."""
        self._settle_deferred()
        self._deferred = (batch, completed)

    def _settle_deferred(self) -> None:
        """Settle the deferred batch now, if any (see :meth:`_defer_settle`)."""
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            self._batcher.settle(*deferred)

    def _overlap_settle(self) -> None:
        """Called just before a call's await: the deferred batch is settled
        in the loop's next step, which runs while the call is in flight."""
        if self._deferred is not None:
            self._loop.call_soon(self._settle_deferred)

    async def _ack_and_claim(self, batch: List[c.PendingAck]) -> bool:
        """Ack ``batch`` and claim in one statement (see
        :meth:`pgqueue.worker._Acker._ack_and_claim`). From the reply to the
        settles it is one step of the loop (no await), so the claimed jobs take
        the acked jobs' slots before anything else can look at them."""
        w = self._worker
        # Not in pooler mode, which acks and claims as it always did.
        if w.pooler or not self._batcher.supported or w._stopping.is_set():
            return False
        queue = w._take_dirty()
        if queue is None:
            return False
        ids, attempts, docs = self._batcher.array_params(batch)
        want = min(len(batch), self._batcher.max_batch)
        try:
            conn = await w._pool.acquire()
            try:
                cur, loads = c.claim_cursor(conn)
                self._overlap_settle()
                await cur.execute(c.ACK_CLAIM_SQL, (ids, attempts, docs, queue, w.name, want))
                rows = await cur.fetchall()
            finally:
                await w._pool.release(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            w._log.debug("acking %d job(s) and claiming from %r in one call failed (%s); acking alone",
                         len(batch), queue, exc)
            w._mark_dirty(queue)
            return False
        completed, claimed = c.split_ack_claim(rows)
        if claimed:
            w._mark_dirty(queue)  # it may hold more
        now = time.monotonic()
        jobs = [AsyncJob(row, w, now, loads) for row in claimed]
        started, unstarted = c.hand_over_slots(w._active, batch, jobs, w._stopping.is_set())
        if started:
            w._start_jobs(started)
            self._started_jobs = not _EAGER_START  # eager tasks ran their first steps already
        # The slots were handed over above; what the settle adds (the jobs'
        # outcomes, finished events) can wait for the next call's flight.
        self._defer_settle(batch, completed)
        if len(w._active) + len(w._overtime) < w.concurrency:
            w._wake.set()  # a slot is left free
        if unstarted:
            self._settle_deferred()
            for job in unstarted:  # claimed as the stop began: give them back untouched
                job._begin_release()
                await w._release(job)
        return True

    async def _send(self, batch: List[c.PendingAck]) -> None:
        """One batch until it is settled (see :meth:`pgqueue.worker._Acker._send`)."""
        w = self._worker
        backoff = c.Backoff(0.05, min(2.0, w._reconnect_max))
        while batch:
            try:
                self._overlap_settle()
                completed = await w._pool.call(c.ACK_BATCH_SQL, self._batcher.array_params(batch))
            except Exception as exc:
                batch = self._batcher.failed(batch, exc, w._closing.is_set())
                if batch:
                    delay = backoff.next()
                    w._log.warning(c.ACK_RETRY_MESSAGE, len(batch), exc, delay)
                    await w._sleep_or(w._closing, delay)  # a stop past the grace ends the wait
                continue
            self._batcher.settle(batch, completed)
            return


class AsyncJob(c.JobBase):
    """A claimed job, handed to an :class:`AsyncWorker` handler.

    The same data as :class:`~pgqueue.Job`; :meth:`progress` and
    :meth:`touch` are coroutines.
    """

    __slots__ = ()

    # The state changes happen on the worker's loop only: no lock needed.
    def _begin_finish(self) -> bool:
        if self._state != c.RUNNING:
            return False
        self._state = c.FINISHING
        return True

    def _end_finish(self) -> None:
        self._state = c.DONE

    def _begin_expire(self) -> bool:
        if self._state != c.RUNNING:
            return False
        self._state = c.FINISHING
        self._expired = True
        self._lost = True
        return True

    async def dependencies(self) -> List[Dependency]:
        """The jobs this one depends on (``queue_dependencies``), in id order,
        with their status and result: how a handler reads its inputs. Runs on
        one of the worker's pooled connections; empty for a job pushed
        without ``depends_on``.
        """
        rows = await self._owner._pool.call(_DEPENDENCIES_SQL, (self.id,), fetch="all")
        return [_dependency(r) for r in rows]

    async def progress(self, current: int, total: int, message: Optional[str] = None) -> bool:
        """Report progress with ``queue_progress`` for this claim's attempt.

        Returns whether it was recorded; ``False`` (logged, not raised) when
        the claim is no longer current or the database could not be reached.
        """
        if isinstance(current, bool) or isinstance(total, bool) or not isinstance(current, int) \
                or not isinstance(total, int):
            raise TypeError("current and total must be ints")
        if total < 1 or not 0 <= current <= total:
            raise ValueError(f"invalid progress {current} of {total}: need 0 <= current <= total, total >= 1")
        if not self._may_report():
            return False
        try:
            return bool(await self._owner._pool.call(c.PROGRESS_SQL, (self.id, current, total, message,
                                                                     self.attempt)))
        except Exception as exc:
            if not c.is_transient(exc):
                raise
            self._owner._log.warning("job %s: progress not recorded: %s", self.id, exc)
            return False

    async def touch(self, extend: Optional[dt.timedelta] = None) -> bool:
        """Extend the lease now (the worker already does it at half the lease)."""
        if not self._may_report():
            return False
        span = None if extend is None else as_timedelta(extend, "extend")
        try:
            ok = bool(await self._owner._pool.call(c.TOUCH_SQL, (self.id, span, self.attempt)))
        except Exception as exc:
            if not c.is_transient(exc):
                raise
            return False
        if ok:
            self._next_touch = time.monotonic() + self.touch_every
        else:
            self._lost = True
        return ok


class AsyncWorker(c.WorkerBase):
    """Runs ``async def`` handlers for jobs of one or more queues, on one event loop.

    The asyncio twin of :class:`~pgqueue.Worker`, with the same arguments and
    guarantees: claims in batches up to free capacity, at most
    ``concurrency`` handlers at once, acks with the return value (many jobs
    per ``queue_ack_batch`` call, which also claims the next jobs of a queue
    that may have work in the same commit), fails with
    the exception, extends leases at half the timeout, heartbeats, wakes on
    LISTEN with polling as a fallback (or, with ``pooler``, waits inside
    ``queue_pop(..., wait => pooler_wait)``), reconnects with backoff, and on stop
    waits ``grace`` seconds before cancelling the remaining handlers and
    giving their jobs back with ``queue_release``.

    ``max_runtime`` (seconds or a :class:`datetime.timedelta`; a
    :class:`~pgqueue.Handler`'s own wins; default None, no limit) bounds one
    run of a handler: past it the worker stops extending the job's lease,
    cancels the handler's task (the handler sees :class:`asyncio.CancelledError`
    at its current ``await``) and fails the attempt at once with
    ``max_runtime exceeded: the handler ran longer than <limit>``, an ordinary
    retryable failure (a ``"failed"`` event with a
    :class:`~pgqueue.MaxRuntimeExceeded`). What the handler returns or raises
    afterwards is dropped. Its slot frees when its task ends: at once for a
    handler that lets the cancel through, only when it returns for one that
    swallows it (or blocks the loop).

    Run it with ``await worker.run()`` (SIGTERM / SIGINT stop it), or
    ``async with AsyncWorker(...) as w:`` to run it in the background.
    Handlers must be coroutine functions; run blocking code in
    :func:`asyncio.to_thread` or use :class:`~pgqueue.Worker`. The pool
    for claims, acks and lease extensions defaults to
    ``min(concurrency, 4) + 1`` connections.
    """

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Union[AsyncHandler, c.Handler]],
        *,
        concurrency: int = 10,
        name: Optional[str] = None,
        grace: float = 30.0,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        pooler: bool = False,
        pooler_wait: float = 5.0,
        listeners: Sequence[Any] = (),
        max_connections: Optional[int] = None,
        reconnect_max: float = 10.0,
        tracing: bool = True,
        logger: Optional[logging.Logger] = None,
        connect_kwargs: Optional[Mapping[str, Any]] = None,
        max_runtime: Union[float, dt.timedelta, None] = None,
    ) -> None:
        """Configure the worker; nothing connects before :meth:`run`."""
        self._configure(dsn, handlers, True, concurrency=concurrency, name=name, grace=grace,
                        poll_interval=poll_interval, heartbeat_interval=heartbeat_interval, pooler=pooler,
                        pooler_wait=pooler_wait, listeners=listeners, reconnect_max=reconnect_max, tracing=tracing, logger=logger,
                        connect_kwargs=connect_kwargs, max_runtime=max_runtime)
        size = max_connections if max_connections is not None else min(concurrency, 4) + 1
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError("max_connections must be an int >= 1")
        self._pool_size = size
        self._active: Dict[int, AsyncJob] = {}
        self._tasks: Dict[int, "asyncio.Task[None]"] = {}
        # The tasks failing jobs for their max_runtime (see _expire), kept until they end.
        self._expiring: "set[asyncio.Task[None]]" = set()
        self._started = False
        self._grace_deadline: Optional[float] = None
        # Pooler mode: the claim loop's own connection (see Worker._claim_conn).
        self._claim_conn: Optional[psycopg.AsyncConnection] = None
        self._in_wait = False
        self._canceller: Optional["asyncio.Task[None]"] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._run_task: Optional["asyncio.Task[None]"] = None
        self._listening = False
        self._reachable = False
        # Created in run(), on the worker's loop.
        self._pool: _AsyncPool
        self._stopping: asyncio.Event
        self._wake: asyncio.Event
        self._closing: asyncio.Event
        self._done: asyncio.Event
        self._keeper_wake: asyncio.Event
        self._acker: _AsyncAcker

    # ------------------------------------------------------------------ API

    @property
    def running_jobs(self) -> int:
        """How many claimed jobs this worker holds right now, counting the
        handlers still running past their ``max_runtime`` (their slots are taken)."""
        return len(self._active) + len(self._overtime)

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (always False with ``pooler``)."""
        return self._listening

    async def run(self, install_signal_handlers: bool = True) -> None:
        """Run until stopped. With ``install_signal_handlers``, SIGTERM and
        SIGINT stop the worker gracefully (a second one gives jobs back at
        once); the handlers are removed on return."""
        if self._started:
            raise WorkerStopped("an AsyncWorker runs once; create a new one")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._pool = _AsyncPool(self._dsn, self._pool_size, self._connect_kwargs)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._done = asyncio.Event()
        self._keeper_wake = asyncio.Event()
        installed: List[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or no signals on this platform
        self._log.info("async worker %s starting: queues %s, concurrency %d%s", self.name, self.queues,
                       self.concurrency, ", pooler mode (waits in the server)" if self.pooler else "")
        self._acker = _AsyncAcker(self)
        self._acker.start()
        assert self._acker.task is not None
        # The acker is stopped by _shutdown (after delivering); listed here so that it never outlives run().
        helpers = [self._acker.task, asyncio.create_task(self._keep_leases())]
        if not self.pooler:
            helpers.append(asyncio.create_task(self._listen()))
        try:
            await self._main()
        finally:
            try:
                await self._shutdown()
            finally:
                for t in helpers:
                    t.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                for sig in installed:
                    self._loop.remove_signal_handler(sig)
                self._done.set()

    def stop(self, grace: Optional[float] = None) -> None:
        """Ask the worker to stop (claim nothing more, wait up to ``grace``
        seconds, then give the rest back). Returns at once; callable from any
        thread. A second call may shorten the grace."""
        g = self.grace if grace is None else c.check_positive("grace", grace, allow_zero=True)
        loop = self._loop
        if loop is None:
            raise RuntimeError("the worker is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop_in_loop(g)
        else:
            loop.call_soon_threadsafe(self._stop_in_loop, g)

    async def wait(self) -> None:
        """Wait until the worker has stopped."""
        if self._run_task is not None:
            await asyncio.shield(self._run_task)
        elif self._started:
            await self._done.wait()

    async def __aenter__(self) -> "AsyncWorker":
        """``async with AsyncWorker(...) as w:`` runs the worker in a task for the block."""
        self._run_task = asyncio.create_task(self.run(install_signal_handlers=False))
        while self._loop is None:
            await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Stop gracefully and wait for the worker to finish."""
        if self._run_task is not None and not self._run_task.done():
            self.stop()
        await self.wait()

    # ------------------------------------------------------------ internals

    def _on_signal(self, signum: int) -> None:
        if self._stopping.is_set():
            self._log.warning("signal %s again: giving running jobs back now", signum)
            self._stop_in_loop(0.0)
        else:
            self._log.info("signal %s: stopping (grace %.1fs)", signum, self.grace)
            self._stop_in_loop(self.grace)

    def _stop_in_loop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._grace_deadline is None or deadline < self._grace_deadline:
            self._grace_deadline = deadline
        self._stopping.set()
        self._wake.set()
        if self._in_wait and (self._canceller is None or self._canceller.done()):
            self._canceller = asyncio.ensure_future(self._cancel_server_wait())

    async def _cancel_server_wait(self) -> None:
        """End a server-side wait in flight (pooler mode). Repeated while the
        wait lasts, since a cancel that arrives before the statement is lost.
        The claim rolls back: nothing is claimed, nothing is lost. (Cancelling
        the task instead would make psycopg drop a result that may hold jobs.)"""
        while self._in_wait and self._claim_conn is not None:
            try:
                await self._claim_conn.cancel_safe(timeout=2.0)
            except Exception as exc:
                self._log.debug("cancelling the server-side wait: %s", exc)
            await asyncio.sleep(0.2)

    async def _sleep_or(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            pass

    async def _main(self) -> None:
        backoff = c.Backoff(0.1, self._reconnect_max)
        next_heartbeat = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + (self.heartbeat_interval if await self._heartbeat("running") else 1.0)
            self._wake.clear()
            try:
                claimed, free, waited = await self._claim(next_heartbeat)
                backoff.reset()
                self._reachable = True
            except Exception as exc:
                if self._stopping.is_set():
                    break  # e.g. a server-side wait cancelled by stop()
                self._reachable = False
                delay = backoff.next()
                if self.pooler and c.is_missing_function(exc):
                    self._log.error(c.NO_WAIT_MESSAGE, delay)
                elif c.is_transient(exc):
                    self._log.warning("claim failed (%s); retrying in %.1fs", exc, delay)
                else:
                    self._log.exception("claim failed; retrying in %.1fs", delay)
                await self._sleep_or(self._stopping, delay)
                continue
            if claimed and free > 0:
                continue
            if waited:
                continue  # the claim already slept in the server
            await self._wait_for_work(min(self.poll_interval, next_heartbeat - time.monotonic()))

    async def _wait_for_work(self, timeout: float) -> None:
        """Sleep until woken (a NOTIFY, a freed slot, a stop) or ``timeout``.

        With LISTEN, :meth:`_listen` sets the event. In ``pooler`` mode this
        is only reached with no free capacity (a freed slot wakes it): a
        worker with room waits inside its claim, in the server.
        """
        await self._sleep_or(self._wake, timeout)

    async def _heartbeat(self, state: str) -> bool:
        try:
            await self._pool.call(c.HEARTBEAT_SQL, (self.name, Jsonb(self._info(state))))
            return True
        except Exception as exc:
            self._log.warning("heartbeat failed: %s", exc)
            return False

    async def _claim(self, next_heartbeat: float) -> "tuple[int, int, bool]":
        """One pass over the queues (see :meth:`Worker._claim`)."""
        free = self.concurrency - len(self._active) - len(self._overtime)
        claimed = 0
        waited = False
        order = self._queue_order()
        for i, queue in enumerate(order):
            if free <= 0 or self._stopping.is_set():
                break
            self._take_dirty(queue)  # this claim is the queue's now
            if self.pooler:
                wait = None
                if i == len(order) - 1 and claimed == 0:
                    wait = self._server_wait(next_heartbeat - time.monotonic())
                found, loads = await self._pop_pooled(queue, free, wait)
                waited = wait is not None
            else:
                found, loads = await self._pool.claim(c.POP_SQL, (queue, self.name, free))
            now = time.monotonic()
            jobs = [AsyncJob(row, self, now, loads) for row in c.ClaimedRow.from_rows(found)]
            if jobs:
                self._mark_dirty(queue)  # it may hold more (the acker may claim it with an ack)
            if self._stopping.is_set():
                # Claimed as the stop began: give them back untouched.
                for job in jobs:
                    job._begin_release()
                    await self._release(job)
                continue
            if jobs:
                for job in jobs:
                    self._active[job.id] = job
                self._start_jobs(jobs)
            free -= len(jobs)
            claimed += len(jobs)
        return claimed, free, waited

    def _start_jobs(self, jobs: Sequence[AsyncJob]) -> None:
        """A task for each of ``jobs`` (just claimed, already active), in a
        context of its own (a copy of the current one, as for any task; the
        ack's continuation runs in it too); the lease keeper is woken only
        for a job whose lease is due before it wakes anyway.

        On Python 3.12 and later the tasks start eagerly (``eager_start``):
        a handler runs at once, up to its first suspension, and one that
        returns without suspending (queuing its ack) costs no loop step; the
        task is the current task meanwhile, as ``asyncio.timeout`` and task
        groups need. (Python 3.11 has no such start: there a task's first step
        is scheduled, which is the one step a job then costs.)"""
        if self._keeper_due(jobs):
            self._keeper_wake.set()
        new_task = self._new_task
        copy_context = contextvars.copy_context
        tasks = self._tasks
        for job in jobs:
            context = copy_context()
            task = new_task(self._run_job(job, context), context)
            if not task.done():  # an eager task may have run to its end already
                job._task = tasks[job.id] = task

    def _new_task(self, coro: Any, context: contextvars.Context) -> "asyncio.Task[Any]":
        """A task of the worker's loop running ``coro`` in ``context``, started
        eagerly where asyncio can (Python 3.12+: see :meth:`_start_jobs`)."""
        loop = self._loop
        if loop.get_task_factory() is not None:  # type: ignore[union-attr]
            return loop.create_task(coro, context=context)  # type: ignore[union-attr]
        # The Task itself: what create_task makes without a factory, minus its
        # wrapper (on 3.11 a Python function, a tenth of a no-op job's CPU).
        if _EAGER_START:
            return asyncio.Task(coro, loop=loop, context=context, eager_start=True)
        return asyncio.Task(coro, loop=loop, context=context)

    async def _pop_pooled(self, queue: str, n: int, wait: Optional[dt.timedelta]) -> "tuple[List[Any], Any]":
        """A claim on the loop's own connection (pooler mode), waiting in the
        server up to ``wait`` when given: (the rows, the jobs' decoders)."""
        conn = self._claim_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                await _aclose_quietly(conn)
            self._claim_conn = None
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **self._connect_kwargs)
            self._claim_conn = conn
        cur, loads = c.claim_cursor(conn)
        if wait is None:
            await cur.execute(c.POP_SQL, (queue, self.name, n))
            return await cur.fetchall(), loads
        if self._stopping.is_set():
            return [], loads
        self._in_wait = True
        try:
            await cur.execute(c.POP_WAIT_SQL, (queue, self.name, n, wait))
            return await cur.fetchall(), loads
        finally:
            self._in_wait = False

    async def _listen(self) -> None:
        """One LISTEN connection for every handled queue; reconnects with backoff."""
        backoff = c.Backoff(0.1, self._reconnect_max)
        while not self._stopping.is_set():
            conn = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **self._connect_kwargs)
                for queue in self.queues:
                    await conn.execute(c.listen_statement(queue))
                backoff.reset()
                self._listening = True
                self._wake.set()  # notifications may have been missed while away
                while not self._stopping.is_set():
                    async for _ in conn.notifies(timeout=1.0):
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening = False
                if self._stopping.is_set():
                    break
                delay = backoff.next()
                if c.is_transient(exc):
                    self._log.warning("listen connection lost (%s); reconnecting in %.1fs", exc, delay)
                else:
                    self._log.exception("listen connection failed; retrying in %.1fs", delay)
                await self._sleep_or(self._stopping, delay)
            finally:
                self._listening = False
                if conn is not None:
                    await _aclose_quietly(conn)

    async def _run_job(self, job: AsyncJob, context: contextvars.Context) -> None:
        """The task of one job (run in ``context``): its handler, then its outcome.

        A handler that returns queues its ack with the acker and the task
        ends there: the ack's continuation (:meth:`_acked`) reports the
        outcome and frees the slot once the ack's call settled it. A failure,
        or an ack that must go on its own, is delivered here, in the task."""
        hooks = self._hooks
        span = None
        later = False  # the ack's continuation finishes the job
        timer = None  # the max_runtime's (see _watch)
        try:
            if hooks.wants("started"):  # no event is made that nobody would see
                hooks.emit(_event(job, "started"))
            if hooks.tracing:
                span = hooks.open_span(job)  # current in this task's context
            start = time.monotonic()
            limit = self._limits.get(job.queue)
            if limit is not None:
                timer = self._watch(job, limit, start, span, context)
            try:
                result = await self._handlers[job.queue](job)
            except BaseException as exc:
                if timer is not None:
                    timer.cancel()
                if job._expired and not isinstance(exc, KeyboardInterrupt):
                    # Failed for its max_runtime (the expiry owns the span): what
                    # the handler raised (the expiry's cancel, most often) is
                    # dropped; the task ends normally and frees the slot.
                    self._overran(job, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        _uncancel()
                    return
                # A handler's SystemExit (argparse, sys.exit) or GeneratorExit
                # fails its job like any error: out of the task it would end
                # the event loop, and with it every job in flight. So does a
                # CancelledError the handler raised of its own (it awaited a
                # task someone else cancelled), while this task was not
                # cancelled: only a cancel of the job's task gives it back.
                if isinstance(exc, KeyboardInterrupt) or (
                        isinstance(exc, asyncio.CancelledError) and _task_cancelled()):
                    raise
                duration = time.monotonic() - start
                status = await self._fail(job, exc)
                span, handle = None, span
                try:
                    if handle is not None:
                        hooks.span_outcome(handle[1], status, exc)
                    if status != c.RELEASED and hooks.wants("failed"):  # the span still current
                        hooks.emit(_event(job, "failed", duration=duration, error=exc, status=status))
                finally:
                    hooks.close_span(handle)
                return
            if timer is not None:
                timer.cancel()
                if job._expired:  # it swallowed the expiry's cancel and returned: dropped
                    self._overran(job, None)
                    return
            rest = self._returned(job, result, time.monotonic() - start, span, context)
            span = None  # the outcome's path ends it from here on
            if rest is None:
                later = True
            else:
                await rest
        except asyncio.CancelledError:
            if job._state != c.RELEASED:
                raise
        except Exception:
            self._log.exception("job %s: internal error", job.id)
        finally:
            # Cancelled or given back while the handler ran; not one failed for
            # its max_runtime, whose span the expiry ends (_fail_expired).
            if span is not None and not job._expired:
                hooks.close_span(span)
            if job._task is not None and self._tasks.get(job.id) is job._task:
                del self._tasks[job.id]
            if not later:
                self._free(job)

    def _returned(self, job: AsyncJob, result: Any, duration: float, span: Any,
                  context: contextvars.Context) -> Optional[Awaitable[None]]:
        """The handler of ``job`` returned ``result``: queue its ack (None), or
        the coroutine that delivers its outcome on its own (a result that cannot
        be stored, or an ack the acker cannot take), for the caller to run."""
        if job._state != c.RUNNING:  # given back meanwhile: its result is not recorded
            self._finish(job, c.RELEASED, result, duration, span)
            return None
        job._state = c.FINISHING  # AsyncJob._begin_finish, inlined (on the loop: no lock)
        doc = None
        if result is not None:
            try:
                doc = c.result_doc(result)  # raises here, for this job alone, if not serialisable
            except Exception as exc:
                return self._deliver_alone(job, None, exc, result, duration, span)
        ack = _AsyncAck(job, doc, self, result, duration, span, context)
        if self._acker.enqueue(ack):
            return None
        return self._deliver_alone(job, doc, None, result, duration, span)

    def _acked(self, ack: _AsyncAck) -> None:
        """The continuation of a queued ack, now resolved (see :class:`_AsyncAck`):
        the job's outcome, its span's end, its finished event, its slot."""
        job = ack.job
        try:
            ok = ack.outcome
            if ok is c.PER_JOB:  # the acker gave it back: ack it alone, in a task of its own
                # Not started eagerly: this runs inside ack.context already,
                # which an eager start would have to enter again.
                job._task = self._tasks[job.id] = self._loop.create_task(  # type: ignore[union-attr]
                    self._run_rest(job, self._deliver_alone(job, ack.doc, None, ack.result, ack.duration,
                                                            ack.span)), context=ack.context)
                return
            try:
                status = self._ack_status(job, ok)
            finally:
                job._end_finish()
            self._finish(job, status, ack.result, ack.duration, ack.span)
        except Exception:
            self._log.exception("job %s: internal error", job.id)
            self._free(job)

    async def _run_rest(self, job: AsyncJob, rest: Awaitable[None]) -> None:
        """A task for the rest of a job whose ack the acker gave back: as the
        end of :meth:`_run_job`."""
        try:
            await rest
        except asyncio.CancelledError:
            if job._state != c.RELEASED:
                raise
        except Exception:
            self._log.exception("job %s: internal error", job.id)
        finally:
            if job._task is not None and self._tasks.get(job.id) is job._task:
                del self._tasks[job.id]
            self._free(job)

    async def _deliver_alone(self, job: AsyncJob, doc: Any, unstorable: Optional[Exception], result: Any,
                             duration: float, span: Any) -> None:
        """Deliver the outcome of ``job`` with a call of its own: its ack with
        ``doc``, or, when its result could not be stored (``unstorable``), the
        failure of the attempt; then finish it (:meth:`_finish`)."""
        try:
            try:
                if unstorable is not None:
                    raise unstorable
                ok = await self._deliver(job, c.ACK_SQL, (job.id, doc, job.attempt))
            except Exception as exc:
                status = await self._unstorable(job, exc)
            else:
                status = self._ack_status(job, ok)
        except BaseException:  # cancelled, or an error of the delivery: the span ends without an outcome
            self._hooks.close_span(span)
            raise
        finally:
            job._end_finish()
        self._finish(job, status, result, duration, span)

    def _finish(self, job: AsyncJob, status: Optional[str], result: Any, duration: float, span: Any) -> None:
        """The end of a job whose handler returned: its span, its finished
        event (none for a job given back) and its slot."""
        hooks = self._hooks
        if span is None:
            try:
                if status != c.RELEASED and hooks.wants("finished"):
                    hooks.emit(_event(job, "finished", duration=duration, result=result, status=status))
            finally:
                self._free(job)
            return
        try:
            hooks.span_outcome(span[1], status, None)
            if status != c.RELEASED and hooks.wants("finished"):  # the span still current
                hooks.emit(_event(job, "finished", duration=duration, result=result, status=status))
        finally:
            hooks.close_span(span)
            self._free(job)

    def _free(self, job: AsyncJob) -> None:
        """``job`` ended: its slot is free, unless its ack's call handed the slot
        over already (``hand_over_slots``). Called once or more per job (no-op after the first).
        A job failed for its max_runtime frees its slot here, once its task ends."""
        if self._active.get(job.id) is job:
            del self._active[job.id]
            self._wake.set()  # capacity is free again
        elif job._expired and job in self._overtime:
            self._overtime.discard(job)
            self._wake.set()

    def _watch(self, job: AsyncJob, limit: float, start: float, span: Any,
               context: contextvars.Context) -> asyncio.TimerHandle:
        """The handler of ``job`` starts now (``start``, in the current task)
        with a max_runtime of ``limit`` seconds: the timer that expires it
        (:meth:`_expire`), for the task to cancel once the handler ends."""
        job._expiry = (limit, start, span)
        job._deadline = start + limit
        return self._loop.call_later(limit, self._expire, job,  # type: ignore[union-attr]
                                     asyncio.current_task(), context)

    def _expire(self, job: AsyncJob, task: Optional["asyncio.Task[Any]"], context: contextvars.Context) -> None:
        """The handler of ``job`` ran past its max_runtime: its lease is no
        longer extended, its task is cancelled, and the attempt is failed at
        once by a task of its own (:meth:`_fail_expired`, in the job's
        ``context``, where its span was opened). The slot moves to the overtime
        set until the job's task ends: the cancel usually ends it within a
        step of the loop, a handler that swallows it keeps the slot meanwhile.
        The stop does not wait for that task (its job is failed already)."""
        if not job._begin_expire():
            return  # it returned, failed or was given back meanwhile
        if self._active.get(job.id) is job:
            del self._active[job.id]
        self._overtime.add(job)
        if task is not None:
            if self._tasks.get(job.id) is task:
                del self._tasks[job.id]
            task.cancel()
        limit, start, _ = job._expiry
        self._log.warning("job %s: the handler ran past its max_runtime of %s; cancelling it and failing the"
                          " attempt", job.id, format_duration(limit))
        fail = self._loop.create_task(self._fail_expired(job, time.monotonic() - start),  # type: ignore[union-attr]
                                      context=context)
        self._expiring.add(fail)
        fail.add_done_callback(self._expiring.discard)

    async def _fail_expired(self, job: AsyncJob, duration: float) -> None:
        """Fail the attempt of ``job`` for its max_runtime (after :meth:`_expire`)
        and report it like any failure (its span ends here)."""
        limit, _, span = job._expiry
        error = MaxRuntimeExceeded(limit)
        status: Optional[str] = None
        hooks = self._hooks
        try:
            try:
                status = await self._record_failure(job, error)
            except Exception as exc:
                self._log.error("job %s: the max_runtime failure was not recorded (%s); it returns after its lease",
                                job.id, exc)
            if span is not None:
                hooks.span_outcome(span[1], status, error)
            if hooks.wants("failed"):  # the span still current (this task runs in the job's context)
                hooks.emit(_event(job, "failed", duration=duration, error=error, status=status))
        except Exception:
            self._log.exception("job %s: internal error", job.id)
        finally:
            hooks.close_span(span)

    async def _unstorable(self, job: AsyncJob, exc: Exception) -> Optional[str]:
        """The result of ``job`` could not be stored (``exc``): fail the attempt."""
        self._log.error("job %s: result could not be stored: %s", job.id, exc)
        bad = TypeError(f"result could not be stored: {type(exc).__name__}: {exc}")
        return c.as_status(await self._deliver(job, c.FAIL_SQL, (job.id, c.describe_error(bad, False),
                                                                 job.attempt, None, False)))

    def _ack_status(self, job: AsyncJob, ok: Any) -> Optional[str]:
        """The status an ack's outcome ``ok`` reports (a refusal is logged)."""
        if ok is None:
            return None
        if not ok:
            self._log.warning("job %s: ack refused, the claim (attempt %s) is no longer current",
                              job.id, job.attempt)
        return "completed" if ok else None

    async def _fail(self, job: AsyncJob, exc: BaseException) -> Optional[str]:
        """Fail the attempt with ``exc`` (see :meth:`pgqueue.worker.Worker._fail`)."""
        if not job._begin_finish():
            return c.RELEASED
        return await self._record_failure(job, exc)

    async def _record_failure(self, job: AsyncJob, exc: BaseException) -> Optional[str]:
        """Deliver the failure of ``job`` (FINISHING) with ``exc``'s text, retry
        delay and permanence: its new status (None if not delivered)."""
        try:
            tries = c.fail_attempts(job.id, c.describe_error(exc), job.attempt, retry_in_of(exc), is_permanent(exc))
            for n, params in enumerate(tries):
                try:
                    return c.as_status(await self._deliver(job, c.FAIL_SQL, params))
                except Exception as refused:
                    if n + 1 == len(tries):
                        raise
                    self._log.warning("job %s: queue_fail refused (%s); trying again with less", job.id, refused)
            return None
        finally:
            job._end_finish()

    async def _deliver(self, job: AsyncJob, query: str, params: Sequence[Any]) -> Any:
        backoff = c.Backoff(0.05, min(2.0, self._reconnect_max))
        give_up = time.monotonic() + max(30.0, job.lease.total_seconds())
        while True:
            try:
                return await self._pool.call(query, params)
            except Exception as exc:
                if not c.is_transient(exc):
                    raise
                if self._closing.is_set() or time.monotonic() > give_up:
                    self._log.error("job %s: outcome not delivered (%s); the job returns after its lease",
                                    job.id, exc)
                    return None
                delay = backoff.next()
                self._log.warning("job %s: outcome not delivered yet (%s); retrying in %.2fs", job.id, exc, delay)
                await asyncio.sleep(delay)

    async def _keep_leases(self) -> None:
        while not self._closing.is_set():
            now = time.monotonic()
            for job in list(self._active.values()):
                if job._state not in (c.RUNNING, c.FINISHING) or job._lost or job._next_touch > now:
                    continue
                try:
                    ok = await self._pool.call(c.TOUCH_SQL, (job.id, None, job.attempt))
                except Exception as exc:
                    self._log.warning("job %s: lease not extended yet (%s)", job.id, exc)
                    job._next_touch = time.monotonic() + min(1.0, job.touch_every / 2)
                    continue
                if ok:
                    job._next_touch = time.monotonic() + job.touch_every
                elif job._state == c.RUNNING:
                    job._lost = True
                    self._log.warning("job %s: lease lost (attempt %s is no longer current)", job.id, job.attempt)
            pending = [j._next_touch for j in self._active.values() if not j._lost]
            now = time.monotonic()
            sleep = max(0.01, min(1.0, min(pending, default=now + 1.0) - now))
            self._keeper_until = now + sleep
            self._keeper_wake.clear()
            await self._sleep_or(self._keeper_wake, sleep)

    async def _shutdown(self) -> None:
        if not self._stopping.is_set():
            self._stop_in_loop(self.grace)
        assert self._grace_deadline is not None
        if self._canceller is not None:
            await asyncio.gather(self._canceller, return_exceptions=True)
        if self._claim_conn is not None:
            await _aclose_quietly(self._claim_conn)
            self._claim_conn = None
        # The running handlers, and the jobs whose acks are queued (no task:
        # their continuation frees them, which sets _wake).
        while (self._tasks or self._active) and time.monotonic() < self._grace_deadline:
            timeout = min(0.1, max(0.0, self._grace_deadline - time.monotonic()))
            if self._tasks:
                await asyncio.wait(list(self._tasks.values()), timeout=timeout)
            else:
                self._wake.clear()
                await self._sleep_or(self._wake, timeout)
        left = [(self._active[i], t) for i, t in list(self._tasks.items()) if i in self._active]
        if left:
            self._log.warning("grace over: giving back %d running job(s)", len(left))
        for job, task in left:
            if job._begin_release():
                task.cancel()
                await self._release(job)
        end = time.monotonic() + 5.0
        while (self._tasks or self._expiring) and time.monotonic() < end:  # and max_runtime failures in flight
            await asyncio.wait([*self._tasks.values(), *self._expiring], timeout=0.1)
        self._closing.set()
        self._keeper_wake.set()
        # Queued and in-flight acks are delivered before the pool closes (one
        # try each now that the worker is closing), and before the jobs still
        # waiting for them are cancelled.
        await self._acker.stop(timeout=5.0)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._reachable:  # a last word, unless the database is away
            await self._heartbeat("stopped")
        await self._pool.close()
        self._log.info("async worker %s stopped", self.name)

    async def _release(self, job: AsyncJob) -> None:
        """Give a job back without counting its attempt (see :meth:`Worker._release`)."""
        status: Optional[str] = None
        try:
            status = "released" if await self._pool.call(c.RELEASE_SQL, (job.id, job.attempt)) else None
        except psycopg.errors.UndefinedFunction:
            self._log.error(c.NO_RELEASE_MESSAGE, job.id)
        except Exception as exc:
            self._log.error("job %s: could not be given back (%s); it returns after its lease", job.id, exc)
        self._hooks.emit(JobEvent(job, "released", duration=time.monotonic() - job._started, status=status))
