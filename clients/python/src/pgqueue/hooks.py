"""Hooks into a worker's job lifecycle: listeners, logging and tracing.

A listener is any object with some of the methods of :class:`WorkerListener`
(``on_started``, ``on_finished``, ``on_failed``, ``on_released``); each gets a
:class:`JobEvent`. Listeners run in the thread (or, for
:class:`~pgqueue.AsyncWorker`, the event loop) that runs the job, so keep them
quick. An exception raised by a listener is logged and otherwise ignored: it
never changes what happens to the job.

Every worker also logs to the ``pgqueue`` logger, and when ``opentelemetry-api``
is importable it wraps each job in a ``process <queue>`` span (kind CONSUMER).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

try:  # optional dependency
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace import SpanKind as _SpanKind
    from opentelemetry.trace import Status as _Status
    from opentelemetry.trace import StatusCode as _StatusCode
except ImportError:  # pragma: no cover - exercised when the package is absent
    _otel_trace = None  # type: ignore[assignment]

_NO_GLOBAL = object()
# The providers of the API alone (nothing installed, or the explicit no-op):
# their spans are no-ops whose context is the current one again, so a job
# opens none while one of these is the global provider (see _Hooks.tracing).
_NO_OP_PROVIDERS: tuple = tuple(
    cls for cls in (getattr(_otel_trace, "ProxyTracerProvider", None),
                    getattr(_otel_trace, "NoOpTracerProvider", None)) if isinstance(cls, type))

__all__ = ["JobEvent", "WorkerListener", "CallbackListener", "tracing_available"]

logger = logging.getLogger("pgqueue")


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """What happened to a job.

    Attributes:
        job: the :class:`~pgqueue.Job` (or :class:`~pgqueue.AsyncJob`).
        kind: ``"started"``, ``"finished"``, ``"failed"`` or ``"released"``.
        duration: seconds the handler ran (``None`` for ``"started"``).
        result: the handler's return value (``"finished"``).
        error: the exception the handler raised (``"failed"``).
        status: the job's new status as the server reported it:
            ``"completed"``, ``"retrying"``, ``"pending"``, ``"failed"``,
            ``"released"``; ``None`` when the server refused the update because
            the claim was no longer current (the lease ran out and the job was
            claimed again) or when it could not be delivered.
    """

    job: Any
    kind: str
    duration: Optional[float] = None
    result: Any = None
    error: Optional[BaseException] = None
    status: Optional[str] = None


class WorkerListener:
    """Base class of listeners; override the methods you need (all no-ops here)."""

    def on_started(self, event: JobEvent) -> None:
        """A handler is about to run ``event.job``."""

    def on_finished(self, event: JobEvent) -> None:
        """The handler returned; ``event.status`` is ``"completed"`` when the ack landed."""

    def on_failed(self, event: JobEvent) -> None:
        """The handler raised ``event.error``; ``event.status`` is the job's new status."""

    def on_released(self, event: JobEvent) -> None:
        """The worker stopped before the handler ended and gave the job back."""


class CallbackListener(WorkerListener):
    """A listener made of plain callables, e.g. ``CallbackListener(on_failed=alert)``."""

    def __init__(
        self,
        on_started: Optional[Callable[[JobEvent], Any]] = None,
        on_finished: Optional[Callable[[JobEvent], Any]] = None,
        on_failed: Optional[Callable[[JobEvent], Any]] = None,
        on_released: Optional[Callable[[JobEvent], Any]] = None,
    ) -> None:
        """Call the given functions for the matching events; omitted ones are ignored."""
        self._fns = {"started": on_started, "finished": on_finished, "failed": on_failed, "released": on_released}

    def _call(self, kind: str, event: JobEvent) -> None:
        fn = self._fns[kind]
        if fn is not None:
            fn(event)

    def on_started(self, event: JobEvent) -> None:
        """Forward to ``on_started``."""
        self._call("started", event)

    def on_finished(self, event: JobEvent) -> None:
        """Forward to ``on_finished``."""
        self._call("finished", event)

    def on_failed(self, event: JobEvent) -> None:
        """Forward to ``on_failed``."""
        self._call("failed", event)

    def on_released(self, event: JobEvent) -> None:
        """Forward to ``on_released``."""
        self._call("released", event)


