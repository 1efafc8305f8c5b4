"""Workflows: a job's dependencies and batches, with their asyncio twins.

Jobs depend on each other through ``push(..., depends_on=[...])``; a handler
reads its inputs with :func:`dependencies`. A batch groups jobs pushed with
``push(..., batch=id)`` and pushes a callback job once all of them are final:
:func:`batch_open`, :func:`batch_close`, :func:`batch_cancel`,
:func:`batch_status`.

As with :func:`~pgqueue.push`, every function runs one statement on the
connection it is given, inside that connection's current transaction, and
commits nothing; values travel as query parameters. Bad arguments raise
:class:`TypeError` before any query, or the extension's ``psycopg`` error
(SQLSTATE 22023, :class:`psycopg.errors.InvalidParameterValue`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Dict, List, Mapping, Optional, Sequence

import psycopg
from psycopg.types.json import Jsonb

from .push import _check_int

__all__ = [
    "Dependency",
    "BatchStatus",
    "dependencies",
    "batch_open",
    "batch_close",
    "batch_cancel",
    "batch_status",
    "adependencies",
    "abatch_open",
    "abatch_close",
    "abatch_cancel",
    "abatch_status",
]


@dataclasses.dataclass(frozen=True)
class Dependency:
    """One job another job depends on, as ``queue_dependencies`` reports it.

    Attributes:
        dependency: the id of the job depended on.
        queue: its queue (``None`` when its history is gone).
        status: its status (``"completed"``, ``"processing"``, ...); ``None``
            for a completed job whose history is gone (retention, or
            ``queue.keep_completed = off``).
        result: what its handler returned (decoded JSON), ``None`` before it
            completed.
        finished_at: when it became final, else ``None``.
        resolved: whether this edge no longer blocks the dependent.
        run_anyway: whether the dependent was pushed with ``run_anyway``.
    """

    dependency: int
    queue: Optional[str]
    status: Optional[str]
    result: Any
    finished_at: Optional[dt.datetime]
    resolved: bool
    run_anyway: bool


@dataclasses.dataclass(frozen=True)
class BatchStatus:
    """A batch's state and counts, as ``queue_batch`` reports it.

    Attributes:
        id: the batch id.
        state: ``"open"``, ``"closed"``, ``"done"`` or ``"cancelled"``.
        total: its jobs in all (for an open batch, counted from its jobs now).
        pending: jobs not final yet.
        running: jobs being processed now.
        completed: jobs completed.
        failed: jobs failed or expired.
        cancelled: jobs cancelled (or deleted while waiting).
        progress: the share of its jobs that are final, 0 to 1 (``None`` for
            an empty batch).
        on_complete: the callback spec pushed when all jobs are final, or
            ``None``.
        on_failure: the callback spec pushed too when any job failed or
            expired, or ``None``.
        complete_job: the id of the pushed ``on_complete`` job, once pushed.
        failure_job: the id of the pushed ``on_failure`` job, once pushed.
        created_at: when the batch was opened.
        closed_at: when it was closed, or ``None``.
        finished_at: when it became done or was cancelled, or ``None``.
        raw: the whole ``queue_batch`` document (keys a newer extension adds
            are there too).
    """

    id: int
    state: str
    total: Optional[int]
    pending: Optional[int]
    running: int
    completed: Optional[int]
    failed: Optional[int]
    cancelled: Optional[int]
    progress: Optional[float]
    on_complete: Optional[Dict[str, Any]]
    on_failure: Optional[Dict[str, Any]]
    complete_job: Optional[int]
    failure_job: Optional[int]
    created_at: dt.datetime
    closed_at: Optional[dt.datetime]
    finished_at: Optional[dt.datetime]
    raw: Dict[str, Any] = dataclasses.field(repr=False, compare=False)


_DEPENDENCIES_SQL = (
    "SELECT dependency, queue, status, result, finished_at, resolved, run_anyway"
    " FROM queue_dependencies(%s::bigint)"
)
_BATCH_OPEN_SQL = "SELECT queue_batch_open(on_complete => %s::jsonb, on_failure => %s::jsonb)"
_BATCH_CANCEL_SQL = "SELECT queue_batch_cancel(%s::bigint)"
# The times of the document are parsed by the server (JSON carries them as
# text with a variable number of fractional digits).
_BATCH_FIELDS = (
    "SELECT b, (b ->> 'created_at')::timestamptz, (b ->> 'closed_at')::timestamptz,"
    " (b ->> 'finished_at')::timestamptz FROM {} AS b"
)
_BATCH_STATUS_SQL = _BATCH_FIELDS.format("queue_batch(%s::bigint)")
_BATCH_CLOSE_SQL = _BATCH_FIELDS.format("queue_batch_close(%s::bigint)")


def _check_callback(what: str, spec: Optional[Mapping[str, Any]]) -> Optional[Jsonb]:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise TypeError(f"{what} must be a mapping like {{'queue': ..., 'payload': {{...}}}}, "
                        f"not {type(spec).__name__}")
    return Jsonb(dict(spec))


def _dependency(row: Sequence[Any]) -> Dependency:
    return Dependency(int(row[0]), row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]))


def _batch(row: Optional[Sequence[Any]]) -> Optional[BatchStatus]:
    if row is None or row[0] is None:
        return None
    doc = row[0]

    def num(key: str) -> Optional[int]:
        value = doc.get(key)
        return None if value is None else int(value)

    progress = doc.get("progress")
    return BatchStatus(
        id=int(doc["id"]), state=doc["state"], total=num("total"), pending=num("pending"),
        running=num("running") or 0, completed=num("completed"), failed=num("failed"),
        cancelled=num("cancelled"), progress=None if progress is None else float(progress),
        on_complete=doc.get("on_complete"), on_failure=doc.get("on_failure"),
        complete_job=num("complete_job"), failure_job=num("failure_job"),
        created_at=row[1], closed_at=row[2], finished_at=row[3], raw=doc,
    )


def dependencies(conn: psycopg.Connection, job_id: int) -> List[Dependency]:
    """The jobs job ``job_id`` depends on (``queue_dependencies``), in id order.

    What a handler of a dependent job reads its inputs from: each
    :class:`Dependency` carries the dependency's ``status`` and ``result``.
    Only dependencies of queues the caller may read are listed; a job with
    none (or an unknown job) gives an empty list.
    """
    rows = conn.execute(_DEPENDENCIES_SQL, (_check_int("job_id", job_id),)).fetchall()
    return [_dependency(r) for r in rows]


def batch_open(conn: psycopg.Connection, on_complete: Optional[Mapping[str, Any]] = None,
               on_failure: Optional[Mapping[str, Any]] = None) -> int:
    """Open a batch with ``queue_batch_open`` and return its id.

    Push jobs into it with ``push(..., batch=id)`` (from any transaction),
    then :func:`batch_close` it. Once every job of the closed batch is final,
    ``on_complete`` is pushed, and ``on_failure`` too when any job failed or
    expired, exactly once each, with the batch's summary added to the payload
    as ``"batch"`` (``{"id", "total", "completed", "failed", "cancelled"}``).

    Each callback is a mapping ``{"queue": str, "payload": dict, "priority":
    int or name}`` (``payload`` and ``priority`` optional), checked by the
    extension now (22023 for anything else, or a queue the caller may not
    push to), so that pushing it later cannot fail.
    """
    params = (_check_callback("on_complete", on_complete), _check_callback("on_failure", on_failure))
    row = conn.execute(_BATCH_OPEN_SQL, params).fetchone()
    assert row is not None
    return int(row[0])


def batch_close(conn: psycopg.Connection, batch_id: int) -> BatchStatus:
    """Close batch ``batch_id`` with ``queue_batch_close``: no more jobs join it.

    Waits for pushes into it still in flight, counts its jobs and, when all
    are final already (or there are none), pushes the callbacks now. Returns
    the batch's status after the close. A batch that is not open (or
    unknown) is the extension's error (22023).
    """
    row = conn.execute(_BATCH_CLOSE_SQL, (_check_int("batch_id", batch_id),)).fetchone()
    status = _batch(row)
    assert status is not None
    return status


def batch_cancel(conn: psycopg.Connection, batch_id: int) -> bool:
    """Cancel batch ``batch_id`` with ``queue_batch_cancel``.

    Its waiting jobs (and their dependents) are cancelled, running ones
    finish, and no callback is pushed. ``False`` when the batch is done,
    cancelled already, or unknown.
    """
    row = conn.execute(_BATCH_CANCEL_SQL, (_check_int("batch_id", batch_id),)).fetchone()
    return bool(row is not None and row[0])


def batch_status(conn: psycopg.Connection, batch_id: int) -> Optional[BatchStatus]:
    """Batch ``batch_id``'s state and counts (``queue_batch``), or ``None`` for
    an unknown batch (or one a confined role did not open)."""
    return _batch(conn.execute(_BATCH_STATUS_SQL, (_check_int("batch_id", batch_id),)).fetchone())


async def adependencies(conn: psycopg.AsyncConnection, job_id: int) -> List[Dependency]:
    """:func:`dependencies` on a :class:`psycopg.AsyncConnection`."""
    cur = await conn.execute(_DEPENDENCIES_SQL, (_check_int("job_id", job_id),))
    return [_dependency(r) for r in await cur.fetchall()]


async def abatch_open(conn: psycopg.AsyncConnection, on_complete: Optional[Mapping[str, Any]] = None,
                      on_failure: Optional[Mapping[str, Any]] = None) -> int:
    """:func:`batch_open` on a :class:`psycopg.AsyncConnection`."""
    params = (_check_callback("on_complete", on_complete), _check_callback("on_failure", on_failure))
    cur = await conn.execute(_BATCH_OPEN_SQL, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def abatch_close(conn: psycopg.AsyncConnection, batch_id: int) -> BatchStatus:
    """:func:`batch_close` on a :class:`psycopg.AsyncConnection`."""
    cur = await conn.execute(_BATCH_CLOSE_SQL, (_check_int("batch_id", batch_id),))
    status = _batch(await cur.fetchone())
    assert status is not None
    return status


async def abatch_cancel(conn: psycopg.AsyncConnection, batch_id: int) -> bool:
    """:func:`batch_cancel` on a :class:`psycopg.AsyncConnection`."""
    cur = await conn.execute(_BATCH_CANCEL_SQL, (_check_int("batch_id", batch_id),))
    row = await cur.fetchone()
    return bool(row is not None and row[0])


async def abatch_status(conn: psycopg.AsyncConnection, batch_id: int) -> Optional[BatchStatus]:
    """:func:`batch_status` on a :class:`psycopg.AsyncConnection`."""
    cur = await conn.execute(_BATCH_STATUS_SQL, (_check_int("batch_id", batch_id),))
    return _batch(await cur.fetchone())
