"""The threaded worker: :class:`Worker` and the :class:`Job` its handlers get."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import math
import signal
import threading
import time
from _thread import allocate_lock
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import psycopg
from psycopg.types.json import Jsonb

from . import _common as c
from .errors import MaxRuntimeExceeded, WorkerStopped, as_timedelta, format_duration, is_permanent, retry_in_of
from .hooks import JobEvent, _event
from .workflows import Dependency, _DEPENDENCIES_SQL, _dependency

__all__ = ["Worker", "Job"]
# The acker's gathering (see _Acker._gather): while the worker's handlers are
# short (their mean run below _GATHER_TURN), it waits up to _GATHER_TURNS turns
# of _GATHER_TURN seconds for the acks of the jobs still running, as long as
# each turn brings more.
_GATHER_TURN = 0.0005
_GATHER_TURNS = 8
# How many settled jobs a slot must have to finish before it hands the GIL
# to the acker it just woke (see Worker._slot).
_OVERLAP_FINISHES = 24
# Which ack wakes the acker (_Acker._wake_on).
_WAKE_NONE, _WAKE_ANY, _WAKE_ALL = 0, 1, 2

HandlerFunction = Callable[["Job"], Any]


class _Pool:
    """A small, lazily filled pool of autocommit connections shared by the
    worker's threads. A connection that breaks is dropped, never reused."""

    def __init__(self, dsn: str, size: int, connect_kwargs: Mapping[str, Any]) -> None:
        self._dsn = dsn
        self._size = size
        self._kwargs = dict(connect_kwargs)
        self._idle: List[psycopg.Connection] = []
        self._open = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting in acquire() (under _lock): only then a release notifies
        self._closed = False

    def acquire(self) -> psycopg.Connection:
        """A connection of the pool (an idle one, else a new one while fewer
        than the size are open, else the next one given back); give it back
        with :meth:`release`."""
        with self._lock:
            while not self._idle and self._open >= self._size:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            if self._closed:
                raise psycopg.InterfaceError("the worker's connection pool is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        except BaseException:
            with self._lock:
                self._open -= 1
                if self._waiting:
                    self._cond.notify()
            raise

    def release(self, conn: psycopg.Connection) -> None:
        """Give back a connection of :meth:`acquire` (closed if it broke)."""
        with self._lock:
            if conn.closed or conn.broken or self._closed:
                self._open -= 1
                _close_quietly(conn)
            else:
                self._idle.append(conn)
            if self._waiting:
                self._cond.notify()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        conn = self.acquire()
        try:
            yield conn
        finally:
            self.release(conn)

    def _retried(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        """``work(conn)`` on a pooled connection; retried once on a fresh
        connection after a transient error (a pooled connection may have died
        while idle)."""
        for tries in (1, 2):
            try:
                conn = self.acquire()
                try:
                    return work(conn)
                finally:
                    self.release(conn)
            except Exception as exc:
                if tries == 2 or not c.is_transient(exc) or self._closed:
                    raise
        raise AssertionError("unreachable")

    def call(self, query: Any, params: Sequence[Any] = (), fetch: str = "one") -> Any:
        """Run one statement (:meth:`_retried`): its first column of its first
        row, or with ``fetch="all"`` every row."""
        def work(conn: psycopg.Connection) -> Any:
            cur = conn.execute(query, params)
            if fetch == "all":
                return cur.fetchall()
            row = cur.fetchone()
            return None if row is None else row[0]
        return self._retried(work)

    def claim(self, query: Any, params: Sequence[Any]) -> "tuple[List[Any], Any]":
        """A claim (:meth:`call` with ``fetch="all"``) through
        :func:`~pgqueue._common.claim_cursor`: (its rows, the jobs' decoders)."""
        def work(conn: psycopg.Connection) -> "tuple[List[Any], Any]":
            cur, loads = c.claim_cursor(conn)
            return cur.execute(query, params).fetchall(), loads
        return self._retried(work)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.close()
    except Exception:
        pass


class Job(c.JobBase):
    """A claimed job, handed to a :class:`Worker` handler.

    Read ``id``, ``queue``, ``payload``, ``attempt``, ``max_attempts``,
    ``priority``, ``serial_group``, ``created_at``, ``lease``; report with
    :meth:`progress`. The worker extends the lease by itself while the handler
    runs, and acks or fails the job from the handler's outcome.
    """

    __slots__ = ()

    def progress(self, current: int, total: int, message: Optional[str] = None) -> bool:
        """Report progress with ``queue_progress`` for this claim's attempt.

        ``0 <= current <= total``, ``total >= 1``. Returns whether it was
        recorded: ``False`` when the claim is no longer current or the
        database could not be reached (that is logged, never raised, so a
        progress report cannot fail a job). Invalid numbers raise
        :class:`ValueError`.
        """
        if isinstance(current, bool) or isinstance(total, bool) or not isinstance(current, int) \
                or not isinstance(total, int):
            raise TypeError("current and total must be ints")
        if total < 1 or not 0 <= current <= total:
            raise ValueError(f"invalid progress {current} of {total}: need 0 <= current <= total, total >= 1")
        if not self._may_report():
            return False
        try:
            return bool(self._owner._pool.call(c.PROGRESS_SQL, (self.id, current, total, message, self.attempt)))
        except Exception as exc:
            if not c.is_transient(exc):
                raise
            self._owner._log.warning("job %s: progress not recorded: %s", self.id, exc)
            return False

    def dependencies(self) -> List[Dependency]:
        """The jobs this one depends on (``queue_dependencies``), in id order,
        with their status and result: how a handler reads its inputs. Runs on
        one of the worker's pooled connections, outside the handler's own
        work; empty for a job pushed without ``depends_on``.
        """
        return [_dependency(r) for r in self._owner._pool.call(_DEPENDENCIES_SQL, (self.id,), fetch="all")]

    def touch(self, extend: Optional[dt.timedelta] = None) -> bool:
        """Extend the lease now to ``now() + extend`` (default: the job's timeout).

        Rarely needed: the worker already does it at half the lease. Returns
        ``False`` when the claim is no longer current or on a transient error.
        """
        if not self._may_report():
            return False
        span = None if extend is None else as_timedelta(extend, "extend")
        try:
            ok = bool(self._owner._pool.call(c.TOUCH_SQL, (self.id, span, self.attempt)))
        except Exception as exc:
            if not c.is_transient(exc):
                raise
            return False
        if ok:
            self._next_touch = time.monotonic() + self.touch_every
        else:
            self._lost = True
        return ok


class _ThreadAck(c.PendingAck):
    """A :class:`~pgqueue._common.PendingAck` whose waiter is a plain lock,
    taken when the ack is made and released when it is resolved, with what
    the slot needs to finish the job afterwards (the handler's ``result``,
    its run's ``duration``, its ``span``). No :class:`threading.Event` (a
    condition, a lock per wait) is made per job.

    The slot that queued it goes on with the next claimed job and blocks on
    the lock (:meth:`_Acker.wait`) only when it has nothing else to do, saying
    so first (``blocked``). The acks of a call that went through wake only the
    slots blocked on one of them, in a chain (:func:`_settle_chained`):
    ``next`` is the blocked ack whose slot this one's slot wakes first thing."""

    __slots__ = ("next", "blocked", "woke", "result", "duration", "span")

    def __init__(self, job: "Job", doc: Any, result: Any = None, duration: float = 0.0, span: Any = None) -> None:
        lock = allocate_lock()
        lock.acquire()
        # PendingAck.__init__, inlined (one made per job).
        self.job = job
        self.doc = doc
        self.size = c.doc_size(doc)
        self.first_try = None
        self.waiter = lock
        self.outcome = None
        self.done = False
        self.next: Optional["_ThreadAck"] = None
        self.blocked = False
        self.woke = False  # queuing it woke the acker (see Worker._slot)
        self.result = result
        self.duration = duration
        self.span = span

    def _wake(self) -> None:
        """Release the lock the slot blocks (or will block) on."""
        self.waiter.release()


def _settle_chained(batch: Sequence[_ThreadAck], completed: Optional[Sequence[int]]) -> int:
    """:meth:`~pgqueue._common.AckBatcher.settle` for the threaded acker;
    returns how many slots it wakes.

    The outcomes are set at once. An ack whose slot does not block on it
    (the slot is running another job) has its lock released right away: no
    thread waits, so no thread wakes, and the slot finds it settled when it
    looks. Of the slots that block on one of the acks only the first is woken
    here; each woken slot wakes the next first thing (see :meth:`Worker._acked`).
    Woken all at once, they would each wake only to wait for the GIL the
    others hold, twice the sleeps and wake-ups of a chain (about half the CPU
    per wake-up at concurrency 50). Each ack is put in the chain or released
    on one reading of ``blocked``; a slot that blocks after that reading finds
    its lock released. The chain's links are set before any ack is marked
    done, so a slot that sees its ack done sees its ``next`` too."""
    done_ids = set(completed or ())
    unsettled = [ack for ack in batch if not ack.done]
    chain: List[_ThreadAck] = []
    free: List[_ThreadAck] = []
    for ack in unsettled:
        ack.outcome = ack.job.id in done_ids
        (chain if ack.blocked else free).append(ack)
    for i in range(len(chain) - 1):
        chain[i].next = chain[i + 1]
    for ack in unsettled:
        ack.done = True
    for ack in free:
        ack.waiter.release()
    if chain:
        chain[0].waiter.release()
    return len(chain)


def _settled(waiting: "collections.deque[_ThreadAck]") -> int:
    """How many of a slot's oldest acks (``waiting``) are settled."""
    n = 0
    for ack in waiting:
        if not ack.done:
            break
        n += 1
    return n


class _Acker:
    """The threaded worker's acker: one thread that sends the acks of finished
    jobs, everything queued as one ``queue_ack_batch`` call (one statement, one
    commit), one call at a time; acks queued meanwhile go into the next call.

    A slot hands its ack to :meth:`enqueue` and, once it has no other job to
    run, blocks until the outcome is known (:meth:`wait`), so the finished
    event and the freed capacity still follow the commit. What
    a call's outcome or error means for each ack is
    :class:`~pgqueue._common.AckBatcher`'s, shared with the asyncio worker;
    this class adds the thread, the lock and the retry sleep.

    Acks ride with claims: while the worker runs and a queue may have work,
    a batch goes with a claim of that queue in the same statement
    (:meth:`_ack_and_claim`); the claimed jobs take over the acked jobs'
    slots in that commit.

    Acks are gathered (:meth:`_gather`) while handlers are short: the slots of
    a claim finish one after another (each needs the GIL), and a call sent at
    the first ack would carry a few of them and claim as few, splitting the
    worker into batches of half its concurrency and twice the commits. The
    thread then sleeps until the last of them, not waking at the first.
    """

    def __init__(self, worker: "Worker") -> None:
        """An acker for ``worker`` (its pool, logger, reconnect cap and closing flag)."""
        self._worker = worker
        self._batcher = c.AckBatcher(worker._log)
        # A plain lock under the condition: `with self._mutex` is the lock's own
        # (C) context manager, where `with self._cond` calls two Python methods
        # (enqueue takes it once per job). Never taken twice by one thread.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._stopping = False
        # Under _cond: whether the thread runs (and takes acks); which ack wakes
        # it (_WAKE_*: it waits for any ack, or it gathers and only the ack
        # that leaves no running job without its ack queued wakes it, or it is
        # busy and finds the acks when it looks next). The handlers' recent
        # mean run is the worker's (Worker._mean_run).
        self._alive = False
        self._wake_on = _WAKE_NONE
        self._thread = threading.Thread(target=self._run, name=f"pgqueue-acker-{worker.name}", daemon=True)

    def start(self) -> None:
        """Start the acker's thread."""
        self._alive = True
        self._thread.start()

    def enqueue(self, ack: _ThreadAck) -> bool:
        """Queue ``ack`` for the next batch, without waiting (see :meth:`wait`):
        False when the job must be acked on its own
        (:data:`~pgqueue._common.PER_JOB`: the server has no
        ``queue_ack_batch``, or the acker is stopped)."""
        with self._mutex:
            if self._stopping or not self._alive or not self._batcher.add(ack):
                return False
            wake_on = self._wake_on
            if wake_on == _WAKE_ANY or (wake_on == _WAKE_ALL
                                        and len(self._batcher.pending) >= len(self._worker._active)):
                self._wake_on = _WAKE_NONE
                self._cond.notify()
                ack.woke = True
        return True

    def watch(self) -> None:
        """Claimed jobs were queued for fewer slots than jobs outside the
        acker's own thread (by the claim loop): an acker idle without a
        timeout looks again, so that it watches them (see :meth:`_gather`)."""
        with self._cond:
            if self._wake_on == _WAKE_ANY:
                self._wake_on = _WAKE_NONE
                self._cond.notify()

    def wait(self, ack: _ThreadAck) -> None:
        """Block until ``ack`` (queued by this thread) is settled: its
        ``outcome`` is then True (completed), False (refused), None (not
        delivered) or :data:`~pgqueue._common.PER_JOB` (ack it on your own:
        the batch was refused as a whole, or the acker stopped)."""
        ack.blocked = True
        # The thread resolves every ack it took before it ends; the timeout only
        # guards against a thread that died some other way (it catches errors).
        while not ack.waiter.acquire(timeout=1.0):
            if not self._thread.is_alive():
                with self._cond:
                    self._batcher.abandon([ack], c.PER_JOB)

    def stop(self, timeout: float) -> None:
        """Take no more acks, deliver the queued and the in-flight ones, then
        end the thread; waits up to ``timeout`` seconds for that."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._gather()
                    if not self._batcher.pending:
                        self._alive = False  # in the same hold of the lock: no ack can come in between
                        return  # stopping, and everything was delivered
                    batch = self._batcher.take()
                try:
                    if not self._ack_and_claim(batch):
                        self._send(batch)
                except Exception:  # never let the acker die: its slots would wait in vain
                    self._worker._log.exception("acker: internal error; acking the queued jobs one by one")
                    with self._cond:
                        self._batcher.abandon(batch, c.PER_JOB)
        finally:
            with self._cond:
                self._alive = False

    def _gather(self) -> None:
        """Wait (under ``_cond``) until there is a batch to send, or a stop.

        With long handlers (their recent mean run at least :data:`_GATHER_TURN`)
        that is the first ack: a call goes as soon as one is queued. While
        they are short, it waits for the acks of the jobs still running, a
        turn of :data:`_GATHER_TURN` at a time, as long as each turn brings
        more (at most :data:`_GATHER_TURNS`); the ack that leaves no running
        job without its ack queued wakes it at once. A first turn that
        brings no ack at all falls back to waiting for any ack.

        The worker's running jobs (its active set, read without its lock:
        only a length) hold one ack each, queued or to come; no call is in
        flight meanwhile, so they are the acks this call can still carry.

        It also watches the claimed jobs no slot has taken yet: while there
        are some, it sleeps at most a turn, and wakes more slots when the
        oldest of them waited a whole turn (see :meth:`Worker._spread`)."""
        w = self._worker
        pending = self._batcher.pending
        active = w._active
        dispatch = w._dispatch
        turns = 0
        while not self._stopping:
            queued = len(pending)
            short = w._mean_run < _GATHER_TURN
            if queued and (not short or queued >= len(active) or queued >= self._batcher.max_batch
                           or turns >= _GATHER_TURNS):
                return
            head = dispatch[0] if dispatch else None
            if not queued and (not short or not active or turns):
                self._wake_on = _WAKE_ANY  # idle, or long handlers: the first ack wakes it
                self._cond.wait(None if head is None else _GATHER_TURN)
                self._wake_on = _WAKE_NONE
                w._spread(head)
                continue
            self._wake_on = _WAKE_ALL
            self._cond.wait(_GATHER_TURN)
            self._wake_on = _WAKE_NONE
            w._spread(head)
            turns += 1
            if queued and len(pending) == queued:
                return  # a turn without acks: the rest are long

    def _ack_and_claim(self, batch: List[c.PendingAck]) -> bool:
        """Ack ``batch`` and claim up to as many jobs (at most the batch size
        of the acker) of a queue that may have work, in one statement
        (:data:`~pgqueue._common.ACK_CLAIM_SQL`): one commit per job in steady
        state instead of two. Only while the worker runs, outside pooler mode,
        with ``queue_ack_batch`` on the server and a marked queue (taken off
        the marks under the worker's lock, as the claim loop takes it).

        In one step under the worker's lock the acked jobs leave the active
        set and the claimed ones take their slots (never more than the batch
        freed), so the worker never holds more than ``concurrency`` jobs;
        then the acks are settled from the ids that came back (their
        finished events follow, in their slots). Jobs claimed as the stop
        began are given back. Returns False, having settled nothing, when it
        did not run or failed: the queue is marked again and the batch goes
        the usual way (:meth:`_send`); the combined call is never retried.
        """
        w = self._worker
        # Not in pooler mode, which acks and claims as it always did.
        if w.pooler or not self._batcher.supported or w._stopping.is_set():
            return False
        with w._lock:
            queue = w._take_dirty()
        if queue is None:
            return False
        ids, attempts, docs = self._batcher.array_params(batch)
        want = min(len(batch), self._batcher.max_batch)
        try:
            conn = w._pool.acquire()
            try:
                cur, loads = c.claim_cursor(conn)
                rows = cur.execute(c.ACK_CLAIM_SQL, (ids, attempts, docs, queue, w.name, want)).fetchall()
            finally:
                w._pool.release(conn)
        except Exception as exc:
            w._log.debug("acking %d job(s) and claiming from %r in one call failed (%s); acking alone",
                         len(batch), queue, exc)
            with w._lock:
                w._mark_dirty(queue)
            return False
        completed, claimed = c.split_ack_claim(rows)
        now = time.monotonic()
        jobs = [Job(r, w, now, loads) for r in claimed]
        with w._lock:
            if jobs:
                w._mark_dirty(queue)  # it may hold more
            stopping = w._stopping.is_set()
            started, unstarted = c.hand_over_slots(w._active, batch, jobs, stopping)
            free = len(w._active) + len(w._overtime) < w.concurrency
            if stopping:
                w._idle_cond.notify_all()
            wake_keeper = w._keeper_due(started)
        if started:
            # Queued before the settle: the slots it wakes take them first
            # (see Worker._dispatch_jobs); the others are woken after it.
            w._dispatch.extend(started)
            if wake_keeper:
                w._keeper_wake.set()
        woken = _settle_chained(batch, completed)
        if started:
            w._dispatch_jobs(len(started), woken)
        if free:
            w._waker.wake()  # a slot is left free
        for job in unstarted:  # claimed as the stop began: give them back untouched
            job._begin_release()
            w._release(job)
        return True

    def _send(self, batch: List[c.PendingAck]) -> None:
        """One batch until it is settled: transient errors are retried with the
        backoff of a per-job delivery (a repeat is harmless: every ack carries
        its attempt), every other outcome is settled by the batcher."""
        w = self._worker
        backoff = c.Backoff(0.05, min(2.0, w._reconnect_max))
        while batch:
            try:
                completed = w._pool.call(c.ACK_BATCH_SQL, self._batcher.array_params(batch))
            except Exception as exc:
                batch = self._batcher.failed(batch, exc, w._closing.is_set())
                if batch:
                    delay = backoff.next()
                    w._log.warning(c.ACK_RETRY_MESSAGE, len(batch), exc, delay)
                    w._closing.wait(delay)  # a stop past the grace ends the wait: then they give up
                continue
            _settle_chained(batch, completed)
            w._free_acked(batch)
            return


class _Waker:
    """How an idle worker learns that it should claim again.

    :meth:`wait` returns when the worker should try to claim again, at the
    latest after ``timeout`` seconds (the polling fallback): a slot freed, a
    stop, or (:class:`_ListenWaker`) a notification on the LISTEN
    connection. In ``pooler`` mode the plain waker only covers a worker with
    no free capacity; otherwise the claim itself waits, in the server.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def start(self) -> None:
        """Begin watching (nothing to do for plain polling)."""

    def wake(self) -> None:
        """Make the next (or current) :meth:`wait` return at once."""
        self.event.set()

    def clear(self) -> None:
        """Forget earlier wake-ups; called just before each claim."""
        self.event.clear()

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds have passed."""
        self.event.wait(timeout)

    def stop(self) -> None:
        """Stop watching."""
        self.event.set()


class _ListenWaker(_Waker):
    """LISTEN on every handled queue's channel, on one connection per worker,
    in a thread of its own. Reconnects with backoff; after every (re)connect
    it wakes the worker once, since notifications may have been missed."""

    def __init__(self, worker: "Worker") -> None:
        super().__init__()
        self._worker = worker
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pgqueue-listen-{worker.name}", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        super().stop()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        w = self._worker
        backoff = c.Backoff(0.1, w._reconnect_max)
        while not self._stopped.is_set():
            conn = None
            try:
                conn = psycopg.connect(w._dsn, autocommit=True, **w._connect_kwargs)
                for queue in w.queues:
                    conn.execute(c.listen_statement(queue))
                backoff.reset()
                self.connected.set()
                self.wake()
                while not self._stopped.is_set():
                    for _ in conn.notifies(timeout=1.0):
                        self.wake()
            except Exception as exc:
                self.connected.clear()
                if self._stopped.is_set():
                    break
                delay = backoff.next()
                if c.is_transient(exc):
                    w._log.warning("listen connection lost (%s); reconnecting in %.1fs", exc, delay)
                else:
                    w._log.exception("listen connection failed; retrying in %.1fs", delay)
                self._stopped.wait(delay)
            finally:
                if conn is not None:
                    _close_quietly(conn)


class Worker(c.WorkerBase):
    """Runs handlers for jobs of one or more queues, in threads.

    ``handlers`` maps queue names to functions ``fn(job: Job) -> result``.
    The worker claims jobs with ``queue_pop`` in batches up to its free
    capacity, runs at most ``concurrency`` handlers at once, acks each job with
    the handler's return value (stored as JSON; the acks of many jobs go in one
    ``queue_ack_batch`` call, see :class:`_Acker`; while a queue may have
    more work, that call also claims its next jobs in the same commit, which
    take over the acked jobs' slots) or fails it with the exception
    it raised (:class:`~pgqueue.PermanentError` skips retries,
    :class:`~pgqueue.RetryIn` or a ``retry_in`` attribute sets the delay).

    It extends each running job's lease at half its timeout, heartbeats with
    ``queue_heartbeat``, wakes on ``LISTEN "queue_<name>"`` (one connection)
    and polls every ``poll_interval`` seconds as a fallback, and reconnects
    with exponential backoff after a lost connection or a server restart. A
    result that could not be delivered is retried; if it never arrives, the
    job is claimed again after its lease (the stale ack is refused).

    Stop it with :meth:`stop`, SIGTERM or SIGINT (see :meth:`run`): it claims
    nothing more, lets running handlers finish within ``grace`` seconds, then
    gives the rest back with ``queue_release`` without using up an attempt.

    Args:
        dsn: libpq connection string or URI.
        handlers: queue name -> handler (a function, or a
            :class:`~pgqueue.Handler` with settings of its own).
        concurrency: most handlers running at once (threads).
        max_runtime: the longest one run of a handler may take (seconds or a
            :class:`datetime.timedelta`; a :class:`~pgqueue.Handler`'s own
            wins). Past it the worker stops extending the job's lease, sets
            :attr:`Job.lease_lost` (a thread cannot be interrupted: a handler
            that checks it can stop), and fails the attempt at once with
            ``max_runtime exceeded: the handler ran longer than <limit>``, an
            ordinary retryable failure (reported as a ``"failed"`` event with
            a :class:`~pgqueue.MaxRuntimeExceeded`). What the handler returns
            or raises afterwards is dropped; its thread, and so its slot of
            ``concurrency``, stays taken until it does return. Default None:
            no limit (the lease is extended for as long as the handler runs).
        name: the worker name passed to ``queue_pop`` and ``queue_heartbeat``
            (default ``host-pid-random``).
        grace: seconds running handlers get to finish on stop.
        poll_interval: seconds between claims when nothing wakes the worker.
        heartbeat_interval: seconds between ``queue_heartbeat`` calls.
        pooler: set behind PgBouncer in transaction mode: no LISTEN (it does
            not work there) and no prepared statements; an idle worker
            claims with ``queue_pop(..., wait => pooler_wait)``, which
            sleeps in the server until a job of the queue is claimable.
        pooler_wait: seconds one such claim may wait in the server (default
            5; with several queues at most ``poll_interval``). A stop
            cancels a wait in flight.
        listeners: :class:`~pgqueue.WorkerListener`-like objects.
        max_connections: size of the connection pool for claims, acks and
            lease extensions (default ``min(concurrency, 8) + 1``), besides
            the one LISTEN connection (or, with ``pooler``, the one claim
            connection).
        reconnect_max: cap in seconds of the reconnect backoff.
        tracing: open an OpenTelemetry span per job when the API is installed.
        logger: where to log (default the ``pgqueue`` logger).
        connect_kwargs: extra keyword arguments for :func:`psycopg.connect`.
    """

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Union[HandlerFunction, c.Handler]],
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
        """Configure the worker; nothing connects before :meth:`run` or :meth:`start`."""
        self._configure(dsn, handlers, False, concurrency=concurrency, name=name, grace=grace,
                        poll_interval=poll_interval, heartbeat_interval=heartbeat_interval, pooler=pooler,
                        pooler_wait=pooler_wait, listeners=listeners, reconnect_max=reconnect_max, tracing=tracing, logger=logger,
                        connect_kwargs=connect_kwargs, max_runtime=max_runtime)
        size = max_connections if max_connections is not None else min(concurrency, 8) + 1
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError("max_connections must be an int >= 1")
        self._pool = _Pool(dsn, size, self._connect_kwargs)
        self._waker: _Waker = _Waker() if self.pooler else _ListenWaker(self)
        self._acker = _Acker(self)

        self._lock = threading.Lock()
        self._active: Dict[int, Job] = {}
        self._idle_cond = threading.Condition(self._lock)
        # Claimed jobs no slot has taken yet (None: a slot's stop), and the
        # condition idle slots wait on (see _slot, _dispatch_jobs).
        self._dispatch: "collections.deque[Optional[Job]]" = collections.deque()
        self._dispatch_cond = threading.Condition()
        self._slots: List[threading.Thread] = []
        # Each slot's acks whose jobs it has not finished yet (see _slot).
        self._slot_acks: List["collections.deque[_ThreadAck]"] = []
        # The handlers' recent mean run in seconds (an exponential average,
        # updated by the slots without a lock): how the acker gathers and how
        # many slots a claim wakes.
        self._mean_run = 0.0
        self._stopping = threading.Event()
        self._closing = threading.Event()  # past the grace: give up deliveries
        self._grace_deadline: Optional[float] = None
        self._done = threading.Event()
        self._started = False
        self._thread: Optional[threading.Thread] = None
        self._keeper_wake = threading.Event()
        self._reachable = False
        # Pooler mode: the claim loop's own connection, so that a cancel sent to
        # end a server-side wait can only ever hit a claim (which rolls back).
        self._claim_conn: Optional[psycopg.Connection] = None
        self._wait_lock = threading.Lock()
        self._in_wait = False
        self._canceller: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ API

    @property
    def running_jobs(self) -> int:
        """How many claimed jobs this worker holds right now, counting the
        handlers still running past their ``max_runtime`` (their slots are taken)."""
        with self._lock:
            return len(self._active) + len(self._overtime)

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (always False with ``pooler``)."""
        return isinstance(self._waker, _ListenWaker) and self._waker.connected.is_set()

    def run(self, install_signal_handlers: bool = True) -> None:
        """Run until stopped, in the calling thread.

        With ``install_signal_handlers`` (and when called from the main
        thread) SIGTERM and SIGINT stop the worker gracefully; a second one
        gives running jobs back at once. The previous handlers are restored
        on return.
        """
        restore: Callable[[], None] = lambda: None  # noqa: E731
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            restore = self.install_signal_handlers()
        try:
            self._mark_started()
            self._run()
        finally:
            restore()

    def start(self) -> "Worker":
        """Run in a background thread and return at once (see :meth:`stop`, :meth:`wait`)."""
        self._mark_started()
        self._thread = threading.Thread(target=self._run, name=f"pgqueue-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Ask the worker to stop: claim nothing more, wait up to ``grace``
        seconds (default: the worker's) for running handlers, then give the
        rest back. Returns at once; see :meth:`wait`. Safe from any thread
        and from signal handlers; a second call may shorten the grace."""
        g = self.grace if grace is None else c.check_positive("grace", grace, allow_zero=True)
        deadline = time.monotonic() + g
        if self._grace_deadline is None or deadline < self._grace_deadline:
            self._grace_deadline = deadline
        self._stopping.set()
        self._waker.wake()
        self._cancel_server_wait()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker has stopped; False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    def install_signal_handlers(self) -> Callable[[], None]:
        """Make SIGTERM and SIGINT stop this worker; returns a function that
        restores the previous handlers. Main thread only."""
        previous = {}

        def handle(signum: int, frame: Any) -> None:
            # A signal handler must take no lock the interrupted code may hold
            # (Event.set does): the stop runs in a thread of its own.
            grace = 0.0 if self._stopping.is_set() else None
            threading.Thread(target=self._stop_on_signal, args=(signum, grace), daemon=True).start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handle)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _stop_on_signal(self, signum: int, grace: Optional[float]) -> None:
        if grace == 0:
            self._log.warning("signal %s again: giving running jobs back now", signum)
        else:
            self._log.info("signal %s: stopping (grace %.1fs)", signum, self.grace)
        self.stop(grace)

    def __enter__(self) -> "Worker":
        """``with Worker(...) as w:`` runs the worker in the background for the block."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Stop gracefully and wait for the worker to finish."""
        self.stop()
        self.wait()

    # ------------------------------------------------------------ internals

    def _mark_started(self) -> None:
        with self._lock:
            if self._started:
                raise WorkerStopped("a Worker runs once; create a new one")
            self._started = True

    def _run(self) -> None:
        self._log.info("worker %s starting: queues %s, concurrency %d%s", self.name, self.queues,
                       self.concurrency, ", pooler mode (waits in the server)" if self.pooler else "")
        self._acker.start()
        for i in range(self.concurrency):
            waiting: "collections.deque[_ThreadAck]" = collections.deque()
            self._slot_acks.append(waiting)
            t = threading.Thread(target=self._slot, args=(waiting,), name=f"pgqueue-slot-{i}", daemon=True)
            t.start()
            self._slots.append(t)
        keeper = threading.Thread(target=self._keep_leases, name="pgqueue-leases", daemon=True)
        keeper.start()
        try:
            self._waker.start()
            self._loop()
        finally:
            try:
                self._shutdown()
            finally:
                self._done.set()

    def _loop(self) -> None:
        backoff = c.Backoff(0.1, self._reconnect_max)
        next_heartbeat = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + (self.heartbeat_interval if self._heartbeat("running") else 1.0)
            self._waker.clear()
            try:
                claimed, free, waited = self._claim(next_heartbeat)
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
                self._stopping.wait(delay)
                continue
            if claimed and free > 0:
                continue  # the queue may hold more: claim again before sleeping
            if waited:
                continue  # the claim already slept in the server
            self._waker.wait(max(0.0, min(self.poll_interval, next_heartbeat - time.monotonic())))

    def _heartbeat(self, state: str) -> bool:
        info = self._info(state)
        try:
            self._pool.call(c.HEARTBEAT_SQL, (self.name, Jsonb(info)))
            return True
        except Exception as exc:
            self._log.warning("heartbeat failed: %s", exc)
            return False

    def _claim(self, next_heartbeat: float) -> "tuple[int, int, bool]":
        """One pass over the queues: (jobs claimed, capacity left, whether a
        claim waited in the server). In pooler mode the last queue's claim
        waits when nothing was claimed before it (never with no free capacity)."""
        with self._lock:
            free = self.concurrency - len(self._active) - len(self._overtime)
        claimed = 0
        waited = False
        order = self._queue_order()
        for i, queue in enumerate(order):
            if free <= 0 or self._stopping.is_set():
                break
            with self._lock:
                self._take_dirty(queue)  # this claim is the queue's now
            if self.pooler:
                wait = None
                if i == len(order) - 1 and claimed == 0:
                    wait = self._server_wait(next_heartbeat - time.monotonic())
                found, loads = self._pop_pooled(queue, free, wait)
                waited = wait is not None
            else:
                found, loads = self._pool.claim(c.POP_SQL, (queue, self.name, free))
            now = time.monotonic()
            jobs = [Job(r, self, now, loads) for r in c.ClaimedRow.from_rows(found)]
            if jobs:
                with self._lock:
                    self._mark_dirty(queue)  # it may hold more (the acker may claim it with an ack)
            if self._stopping.is_set():
                # Claimed as the stop began (a wait that returned as it was
                # cancelled): give them back untouched.
                for job in jobs:
                    job._begin_release()
                    self._release(job)
                continue
            if jobs:
                with self._lock:
                    for job in jobs:
                        self._active[job.id] = job
                    wake_keeper = self._keeper_due(jobs)
                self._dispatch.extend(jobs)
                if self._dispatch_jobs(len(jobs)) < len(jobs):
                    self._acker.watch()  # shared slots: the acker watches for a handler that blocks
                if wake_keeper:
                    self._keeper_wake.set()
            free -= len(jobs)
            claimed += len(jobs)
        return claimed, free, waited

    def _pop_pooled(self, queue: str, n: int, wait: Optional[dt.timedelta]) -> "tuple[List[Any], Any]":
        """A claim on the loop's own connection (pooler mode), waiting in the
        server up to ``wait`` when given: (the rows, the jobs' decoders). A
        connection that breaks is dropped and the error raised (the loop
        retries with backoff)."""
        conn = self._claim_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                _close_quietly(conn)
            conn = self._claim_conn = psycopg.connect(self._dsn, autocommit=True, **self._connect_kwargs)
        cur, loads = c.claim_cursor(conn)
        if wait is None:
            return cur.execute(c.POP_SQL, (queue, self.name, n)).fetchall(), loads
        with self._wait_lock:
            if self._stopping.is_set():
                return [], loads
            self._in_wait = True
        try:
            return cur.execute(c.POP_WAIT_SQL, (queue, self.name, n, wait)).fetchall(), loads
        finally:
            with self._wait_lock:
                self._in_wait = False

    def _cancel_server_wait(self) -> None:
        """End a server-side wait in flight (pooler mode), from a thread of
        its own so that :meth:`stop` returns at once. A cancelled claim
        rolls back: nothing is claimed, nothing is lost."""
        with self._wait_lock:
            if not self._in_wait or (self._canceller is not None and self._canceller.is_alive()):
                return
            self._canceller = threading.Thread(target=self._cancel_loop, name=f"pgqueue-cancel-{self.name}",
                                               daemon=True)
            self._canceller.start()

    def _cancel_loop(self) -> None:
        # Repeated while the wait lasts: a cancel that reaches the server (or
        # the pooler) before the statement does is lost.
        while not self._done.is_set():
            with self._wait_lock:
                conn = self._claim_conn if self._in_wait else None
            if conn is None:
                return
            try:
                conn.cancel_safe(timeout=2.0)
            except Exception as exc:
                self._log.debug("cancelling the server-side wait: %s", exc)
            self._done.wait(0.2)

    def _dispatch_jobs(self, n: int, woken: int = 0) -> int:
        """``n`` jobs were just added to the dispatch queue: wake as many slots
        as they need (:meth:`_slots_for`), less the ``woken`` ones an ack's
        settle wakes anyway (they take queued jobs before they block again).
        Returns how many slots the jobs get."""
        slots = self._slots_for(n)
        if slots > woken:
            with self._dispatch_cond:
                self._dispatch_cond.notify(slots - woken)
        return slots

    def _slots_for(self, n: int) -> int:
        """How many slots ``n`` claimed jobs need. Handlers whose recent mean
        run is at least :data:`_GATHER_TURN` get a slot each, as they always
        did. Shorter ones share slots, about a turn's work to each: a slot runs
        the queued jobs one after another without sleeping in between (see
        :meth:`_slot`), where a slot per job would cost a thread's wake-up
        (and a GIL hand-over) per job, more CPU than such a handler itself."""
        run = self._mean_run
        if run >= _GATHER_TURN:
            return n
        return max(1, min(n, math.ceil(n * run / _GATHER_TURN)))

    def _spread(self, head: Optional[Job]) -> None:
        """``head`` was the oldest queued job a turn ago (the acker watches, see
        :meth:`_Acker._gather`): if it still is, the slots that took the queue's
        jobs are held up (a handler that turned out long), and every queued job
        gets a slot of its own."""
        dispatch = self._dispatch
        if head is not None and dispatch and dispatch[0] is head:
            with self._dispatch_cond:
                self._dispatch_cond.notify(len(dispatch))

    def _free_acked(self, batch: Sequence[_ThreadAck]) -> None:
        """The acks of ``batch`` were settled by a call of their own (not one
        that also claimed): the jobs they completed or that were refused free
        their slots now, not when their slot threads get round to them."""
        freed = 0
        with self._lock:
            active = self._active
            for ack in batch:
                job = ack.job
                if ack.outcome is not c.PER_JOB and active.get(job.id) is job:
                    del active[job.id]
                    freed += 1
            if freed and self._stopping.is_set():
                self._idle_cond.notify_all()
        if freed:
            self._waker.wake()  # capacity is free again

    def _slot(self, waiting: "collections.deque[_ThreadAck]") -> None:
        """A slot thread: runs claimed jobs one at a time.

        The handler's ack is queued and the slot goes on with the next queued
        job without waiting for it; it blocks on its oldest ack only when no
        job is queued (:meth:`_Acker.wait`), and finishes each job (its span,
        its finished event) once its ack is settled: before it takes another
        job, or, while handlers are short, once the queued jobs ran and their
        acks' call is on its way. So a drain of short handlers keeps one slot
        busy instead of waking a thread per job, while at most
        ``concurrency`` handlers run at once (one per slot thread) and a job's
        finished event still follows its ack. ``waiting``: this slot's acks
        not finished yet, oldest first."""
        dispatch = self._dispatch
        defer = False
        while True:
            # Settled acks are finished first, unless there are many of them,
            # handlers are short and jobs are queued (a drain at a high
            # concurrency): then those jobs run first, their acks' call goes
            # out (see below), and the finished events follow while the call
            # is in flight instead of before it (``defer`` until the queue is
            # empty).
            if waiting and waiting[0].done and not defer:
                if dispatch and self._mean_run < _GATHER_TURN and _settled(waiting) >= _OVERLAP_FINISHES:
                    defer = True
                else:
                    self._finish_one(waiting.popleft())
                    continue
            try:
                job = dispatch.popleft()
            except IndexError:
                defer = False
                if waiting:
                    if not waiting[0].done:
                        self._acker.wait(waiting[0])
                    continue
                with self._dispatch_cond:
                    while not dispatch:
                        self._dispatch_cond.wait()
                    job = dispatch.popleft()
            if job is None:  # the stop (after the acker's): finish what is settled, then end
                while waiting:
                    if not waiting[0].done:
                        self._acker.wait(waiting[0])
                    self._finish_one(waiting.popleft())
                return
            if job._state != c.RUNNING:  # given back while it waited for a slot
                continue
            try:
                ack = self._execute(job)
            except Exception:  # never let a slot die
                self._log.exception("job %s: internal error", job.id)
                self._free(job)
                continue
            if ack is not None:
                waiting.append(ack)
                if ack.woke and defer:
                    # This ack woke the acker for its call, and this slot has
                    # many jobs to finish: the GIL goes to the acker first, so
                    # that the call is on its way while they are finished. (A
                    # hand-over costs about as much as finishing a dozen jobs:
                    # with fewer it would cost more than it saves.)
                    time.sleep(0)

    def _finish_one(self, ack: _ThreadAck) -> None:
        """:meth:`_acked`, with the slot's guard against internal errors."""
        try:
            self._acked(ack)
        except Exception:  # never let a slot die
            self._log.exception("job %s: internal error", ack.job.id)
            self._free(ack.job)

    def _free(self, job: Job) -> None:
        """``job`` is done with: its slot is free, unless an ack's call freed it
        already (it is no longer ``job`` in the active set). A job failed for
        its max_runtime frees its slot here, once its handler returned."""
        freed = False
        if self._active.get(job.id) is job or job._expired or self._stopping.is_set():
            with self._lock:
                freed = self._active.get(job.id) is job
                if freed:
                    del self._active[job.id]
                elif job in self._overtime:
                    self._overtime.discard(job)
                    freed = True
                if self._stopping.is_set():
                    self._idle_cond.notify_all()
        if freed:
            self._waker.wake()  # capacity is free again

    def _execute(self, job: Job) -> Optional[_ThreadAck]:
        """Run ``job``'s handler: its ack queued (to finish with :meth:`_acked`),
        or None when the job is done with already (failed, given back, or
        its outcome delivered on its own)."""
        handler = self._handlers[job.queue]
        hooks = self._hooks
        if hooks.wants("started"):  # no event is made that nobody would see
            hooks.emit(_event(job, "started"))
        span = hooks.start_span(job) if hooks.tracing else None
        start = time.monotonic()
        limit = self._limits.get(job.queue)
        if limit is not None:
            self._watch(job, limit, start, span)
        try:
            if span is None:
                result = handler(job)
            else:
                with hooks.use_span(span):  # current while the handler runs
                    result = handler(job)
        except BaseException as exc:
            # A handler's SystemExit (argparse, sys.exit), GeneratorExit or
            # KeyboardInterrupt fails its job like any error: it must not end
            # the slot's thread, which would keep the job's lease forever and
            # the slot's capacity gone. (Only the main thread receives a real
            # Ctrl-C, and handlers never run there.)
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                if span is not None and not job._expired:
                    span.end()
                raise
            duration = time.monotonic() - start
            try:
                status = self._fail(job, exc)
            except BaseException:
                if span is not None:
                    span.end()
                raise
            if status == c.RELEASED and job._expired:  # failed for its max_runtime (which owns the span)
                self._overran(job, exc)
            else:
                self._report(job, "failed", status, duration, None, exc, span)
            self._free(job)
            return None
        duration = time.monotonic() - start
        self._mean_run += (duration - self._mean_run) * 0.1  # unlocked: a lost update is harmless
        if not job._begin_finish():  # given back meanwhile: its result is not recorded
            if job._expired:  # failed for its max_runtime (which owns the span)
                self._overran(job, None)
                self._free(job)
                return None
            self._report(job, "finished", c.RELEASED, duration, result, None, span)
            self._free(job)
            return None
        doc = None
        if result is not None:
            try:
                doc = c.result_doc(result)  # raises here, for this job alone, if not serialisable
            except Exception as exc:
                self._deliver_alone(job, None, exc, result, duration, span)
                return None
        ack = _ThreadAck(job, doc, result, duration, span)
        if self._acker.enqueue(ack):
            return ack
        self._deliver_alone(job, doc, None, result, duration, span)
        return None

    def _acked(self, ack: _ThreadAck) -> None:
        """The end of a job whose ack was settled: the next slot of the ack's
        chain is woken first (:func:`_settle_chained`), then the outcome is
        reported (an ack the acker handed back goes on its own now) and the
        slot freed."""
        after = ack.next
        if after is not None:
            ack.next = None
            after.waiter.release()
        job = ack.job
        ok = ack.outcome
        if ok is c.PER_JOB:
            self._deliver_alone(job, ack.doc, None, ack.result, ack.duration, ack.span)
            return
        try:
            status = self._ack_status(job, ok)
        finally:
            job._end_finish()
        self._report(job, "finished", status, ack.duration, ack.result, None, ack.span)
        self._free(job)

    def _deliver_alone(self, job: Job, doc: Any, unstorable: Optional[Exception], result: Any,
                       duration: float, span: Any) -> None:
        """Deliver the outcome of ``job`` with a call of its own, its ack with
        ``doc`` or, when its result could not be stored (``unstorable``, or
        an error of that ack), the failure of the attempt; then report it and
        free the slot."""
        try:
            try:
                if unstorable is not None:
                    raise unstorable
                ok = self._deliver(job, c.ACK_SQL, (job.id, doc, job.attempt))
            except Exception as exc:  # e.g. not JSON-serialisable, or too large
                self._log.error("job %s: result could not be stored: %s", job.id, exc)
                bad = TypeError(f"result could not be stored: {type(exc).__name__}: {exc}")
                status = c.as_status(self._deliver(job, c.FAIL_SQL, (job.id, c.describe_error(bad, False),
                                                                     job.attempt, None, False)))
            else:
                status = self._ack_status(job, ok)
        except BaseException:  # an error of the failure's delivery: the span ends without an outcome
            if span is not None:
                span.end()
            raise
        finally:
            job._end_finish()
        self._report(job, "finished", status, duration, result, None, span)
        self._free(job)

    def _ack_status(self, job: Job, ok: Any) -> Optional[str]:
        """The status an ack's outcome ``ok`` reports (a refusal is logged)."""
        if ok is None:
            return None
        if not ok:
            self._log.warning("job %s: ack refused, the claim (attempt %s) is no longer current",
                              job.id, job.attempt)
        return "completed" if ok else None

    def _report(self, job: Job, kind: str, status: Optional[str], duration: float, result: Any,
                error: Optional[BaseException], span: Any) -> None:
        """The event of ``kind`` (none for a job given back) and the end of the
        job's span, which is current again while the event's listeners run
        (as it was in the handler)."""
        hooks = self._hooks
        emit = status != c.RELEASED and hooks.wants(kind)
        if span is None:
            if emit:
                hooks.emit(_event(job, kind, duration=duration, result=result, error=error, status=status))
            return
        try:
            hooks.span_outcome(span, status, error)
            if emit:
                with hooks.use_span(span):
                    hooks.emit(_event(job, kind, duration=duration, result=result, error=error, status=status))
        finally:
            span.end()

    def _fail(self, job: Job, exc: BaseException) -> Optional[str]:
        """Fail the attempt with ``exc``: the new status, or RELEASED when the
        job was no longer running (given back, or failed for its max_runtime)."""
        if not job._begin_finish():
            return c.RELEASED
        return self._record_failure(job, exc)

    def _record_failure(self, job: Job, exc: BaseException) -> Optional[str]:
        """Deliver the failure of ``job`` (FINISHING) with ``exc``'s text, retry
        delay and permanence: its new status (None if not delivered)."""
        try:
            tries = c.fail_attempts(job.id, c.describe_error(exc), job.attempt, retry_in_of(exc), is_permanent(exc))
            for n, params in enumerate(tries):
                try:
                    return c.as_status(self._deliver(job, c.FAIL_SQL, params))
                except Exception as refused:
                    if n + 1 == len(tries):
                        raise
                    self._log.warning("job %s: queue_fail refused (%s); trying again with less", job.id, refused)
            return None
        finally:
            job._end_finish()

    def _deliver(self, job: Job, query: str, params: Sequence[Any]) -> Any:
        """Run an ack / fail until it lands. Transient errors are retried with
        backoff (the attempt makes a repeat harmless) until the worker is past
        its grace or ``max(30 s, the lease)`` has gone by; then None: the job
        comes back after its lease and the stale attempt is refused."""
        backoff = c.Backoff(0.05, min(2.0, self._reconnect_max))
        give_up = time.monotonic() + max(30.0, job.lease.total_seconds())
        while True:
            try:
                return self._pool.call(query, params)
            except Exception as exc:
                if not c.is_transient(exc):
                    raise
                if self._closing.is_set() or time.monotonic() > give_up:
                    self._log.error("job %s: outcome not delivered (%s); the job returns after its lease",
                                    job.id, exc)
                    return None
                delay = backoff.next()
                self._log.warning("job %s: outcome not delivered yet (%s); retrying in %.2fs", job.id, exc, delay)
                time.sleep(delay)

    def _keep_leases(self) -> None:
        """Extend the lease of every running job at half its timeout, and fail
        those whose handler ran past its max_runtime (:meth:`_expire`)."""
        while not self._done.is_set() and not self._closing.is_set():
            now = time.monotonic()
            with self._lock:
                jobs = list(self._active.values())
            for job in jobs:
                deadline = job._deadline
                if deadline is not None and deadline <= now and job._state == c.RUNNING:
                    self._expire(job)
            for job in jobs:
                if job._state not in (c.RUNNING, c.FINISHING) or job._lost or job._next_touch > now:
                    continue
                try:
                    ok = self._pool.call(c.TOUCH_SQL, (job.id, None, job.attempt))
                except Exception as exc:
                    self._log.warning("job %s: lease not extended yet (%s)", job.id, exc)
                    job._next_touch = time.monotonic() + min(1.0, job.touch_every / 2)
                    continue
                if ok:
                    job._next_touch = time.monotonic() + job.touch_every
                elif job._state == c.RUNNING:
                    job._lost = True
                    self._log.warning("job %s: lease lost (attempt %s is no longer current)", job.id, job.attempt)
            with self._lock:
                pending = [j._next_touch for j in self._active.values() if not j._lost]
                pending += [j._deadline for j in self._active.values()
                            if j._deadline is not None and j._state == c.RUNNING]
                now = time.monotonic()
                sleep = max(0.01, min(1.0, min(pending, default=now + 1.0) - now))
                self._keeper_until = now + sleep
            self._keeper_wake.wait(sleep)
            self._keeper_wake.clear()

    def _watch(self, job: Job, limit: float, start: float, span: Any) -> None:
        """The handler of ``job`` starts now (``start``) with a max_runtime of
        ``limit`` seconds: the lease keeper fails it past that (waking sooner
        than it would for it)."""
        job._expiry = (limit, start, span)
        deadline = job._deadline = start + limit
        if deadline < self._keeper_until:
            self._keeper_wake.set()

    def _expire(self, job: Job) -> None:
        """The handler of ``job`` ran past its max_runtime (called by the lease
        keeper): its lease is no longer extended and ``lease_lost`` is set
        (how a thread is asked to stop); its slot moves to the overtime set,
        taken until the handler returns; the attempt is failed at once, in a
        thread of its own (:meth:`_fail_expired`), so that the keeper goes on
        extending the other jobs' leases while that call is retried."""
        # Under the worker's lock with the move: a handler that returns meanwhile
        # frees its slot (_free, under that lock) from where the expiry put it.
        with self._lock:
            if not job._begin_expire():
                return  # it returned, failed or was given back meanwhile
            if self._active.get(job.id) is job:
                del self._active[job.id]
            self._overtime.add(job)
        self._log.warning("job %s: the handler ran past its max_runtime of %s; failing the attempt (its thread"
                          " keeps its slot until it returns)", job.id, format_duration(job._expiry[0]))
        try:
            threading.Thread(target=self._fail_expired, args=(job, time.monotonic() - job._expiry[1]),
                             name=f"pgqueue-expire-{job.id}", daemon=True).start()
        except Exception as exc:  # no thread to be had: the keeper itself must go on
            self._log.error("job %s: the max_runtime failure could not be sent (%s); it returns after its lease",
                            job.id, exc)

    def _fail_expired(self, job: Job, duration: float) -> None:
        """Fail the attempt of ``job`` for its max_runtime (after
        :meth:`_expire`) and report it like any failure (its span ends here)."""
        limit, _, span = job._expiry
        error = MaxRuntimeExceeded(limit)
        status: Optional[str] = None
        try:
            status = self._record_failure(job, error)
        except Exception as exc:
            self._log.error("job %s: the max_runtime failure was not recorded (%s); it returns after its lease",
                            job.id, exc)
        try:
            self._report(job, "failed", status, duration, None, error, span)
        except Exception:
            self._log.exception("job %s: internal error", job.id)

    def _shutdown(self) -> None:
        self._stopping.set()
        if self._grace_deadline is None:
            self._grace_deadline = time.monotonic() + self.grace
        self._waker.stop()
        if self._claim_conn is not None:
            _close_quietly(self._claim_conn)
            self._claim_conn = None
        with self._lock:
            while self._active and time.monotonic() < (self._grace_deadline or 0):
                self._idle_cond.wait(timeout=min(0.1, max(0.0, self._grace_deadline - time.monotonic())))
            left = list(self._active.values())
        if left:
            self._log.warning("grace over: giving back %d running job(s)", len(left))
        for job in left:
            if job._begin_release():
                self._release(job)
        # Outcomes still in flight get a moment, then deliveries give up; so do
        # the jobs whose acks landed and whose slots have not finished them
        # (reported them) yet.
        with self._lock:
            end = time.monotonic() + 5.0
            while (any(j._state == c.FINISHING for j in self._active.values())
                   or any(j._state == c.FINISHING for j in self._overtime)  # a max_runtime failure in flight
                   or any(self._slot_acks)) and time.monotonic() < end:
                self._idle_cond.wait(timeout=0.1)
        self._closing.set()
        # Queued and in-flight acks are delivered before the pool closes (one
        # try each now that the worker is closing, as for any delivery).
        self._acker.stop(timeout=5.0)
        self._keeper_wake.set()
        with self._dispatch_cond:
            self._dispatch.extend([None] * len(self._slots))
            self._dispatch_cond.notify_all()
        if self._reachable:  # a last word, unless the database is away
            self._heartbeat("stopped")
        self._pool.close()
        self._log.info("worker %s stopped", self.name)

    def _release(self, job: Job) -> None:
        """Give a job back with ``queue_release(id, attempt)``: pending again at
        once, the attempt not counted (its ``max_attempts`` grows by one). On
        an extension without ``queue_release`` (older than 0.2.0) that is
        logged as an error and the job returns after its lease."""
        status: Optional[str] = None
        try:
            status = "released" if self._pool.call(c.RELEASE_SQL, (job.id, job.attempt)) else None
        except psycopg.errors.UndefinedFunction:
            self._log.error(c.NO_RELEASE_MESSAGE, job.id)
        except Exception as exc:
            self._log.error("job %s: could not be given back (%s); it returns after its lease", job.id, exc)
        self._hooks.emit(JobEvent(job, "released", duration=time.monotonic() - job._started, status=status))