def tracing_available() -> bool:
    """Whether ``opentelemetry-api`` is importable (then jobs run in spans)."""
    return _otel_trace is not None


_KINDS = ("started", "finished", "failed", "released")
# The level each kind is logged at (see _Hooks.emit).
_LEVELS = {"started": logging.DEBUG, "finished": logging.INFO, "failed": logging.WARNING,
           "released": logging.WARNING}


def _event(job: Any, kind: str, duration: Optional[float] = None, result: Any = None,
           error: Optional[BaseException] = None, status: Optional[str] = None) -> JobEvent:
    """A :class:`JobEvent`, the same as ``JobEvent(...)`` but made without the
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)."""
    event = object.__new__(JobEvent)
    event.__dict__.update(job=job, kind=kind, duration=duration, result=result, error=error, status=status)
    return event


class _Hooks:
    """Fans events out to the listeners and the log, and opens job spans.

    The listeners' methods are looked up once, here: a method a listener
    does not define, or inherits unchanged from :class:`WorkerListener` (a
    no-op), is not called, and a :class:`CallbackListener` calls its
    functions directly. :meth:`wants` tells a worker whether an event of a
    kind would reach anyone (a listener or the log at the kind's level), so
    that it can skip making one.
    """

    def __init__(self, listeners: Sequence[Any], log: logging.Logger, tracing: bool, version: str) -> None:
        for listener in listeners:
            if not any(callable(getattr(listener, m, None)) for m in
                       ("on_started", "on_finished", "on_failed", "on_released")):
                raise TypeError(f"{listener!r} has none of on_started/on_finished/on_failed/on_released")
        self._listeners = list(listeners)
        self.log = log
        self._enabled = getattr(log, "isEnabledFor", None)
        # kind -> [(listener, method name, function to call)]
        self._fns: dict = {kind: [] for kind in _KINDS}
        for listener in self._listeners:
            for kind in _KINDS:
                method = "on_" + kind
                fn = getattr(listener, method, None)
                if fn is None:
                    continue
                own = getattr(type(listener), method, None)
                if own is getattr(WorkerListener, method):
                    continue  # the base class's no-op
                if own is getattr(CallbackListener, method) and isinstance(listener, CallbackListener):
                    fn = listener._fns[kind]  # what CallbackListener.on_<kind> forwards to
                    if fn is None:
                        continue
                self._fns[kind].append((listener, method, fn))
        self._tracer = None
        self._version = version
        # Whether the global provider was seen to be a real one (an SDK's): then
        # self._tracer is its tracer and stays so (the global provider is set once).
        self._live = False
        if tracing and _otel_trace is not None:
            self._tracer = _otel_trace.get_tracer("pgqueue", version)
            # Once, here: a provider named by OTEL_PYTHON_TRACER_PROVIDER is
            # loaded by this first call (the per-job check reads the global only).
            _otel_trace.get_tracer_provider()

    @property
    def tracing(self) -> bool:
        """Whether a job starting now runs in a span (:meth:`span` opens one).

        False with ``tracing=False`` or without ``opentelemetry-api``, and
        also while the global tracer provider is the API's own (none was
        installed, or the no-op one): its spans record nothing and leave the
        current span as it was, so opening one per job would only cost CPU
        (about a fifth of a no-op drain's). Checked per job: a provider
        installed after the worker started gets the spans of the jobs that
        start from then on."""
        if self._tracer is None:
            return False
        if self._live:
            return True
        # The API's global, read directly: get_tracer_provider() would look the
        # environment up every time (a third of a no-op job's hooks). An API
        # without that global gets the public call.
        provider = getattr(_otel_trace, "_TRACER_PROVIDER", _NO_GLOBAL)
        if provider is None:
            return False
        if provider is _NO_GLOBAL:
            provider = _otel_trace.get_tracer_provider()
        if isinstance(provider, _NO_OP_PROVIDERS):
            return False
        # A real provider now: its tracer directly, not through the API's proxy.
        self._tracer = _otel_trace.get_tracer("pgqueue", self._version)
        self._live = True
        return True

    def wants(self, kind: str) -> bool:
        """Whether an event of ``kind`` would reach a listener or the log."""
        if self._fns[kind]:
            return True
        enabled = self._enabled
        return enabled is None or enabled(_LEVELS[kind])

    def emit(self, event: JobEvent) -> None:
        job = event.job
        kind = event.kind
        log = self.log
        enabled = self._enabled
        if enabled is not None and not enabled(_LEVELS.get(kind, logging.CRITICAL)):
            pass  # not logged at this level: no arguments to gather
        elif kind == "started":
            log.debug("job %s (%s) attempt %s started", job.id, job.queue, job.attempt)
        elif kind == "finished":
            log.info("job %s (%s) finished in %.3fs: %s", job.id, job.queue, event.duration or 0.0,
                     event.status or "ack not applied")
        elif kind == "failed":
            log.warning("job %s (%s) attempt %s failed in %.3fs -> %s: %r", job.id, job.queue,
                        job.attempt, event.duration or 0.0, event.status, event.error)
        elif kind == "released":
            log.warning("job %s (%s) given back at shutdown -> %s", job.id, job.queue, event.status)
        for listener, method, fn in self._fns.get(kind, ()):
            try:
                fn(event)
            except Exception:  # a listener never breaks the worker
                log.exception("listener %r failed in %s", listener, method)

    @staticmethod
    def _attributes(job: Any) -> dict:
        """The attributes of ``job``'s span."""
        return {
            "messaging.system": "pgqueue",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "pgqueue.job.attempt": job.attempt,
            "pgqueue.job.max_attempts": job.max_attempts,
            "pgqueue.worker": job.worker,
        }

    @contextlib.contextmanager
    def span(self, job: Any) -> Iterator[Optional[Any]]:
        """A CONSUMER span around one job, or nothing without OpenTelemetry."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(
            f"process {job.queue}", kind=_SpanKind.CONSUMER, attributes=self._attributes(job),
            record_exception=False, set_status_on_exception=False,
        ) as span:
            yield span

    def start_span(self, job: Any) -> Any:
        """The CONSUMER span of ``job`` (as :meth:`span`'s), started but not made
        current: the threaded worker makes it current with :meth:`use_span`
        while the handler runs and while its event's listeners do, and ends it
        (``span.end()``) once the job's outcome is known. Only while
        :attr:`tracing`."""
        assert self._tracer is not None
        return self._tracer.start_span(f"process {job.queue}", kind=_SpanKind.CONSUMER,
                                       attributes=self._attributes(job))

    @staticmethod
    def use_span(span: Any) -> Any:
        """A ``with`` block in which ``span`` (of :meth:`start_span`) is the
        current span, not ended at its end; an exception leaving it is not
        recorded (the worker records the outcome, :meth:`span_outcome`)."""
        return _otel_trace.use_span(span, end_on_exit=False, record_exception=False,
                                    set_status_on_exception=False)

    def open_span(self, job: Any) -> Any:
        """Start the span of :meth:`span` and make it the calling context's
        current span, without a ``with`` block: for a job whose end comes
        later, in a callback (the asyncio worker's ack). A handle for
        :meth:`close_span`, which must run in the same context (the same
        :class:`contextvars.Context`: the span is detached from it there)."""
        manager = self.span(job)
        return manager, manager.__enter__()

    @staticmethod
    def close_span(handle: Any) -> None:
        """End a span of :meth:`open_span` (``None``: nothing to end). Its
        outcome, if any, was recorded before (:meth:`span_outcome` on
        ``handle[1]``): a job cancelled or given back ends its span without
        one, as it leaves the ``with`` block of :meth:`span` with the
        exception."""
        if handle is not None:
            handle[0].__exit__(None, None, None)

    @staticmethod
    def span_outcome(span: Optional[Any], status: Optional[str], error: Optional[BaseException]) -> None:
        """Record a job's new ``status`` (and the handler's ``error``) on its span."""
        if span is None:
            return
        span.set_attribute("pgqueue.job.status", status or "unknown")
        if error is not None:
            span.record_exception(error)
            span.set_status(_Status(_StatusCode.ERROR, f"{type(error).__name__}: {error}"))
