"""Pushing jobs: :func:`push`, :func:`push_batch` and their asyncio twins.

Every function runs one statement on the connection it is given, inside that
connection's current transaction: the job exists only if the caller's
transaction commits (a rolled-back transaction leaves no job and wakes no
worker). Nothing here commits. Every value travels as a query parameter; the
statement text is assembled only from fixed fragments.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .errors import Delay, as_timedelta

__all__ = [
    "Priority",
    "PushOptions",
    "push",
    "push_batch",
    "apush",
    "apush_batch",
    "check_queue_name",
]

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,57}")


def check_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`ValueError`.

    Queue names are 1 to 57 characters of ``[A-Za-z0-9_.:-]`` (the NOTIFY
    channel ``queue_<name>`` must fit in an identifier).
    """
    if not isinstance(name, str):
        raise TypeError(f"queue name must be a str, not {type(name).__name__}")
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(f"invalid queue name {name!r}: use 1-57 characters of [A-Za-z0-9_.:-]")
    return name


class Priority(enum.IntEnum):
    """The named priorities of the extension. Lower runs first."""

    CRITICAL = -20
    HIGH = -10
    NORMAL = 0
    LOW = 10


PriorityLike = Union[int, str]


def _check_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


def _check_text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _check_sequence(what: str, value: Any, of: str) -> Iterable[Any]:
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of {of}, not {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class PushOptions:
    """Options of one push; every field left at ``None`` takes the extension's default.

    Attributes:
        priority: an int (lower runs first) or a name the extension accepts
            (``"critical"``, ``"high"``, ``"normal"``, ``"low"``, case-insensitive,
            or an integer in text); :class:`Priority` members work too.
        delay: run no earlier than this from now (``timedelta`` or seconds).
        run_at: run no earlier than this moment (a timezone-aware ``datetime``).
        serial_group: jobs sharing a group run one at a time, in order.
        max_attempts: tries in all, the first one included (default 3).
        timeout: the lease a worker gets per attempt (default 5 minutes).
        backoff_base: first retry delay, doubled per attempt (default 10 s).
        backoff_max: cap of the exponential backoff (default 1 hour).
        retry_delays: explicit retry delays instead of the backoff; the last
            one repeats.
        dedupe_key: while a live job with this key exists in the queue, a push
            returns that job's id and adds nothing.
        depends_on: ids of jobs this one waits for: it is ``blocked`` (never
            claimed) until every one of them has completed. A dependency that
            ends failed, expired or cancelled cancels this job too, unless
            ``run_anyway``. An unknown id is the extension's error (22023).
        run_anyway: with ``depends_on``, run once the dependencies are final
            whatever their status, instead of being cancelled by a dead one.
        tags: labels to find the job by (``queue_jobs(..., tag => ...)`` and
            friends); at most 20, each 1 to 64 bytes, checked by the extension
            (22023), which stores them sorted and without duplicates.
        batch: the id of an open batch (:func:`batch_open`) the job joins; a
            closed or unknown batch is the extension's error (22023).
    """

    priority: Optional[PriorityLike] = None
    delay: Optional[Delay] = None
    run_at: Optional[dt.datetime] = None
    serial_group: Optional[str] = None
    max_attempts: Optional[int] = None
    timeout: Optional[Delay] = None
    backoff_base: Optional[Delay] = None
    backoff_max: Optional[Delay] = None
    retry_delays: Optional[Sequence[Delay]] = None
    dedupe_key: Optional[str] = None
    depends_on: Optional[Sequence[int]] = None
    run_anyway: Optional[bool] = None
    tags: Optional[Sequence[str]] = None
    batch: Optional[int] = None

    def __post_init__(self) -> None:
        """Check every field's type and normalise numbers of seconds to timedeltas."""
        def put(field: str, value: Any) -> None:
            object.__setattr__(self, field, value)

        if self.priority is not None:
            if isinstance(self.priority, str):
                _check_text("priority", self.priority)
            else:
                put("priority", _check_int("priority", self.priority))
        for field in ("delay", "timeout", "backoff_base", "backoff_max"):
            value = getattr(self, field)
            if value is not None:
                put(field, as_timedelta(value, field))
        if self.run_at is not None:
            if not isinstance(self.run_at, dt.datetime):
                raise TypeError(f"run_at must be a datetime, not {type(self.run_at).__name__}")
            if self.run_at.tzinfo is None or self.run_at.utcoffset() is None:
                raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
        if self.serial_group is not None:
            _check_text("serial_group", self.serial_group)
        if self.max_attempts is not None:
            put("max_attempts", _check_int("max_attempts", self.max_attempts))
        if self.retry_delays is not None:
            if isinstance(self.retry_delays, (str, bytes)) or not isinstance(self.retry_delays, Iterable):
                raise TypeError("retry_delays must be a sequence of timedeltas or seconds")
            delays = tuple(as_timedelta(d, "retry_delays entry") for d in self.retry_delays)
            put("retry_delays", delays)
        if self.dedupe_key is not None:
            _check_text("dedupe_key", self.dedupe_key)
        if self.depends_on is not None:
            put("depends_on", tuple(_check_int("depends_on entry", i)
                                    for i in _check_sequence("depends_on", self.depends_on, "job ids")))
        if self.run_anyway is not None and not isinstance(self.run_anyway, bool):
            raise TypeError(f"run_anyway must be a bool, not {type(self.run_anyway).__name__}")
        if self.tags is not None:
            tags = tuple(_check_sequence("tags", self.tags, "strs"))
            for tag in tags:
                if not isinstance(tag, str):
                    raise TypeError(f"tags entry must be a str, not {type(tag).__name__}")
            put("tags", tags)
        if self.batch is not None:
            put("batch", _check_int("batch", self.batch))

    def replace(self, **changes: Any) -> "PushOptions":
        """A copy with ``changes`` applied (checked like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)


_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(PushOptions))

# The only fragments statements are built from: fixed text, never user input.
_FRAGMENTS = {
    "priority:int": sql.SQL("priority => %s::int"),
    "priority:text": sql.SQL("priority => %s::text"),
    "delay": sql.SQL("delay => %s::interval"),
    "run_at": sql.SQL("run_at => %s::timestamptz"),
    "serial_group": sql.SQL("serial_group => %s::text"),
    "max_attempts": sql.SQL("max_attempts => %s::int"),
    "timeout": sql.SQL("timeout => %s::interval"),
    "backoff_base": sql.SQL("backoff_base => %s::interval"),
    "backoff_max": sql.SQL("backoff_max => %s::interval"),
    "retry_delays": sql.SQL("retry_delays => %s::interval[]"),
    "dedupe_key": sql.SQL("dedupe_key => %s::text"),
    "depends_on": sql.SQL("depends_on => %s::bigint[]"),
    "run_anyway": sql.SQL("run_anyway => %s::boolean"),
    "tags": sql.SQL("tags => %s::text[]"),
    "batch": sql.SQL("batch => %s::bigint"),
}


def _merge(options: Optional[PushOptions], given: Dict[str, Any]) -> PushOptions:
    changes = {k: v for k, v in given.items() if v is not None}
    base = options if options is not None else PushOptions()
    if not isinstance(base, PushOptions):
        raise TypeError(f"options must be a PushOptions, not {type(base).__name__}")
    return base.replace(**changes) if changes else base


def _option_args(opts: PushOptions) -> Tuple[List[sql.Composable], List[Any]]:
    parts: List[sql.Composable] = []
    params: List[Any] = []
    for field in _OPTION_FIELDS:
        value = getattr(opts, field)
        if value is None:
            continue
        key = field
        if field == "priority":
            key = "priority:text" if isinstance(value, str) else "priority:int"
        if field in ("retry_delays", "depends_on", "tags"):
            value = list(value)
        parts.append(_FRAGMENTS[key])
        params.append(value)
    return parts, params


def _push_statement(queue: str, payload: Any, opts: PushOptions) -> Tuple[sql.Composed, List[Any]]:
    parts, params = _option_args(opts)
    args = [sql.SQL("queue => %s::text"), sql.SQL("payload => %s::jsonb"), *parts]
    query = sql.SQL("SELECT queue_push({})").format(sql.SQL(", ").join(args))
    return query, [check_queue_name(queue), Jsonb({} if payload is None else payload), *params]


def _batch_statement(queue: str, payloads: Sequence[Any], opts: PushOptions) -> Tuple[sql.Composed, List[Any]]:
    parts, params = _option_args(opts)
    # The payloads go as ONE jsonb array, split into the jsonb[] in the server
    # (in order): one dumps call for the batch instead of a Jsonb per payload,
    # each escaped again as an element of an array literal (9 us a payload of
    # the client's CPU against 1).
    args = [sql.SQL("queue => %s::text"),
            sql.SQL("payloads => ARRAY(SELECT p.doc FROM jsonb_array_elements(%s::jsonb)"
                    " WITH ORDINALITY AS p(doc, n) ORDER BY p.n)"),
            *parts]
    query = sql.SQL(
        "SELECT t.id FROM queue_push_batch({}) WITH ORDINALITY AS t(id, n) ORDER BY t.n"
    ).format(sql.SQL(", ").join(args))
    docs = Jsonb([{} if p is None else p for p in payloads])
    return query, [check_queue_name(queue), docs, *params]


def _check_payloads(payloads: Any) -> List[Any]:
    if isinstance(payloads, (str, bytes, dict)) or not isinstance(payloads, Iterable):
        raise TypeError("payloads must be a sequence of JSON-serialisable values")
    return list(payloads)


def push(
    conn: psycopg.Connection,
    queue: str,
    payload: Any = None,
    *,
    options: Optional[PushOptions] = None,
    priority: Optional[PriorityLike] = None,
    delay: Optional[Delay] = None,
    run_at: Optional[dt.datetime] = None,
    serial_group: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[Delay] = None,
    backoff_base: Optional[Delay] = None,
    backoff_max: Optional[Delay] = None,
    retry_delays: Optional[Sequence[Delay]] = None,
    dedupe_key: Optional[str] = None,
    depends_on: Optional[Sequence[int]] = None,
    run_anyway: Optional[bool] = None,
    tags: Optional[Sequence[str]] = None,
    batch: Optional[int] = None,
) -> int:
    """Push one job with ``queue_push`` on ``conn`` and return its id.

    ``payload`` is any JSON-serialisable value (``None`` means ``{}``). The
    keyword options are those of :class:`PushOptions`; given both, keywords
    override ``options``. The push is part of ``conn``'s current transaction:
    commit it (or use an autocommit connection) for the job to exist.

    With ``dedupe_key``, the id of an existing live duplicate may be returned.
    With ``depends_on`` the job is ``blocked`` until its dependencies have
    completed (``run_anyway``: until they are final); ``tags`` label it;
    ``batch`` adds it to an open batch (:func:`batch_open`).
    Bad arguments raise :class:`TypeError` / :class:`ValueError` before any
    query where the client can tell (types, a naive ``run_at``, a negative
    delay), else the extension's ``psycopg`` error (SQLSTATE 22023,
    :class:`psycopg.errors.InvalidParameterValue`: a bad tag, an unknown
    dependency, a batch that is not open, ...).
    """
    opts = _merge(options, dict(priority=priority, delay=delay, run_at=run_at, serial_group=serial_group,
                                max_attempts=max_attempts, timeout=timeout, backoff_base=backoff_base,
                                backoff_max=backoff_max, retry_delays=retry_delays, dedupe_key=dedupe_key,
                                depends_on=depends_on, run_anyway=run_anyway, tags=tags, batch=batch))
    query, params = _push_statement(queue, payload, opts)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def push_batch(
    conn: psycopg.Connection,
    queue: str,
    payloads: Sequence[Any],
    *,
    options: Optional[PushOptions] = None,
    priority: Optional[PriorityLike] = None,
    delay: Optional[Delay] = None,
    run_at: Optional[dt.datetime] = None,
    serial_group: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[Delay] = None,
    backoff_base: Optional[Delay] = None,
    backoff_max: Optional[Delay] = None,
    retry_delays: Optional[Sequence[Delay]] = None,
    dedupe_key: Optional[str] = None,
    depends_on: Optional[Sequence[int]] = None,
    run_anyway: Optional[bool] = None,
    tags: Optional[Sequence[str]] = None,
    batch: Optional[int] = None,
) -> List[int]:
    """Push many payloads with the same options in one ``queue_push_batch`` statement.

    Returns the ids in payload order (an empty list for no payloads, without
    a query). With ``depends_on`` every payload waits for the same jobs (a
    fan-out); ``tags`` and ``batch`` apply to each. Otherwise the same as
    :func:`push`.
    """
    items = _check_payloads(payloads)
    opts = _merge(options, dict(priority=priority, delay=delay, run_at=run_at, serial_group=serial_group,
                                max_attempts=max_attempts, timeout=timeout, backoff_base=backoff_base,
                                backoff_max=backoff_max, retry_delays=retry_delays, dedupe_key=dedupe_key,
                                depends_on=depends_on, run_anyway=run_anyway, tags=tags, batch=batch))
    check_queue_name(queue)
    if not items:
        return []
    query, params = _batch_statement(queue, items, opts)
    return [int(r[0]) for r in conn.execute(query, params).fetchall()]


async def apush(
    conn: psycopg.AsyncConnection,
    queue: str,
    payload: Any = None,
    *,
    options: Optional[PushOptions] = None,
    priority: Optional[PriorityLike] = None,
    delay: Optional[Delay] = None,
    run_at: Optional[dt.datetime] = None,
    serial_group: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[Delay] = None,
    backoff_base: Optional[Delay] = None,
    backoff_max: Optional[Delay] = None,
    retry_delays: Optional[Sequence[Delay]] = None,
    dedupe_key: Optional[str] = None,
    depends_on: Optional[Sequence[int]] = None,
    run_anyway: Optional[bool] = None,
    tags: Optional[Sequence[str]] = None,
    batch: Optional[int] = None,
) -> int:
    """:func:`push` on a :class:`psycopg.AsyncConnection`."""
    opts = _merge(options, dict(priority=priority, delay=delay, run_at=run_at, serial_group=serial_group,
                                max_attempts=max_attempts, timeout=timeout, backoff_base=backoff_base,
                                backoff_max=backoff_max, retry_delays=retry_delays, dedupe_key=dedupe_key,
                                depends_on=depends_on, run_anyway=run_anyway, tags=tags, batch=batch))
    query, params = _push_statement(queue, payload, opts)
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def apush_batch(
    conn: psycopg.AsyncConnection,
    queue: str,
    payloads: Sequence[Any],
    *,
    options: Optional[PushOptions] = None,
    priority: Optional[PriorityLike] = None,
    delay: Optional[Delay] = None,
    run_at: Optional[dt.datetime] = None,
    serial_group: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[Delay] = None,
    backoff_base: Optional[Delay] = None,
    backoff_max: Optional[Delay] = None,
    retry_delays: Optional[Sequence[Delay]] = None,
    dedupe_key: Optional[str] = None,
    depends_on: Optional[Sequence[int]] = None,
    run_anyway: Optional[bool] = None,
    tags: Optional[Sequence[str]] = None,
    batch: Optional[int] = None,
) -> List[int]:
    """:func:`push_batch` on a :class:`psycopg.AsyncConnection`."""
    items = _check_payloads(payloads)
    opts = _merge(options, dict(priority=priority, delay=delay, run_at=run_at, serial_group=serial_group,
                                max_attempts=max_attempts, timeout=timeout, backoff_base=backoff_base,
                                backoff_max=backoff_max, retry_delays=retry_delays, dedupe_key=dedupe_key,
                                depends_on=depends_on, run_anyway=run_anyway, tags=tags, batch=batch))
    check_queue_name(queue)
    if not items:
        return []
    query, params = _batch_statement(queue, items, opts)
    cur = await conn.execute(query, params)
    return [int(r[0]) for r in await cur.fetchall()]
