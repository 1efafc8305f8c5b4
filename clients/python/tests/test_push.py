"""push / push_batch: every option reaches queue_push, in the caller's transaction."""

from __future__ import annotations

import asyncio
import datetime as dt

import psycopg
import pytest

import pgqueue
from conftest import DSN, job_info


def test_push_defaults(conn, queue_name):
    job_id = pgqueue.push(conn, queue_name, {"to": "a@example.com"})
    info = job_info(conn, job_id)
    assert info["queue"] == queue_name
    assert info["payload"] == {"to": "a@example.com"}
    assert info["status"] == "pending"
    assert info["priority"] == 0
    assert info["max_attempts"] == 3


def test_push_every_option(conn, queue_name):
    run_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    job_id = pgqueue.push(
        conn, queue_name, {"n": 1},
        priority="high", run_at=run_at, serial_group="customer-42", max_attempts=7,
        timeout=dt.timedelta(seconds=90), backoff_base=5, backoff_max=dt.timedelta(minutes=20),
        retry_delays=[dt.timedelta(minutes=1), 300], dedupe_key="report-7",
    )
    info = job_info(conn, job_id)
    assert info["priority"] == -10
    assert info["status"] == "scheduled"
    assert info["serial_group"] == "customer-42"
    assert info["max_attempts"] == 7
    assert info["dedupe_key"] == "report-7"
    got = conn.execute(
        "SELECT timeout, backoff_base, backoff_max, retry_delays, run_at FROM queue.all_jobs WHERE id = %s",
        (job_id,)).fetchone()
    assert got[0] == dt.timedelta(seconds=90)
    assert got[1] == dt.timedelta(seconds=5)
    assert got[2] == dt.timedelta(minutes=20)
    assert got[3] == [dt.timedelta(minutes=1), dt.timedelta(minutes=5)]
    assert abs((got[4] - run_at).total_seconds()) < 0.001
    # The same dedupe key returns the live job's id and adds nothing.
    assert pgqueue.push(conn, queue_name, {"n": 2}, dedupe_key="report-7") == job_id


@pytest.mark.parametrize("given, number", [
    ("critical", -20), ("HIGH", -10), ("normal", 0), ("low", 10), ("-3", -3),
    (pgqueue.Priority.LOW, 10), (42, 42), (-5, -5),
])
def test_priorities(conn, queue_name, given, number):
    job_id = pgqueue.push(conn, queue_name, options=pgqueue.PushOptions(priority=given))
    assert job_info(conn, job_id)["priority"] == number


def test_unknown_priority_is_the_extensions_error(conn, queue_name):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="urgent"):
        pgqueue.push(conn, queue_name, {}, priority="urgent")
    assert conn.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 0


def test_delay_makes_it_scheduled(conn, queue_name):
    job_id = pgqueue.push(conn, queue_name, {}, delay=dt.timedelta(minutes=10))
    info = job_info(conn, job_id)
    assert info["status"] == "scheduled"
    wait = conn.execute("SELECT run_at - created_at FROM queue.all_jobs WHERE id = %s", (job_id,)).fetchone()[0]
    assert dt.timedelta(minutes=9, seconds=59) < wait < dt.timedelta(minutes=10, seconds=1)


def test_options_object_and_keywords_merge(conn, queue_name):
    base = pgqueue.PushOptions(priority="low", max_attempts=9)
    job_id = pgqueue.push(conn, queue_name, {}, options=base, max_attempts=2)
    info = job_info(conn, job_id)
    assert (info["priority"], info["max_attempts"]) == (10, 2)


def test_push_batch_in_order(conn, queue_name):
    payloads = [{"n": i} for i in range(25)]
    ids = pgqueue.push_batch(conn, queue_name, payloads, priority="low", max_attempts=4)
    assert len(ids) == 25 and len(set(ids)) == 25
    for i, job_id in enumerate(ids):
        info = job_info(conn, job_id)
        assert info["payload"] == {"n": i}
        assert (info["priority"], info["max_attempts"]) == (10, 4)
    assert pgqueue.push_batch(conn, queue_name, []) == []


