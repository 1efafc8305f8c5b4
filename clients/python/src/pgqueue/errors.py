"""Exceptions a handler raises to steer what happens to its job.

Any other exception fails the attempt: the job is retried with the backoff it
was pushed with, and goes to the dead letters when no attempts are left.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional, Union

Delay = Union[dt.timedelta, int, float]


def as_timedelta(value: Delay, what: str = "delay") -> dt.timedelta:
    """Return ``value`` as a :class:`datetime.timedelta` (numbers are seconds).

    Raises :class:`TypeError` for anything else (``bool`` included) and
    :class:`ValueError` for a negative span.
    """
    if isinstance(value, bool) or not isinstance(value, (dt.timedelta, int, float)):
        raise TypeError(f"{what} must be a timedelta or a number of seconds, not {type(value).__name__}")
    span = value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)
    if span < dt.timedelta(0):
        raise ValueError(f"{what} must not be negative: {span}")
    return span


class PermanentError(Exception):
    """Fail the job at once, with no further retries.

    The job becomes ``failed`` (a dead letter, listed by ``queue_dead``) with
    this exception's message as its last error, whatever attempts it has left.

    >>> raise PermanentError("no such customer")  # doctest: +SKIP
    """


class RetryIn(Exception):
    """Fail this attempt and retry the job after ``delay`` (once).

    ``delay`` is a :class:`datetime.timedelta` or a number of seconds; it
    replaces the job's backoff for this retry only. With no attempts left the
    job still goes to the dead letters.

    Any exception class may instead carry a ``retry_in`` attribute with the
    same meaning (e.g. an HTTP 429 error that knows its ``Retry-After``).
    """

    def __init__(self, delay: Delay, message: Optional[str] = None) -> None:
        """Retry after ``delay``; ``message`` is recorded as the job's last error."""
        self.retry_in = as_timedelta(delay, "retry_in")
        super().__init__(message or f"retry in {self.retry_in}")


def format_duration(seconds: float) -> str:
    """A span as the client prints it: ``2s``, ``1.5s``, ``500ms``."""
    if seconds >= 1:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    return format(seconds * 1000, ".6g") + "ms"


class MaxRuntimeExceeded(Exception):
    """The error of a job whose handler ran longer than its ``max_runtime``.

    A worker does not raise it into the handler: it fails the job's attempt
    with this error's message as the last error (an ordinary, retryable
    failure) and reports it in the job's ``"failed"`` event (``event.error``).
    ``max_runtime`` is the limit in seconds.
    """

    def __init__(self, max_runtime: float) -> None:
        """The limit the handler ran past, in seconds."""
        self.max_runtime = max_runtime
        super().__init__(f"max_runtime exceeded: the handler ran longer than {format_duration(max_runtime)}")


class WorkerStopped(Exception):
    """Raised by :meth:`Worker.start` / :meth:`AsyncWorker.run` on a worker that has already run."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` asks to skip retries (a :class:`PermanentError` or ``exc.permanent is True``)."""
    return isinstance(exc, PermanentError) or getattr(exc, "permanent", False) is True


def retry_in_of(exc: BaseException) -> Optional[dt.timedelta]:
    """The retry delay ``exc`` asks for (its ``retry_in`` attribute), or ``None``.

    An unusable ``retry_in`` (wrong type, negative) is ignored: the job then
    follows its normal backoff.
    """
    value = getattr(exc, "retry_in", None)
    if value is None:
        return None
    try:
        return as_timedelta(value, "retry_in")
    except (TypeError, ValueError, OverflowError):
        return None