def test_push_batch_keeps_every_payload_as_given_and_in_order(conn, queue_name):
    """The payloads travel as one JSON array split in the server: any JSON
    value (None is {}), escapes and non-ASCII text arrive unchanged, each
    job in its place; the connection's own json dumps is used."""
    import decimal

    from psycopg.types.json import set_json_dumps

    odd = [None, [], [1, "two", None], "a \"quoted\" \\ back\\slash", 3.5, 0, True, {"é": "ß", "k": {"n": [None]}},
           {"big": decimal.Decimal("1.25")}]
    many = odd + [{"n": n} for n in range(1500)]

    def dumps(obj):  # Decimal is no JSON type: the connection's dumps says how
        import json
        return json.dumps(obj, default=lambda v: float(v) if isinstance(v, decimal.Decimal) else str(v))

    set_json_dumps(dumps, conn)
    ids = pgqueue.push_batch(conn, queue_name, many)
    assert len(ids) == len(many) and ids == sorted(ids)
    stored = dict(conn.execute("SELECT id, payload FROM queue.all_jobs WHERE queue = %s", (queue_name,)).fetchall())
    expected = [{} if p is None else p for p in odd[:-1]] + [{"big": 1.25}] + [{"n": n} for n in range(1500)]
    assert [stored[i] for i in ids] == expected


def test_push_in_rolled_back_transaction_creates_no_job(queue_name):
    with psycopg.connect(DSN) as tx_conn:  # not autocommit: one transaction
        job_id = pgqueue.push(tx_conn, queue_name, {"x": 1})
        batch = pgqueue.push_batch(tx_conn, queue_name, [{"y": 1}, {"y": 2}])
        # Inside the transaction the jobs exist ...
        assert tx_conn.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 3
        tx_conn.rollback()
    with psycopg.connect(DSN, autocommit=True) as check:
        # ... after the rollback none does.
        assert check.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 0
        for i in [job_id, *batch]:
            assert job_info(check, i) is None


def test_push_visible_only_after_commit(queue_name):
    with psycopg.connect(DSN) as tx_conn, psycopg.connect(DSN, autocommit=True) as other:
        job_id = pgqueue.push(tx_conn, queue_name, {"x": 1})
        assert job_info(other, job_id) is None
        tx_conn.commit()
        assert job_info(other, job_id)["status"] == "pending"


def test_values_are_parameters_never_sql(conn, queue_name):
    nasty = "x'); SELECT pg_sleep(10); --\"$$"
    job_id = pgqueue.push(conn, queue_name, {"s": nasty}, serial_group=nasty, dedupe_key=nasty)
    info = job_info(conn, job_id)
    assert info["payload"] == {"s": nasty}
    assert info["serial_group"] == nasty and info["dedupe_key"] == nasty


@pytest.mark.parametrize("kwargs, error", [
    (dict(priority=True), TypeError),
    (dict(priority=1.5), TypeError),
    (dict(priority=""), ValueError),
    (dict(delay="10 minutes"), TypeError),
    (dict(delay=-1), ValueError),
    (dict(run_at=dt.datetime(2030, 1, 1)), ValueError),  # naive: ambiguous
    (dict(run_at="2030-01-01"), TypeError),
    (dict(max_attempts="3"), TypeError),
    (dict(retry_delays="1 minute"), TypeError),
    (dict(serial_group=""), ValueError),
    (dict(dedupe_key=7), TypeError),
])
def test_bad_options_rejected_before_any_query(conn, queue_name, kwargs, error):
    with pytest.raises(error):
        pgqueue.push(conn, queue_name, {}, **kwargs)
    assert conn.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 0


@pytest.mark.parametrize("name", ["", "has space", "x" * 58, "semi;colon", "ünï"])
def test_bad_queue_names(conn, name):
    with pytest.raises(ValueError):
        pgqueue.push(conn, name, {})


def test_push_batch_rejects_a_bare_string(conn, queue_name):
    with pytest.raises(TypeError):
        pgqueue.push_batch(conn, queue_name, "abc")


def test_apush_and_apush_batch(queue_name):
    async def main():
        async with await psycopg.AsyncConnection.connect(DSN) as aconn:
            one = await pgqueue.apush(aconn, queue_name, {"a": 1}, priority="critical")
            many = await pgqueue.apush_batch(aconn, queue_name, [{"b": 1}, {"b": 2}], delay=60)
            await aconn.commit()
            return one, many

    one, many = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as check:
        assert job_info(check, one)["priority"] == -20
        assert [job_info(check, i)["payload"] for i in many] == [{"b": 1}, {"b": 2}]
        assert {job_info(check, i)["status"] for i in many} == {"scheduled"}
