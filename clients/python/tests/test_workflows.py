"""Workflows through the client: depends_on / run_anyway / tags / batch on push,
the dependencies helper in a real Worker, and batches with their callbacks."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgqueue
from conftest import DSN, job_info, job_status, wait_until


def other_queue() -> str:
    return "py-" + uuid.uuid4().hex[:12]


def jobs_in(conn, queue):
    """Every job of a queue, live or final, blocked included (queue_size is not)."""
    return conn.execute("SELECT id, status, payload FROM queue.all_jobs WHERE queue = %s ORDER BY id",
                        (queue,)).fetchall()


def claim(conn, queue, n=10):
    """queue_pop: the ids and attempts claimed now."""
    return conn.execute("SELECT id, attempt FROM queue_pop(%s, 'test', %s)", (queue, n)).fetchall()


# -- depends_on / run_anyway --------------------------------------------------

def test_depends_on_blocks_until_the_dependency_is_acked(conn, queue_name):
    a = pgqueue.push(conn, queue_name, {"step": "a"})
    b = pgqueue.push(conn, queue_name, {"step": "b"}, depends_on=[a])
    assert job_status(conn, b) == "blocked"
    assert job_info(conn, b)["depends_on"] == [a]
    # Only the dependency is claimable.
    claimed = claim(conn, queue_name)
    assert [r[0] for r in claimed] == [a]
    assert claim(conn, queue_name) == []
    deps = pgqueue.dependencies(conn, b)
    assert [(d.dependency, d.status, d.resolved) for d in deps] == [(a, "processing", False)]
    assert conn.execute("SELECT queue_ack(%s, %s, %s)",
                        (a, Jsonb({"rows": 3}), claimed[0][1])).fetchone()[0]
    assert job_status(conn, b) == "pending"
    assert [r[0] for r in claim(conn, queue_name)] == [b]
    (dep,) = pgqueue.dependencies(conn, b)
    assert dep == pgqueue.Dependency(dependency=a, queue=queue_name, status="completed", result={"rows": 3},
                                     finished_at=dep.finished_at, resolved=True, run_anyway=False)
    assert isinstance(dep.finished_at, dt.datetime) and dep.finished_at.tzinfo is not None


def test_a_job_without_dependencies_has_none(conn, queue_name):
    job_id = pgqueue.push(conn, queue_name, {}, depends_on=[])
    assert job_status(conn, job_id) == "pending"
    assert pgqueue.dependencies(conn, job_id) == []


def test_diamond_in_a_worker_reads_the_results_of_its_dependencies(conn, queue_name, start_worker):
    order = []
    seen_deps = {}
    lock = threading.Lock()

    def handler(job):
        with lock:
            order.append(job.payload["step"])
        if job.payload["step"] == "a":
            return {"value": 1}
        deps = job.dependencies()  # on the worker's own pool
        seen_deps[job.payload["step"]] = deps
        total = sum(d.result["value"] for d in deps)
        return {"value": total + (10 if job.payload["step"] == "c" else 0)}

    # One transaction for the whole workflow: nothing runs before the commit.
    with psycopg.connect(DSN) as tx:
        a = pgqueue.push(tx, queue_name, {"step": "a"})
        b, c = (pgqueue.push(tx, queue_name, {"step": s}, depends_on=[a]) for s in ("b", "c"))
        d = pgqueue.push(tx, queue_name, {"step": "d"}, depends_on=(b, c))
    assert [job_status(conn, i) for i in (a, b, c, d)] == ["pending", "blocked", "blocked", "blocked"]
    start_worker({queue_name: handler}, concurrency=4)
    wait_until(lambda: job_status(conn, d) == "completed", what="the diamond's last job")
    assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]
    assert [x.dependency for x in seen_deps["d"]] == [b, c]
    assert {x.status for x in seen_deps["d"]} == {"completed"}
    assert all(x.resolved and not x.run_anyway for x in seen_deps["d"])
    # b = a = 1, c = a + 10 = 11, d = b + c
    assert job_info(conn, b)["result"] == {"value": 1}
    assert job_info(conn, d)["result"] == {"value": 12}


def test_a_dead_dependency_cancels_unless_run_anyway(conn, queue_name):
    a = pgqueue.push(conn, queue_name, {"step": "a"})
    strict = pgqueue.push(conn, queue_name, {"step": "strict"}, depends_on=[a])
    anyway = pgqueue.push_batch(conn, queue_name, [{"n": 1}, {"n": 2}], depends_on=[a], run_anyway=True)
    assert {job_status(conn, i) for i in [strict, *anyway]} == {"blocked"}
    assert conn.execute("SELECT queue_cancel(%s)", (a,)).fetchone()[0]
    assert job_status(conn, strict) == "cancelled"
    assert f"dependency {a}" in job_info(conn, strict)["last_error"]
    assert [job_status(conn, i) for i in anyway] == ["pending", "pending"]
    (dep,) = pgqueue.dependencies(conn, anyway[0])
    assert (dep.dependency, dep.status, dep.resolved, dep.run_anyway) == (a, "cancelled", True, True)
    # run_anyway=False given as a keyword wins over an options object's True.
    keep = pgqueue.PushOptions(run_anyway=True)
    b = pgqueue.push(conn, queue_name, {}, depends_on=[a], options=keep, run_anyway=False)
    assert job_status(conn, b) == "cancelled"
    c = pgqueue.push(conn, queue_name, {}, depends_on=[a], options=keep)
    assert job_status(conn, c) == "pending"


def test_push_batch_fans_out_behind_a_dependency(conn, queue_name):
    a = pgqueue.push(conn, queue_name, {})
    ids = pgqueue.push_batch(conn, queue_name, [{"n": i} for i in range(3)], depends_on=[a], priority="high")
    assert {job_status(conn, i) for i in ids} == {"blocked"}
    assert [job_info(conn, i)["depends_on"] for i in ids] == [[a]] * 3
    (row,) = claim(conn, queue_name)
    conn.execute("SELECT queue_ack(%s, NULL, %s)", row)
    assert sorted(r[0] for r in claim(conn, queue_name)) == ids


def test_an_unknown_dependency_is_the_servers_error(conn, queue_name):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown job"):
        pgqueue.push(conn, queue_name, {}, depends_on=[2 ** 62])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown job"):
        pgqueue.push_batch(conn, queue_name, [{}, {}], depends_on=[2 ** 62])
    assert jobs_in(conn, queue_name) == []


# -- tags -------------------------------------------------------------------

def test_tags_are_stored_sorted_and_filterable(conn, queue_name):
    one = pgqueue.push(conn, queue_name, {}, tags=["customer:42", "billing", "customer:42"])
    many = pgqueue.push_batch(conn, queue_name, [{}, {}], tags=("bulk",))
    untagged = pgqueue.push(conn, queue_name, {}, tags=[])
    tags = dict(conn.execute("SELECT id, tags FROM queue.jobs WHERE queue = %s", (queue_name,)).fetchall())
    assert tags == {one: ["billing", "customer:42"], many[0]: ["bulk"], many[1]: ["bulk"], untagged: None}
    listed = conn.execute("SELECT id, tags FROM queue_jobs(%s, tag => 'billing')", (queue_name,)).fetchall()
    assert listed == [(one, ["billing", "customer:42"])]
    assert sorted(r[0] for r in conn.execute("SELECT id FROM queue_jobs(%s, tag => 'bulk')",
                                             (queue_name,)).fetchall()) == many


def test_values_of_tags_are_parameters(conn, queue_name):
    nasty = "x'}); SELECT pg_sleep(10); --\"{,}"
    job_id = pgqueue.push(conn, queue_name, {}, tags=[nasty, "a,b", "{c}"])
    assert conn.execute("SELECT tags FROM queue.jobs WHERE id = %s", (job_id,)).fetchone()[0] == \
        sorted([nasty, "a,b", "{c}"])


@pytest.mark.parametrize("tags, match", [
    (["x" * 65], "1 to 64 bytes"),
    ([""], "1 to 64 bytes"),
    ([f"t{i}" for i in range(21)], "at most 20"),
])
def test_a_bad_tag_is_the_servers_error(conn, queue_name, tags, match):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=match):
        pgqueue.push(conn, queue_name, {}, tags=tags)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=match):
        pgqueue.push_batch(conn, queue_name, [{}], tags=tags)
    assert jobs_in(conn, queue_name) == []


@pytest.mark.parametrize("kwargs", [
    dict(depends_on=7), dict(depends_on="12"), dict(depends_on=[1.0]), dict(depends_on=[True]),
    dict(depends_on=["1"]), dict(run_anyway=1), dict(run_anyway="yes"), dict(tags="billing"),
    dict(tags=[1]), dict(tags=[None]), dict(batch="1"), dict(batch=True), dict(batch=1.0),
])
def test_bad_workflow_option_types_are_rejected_before_any_query(conn, queue_name, kwargs):
    with pytest.raises(TypeError):
        pgqueue.push(conn, queue_name, {}, **kwargs)
    with pytest.raises(TypeError):
        pgqueue.push_batch(conn, queue_name, [{}], **kwargs)
    assert jobs_in(conn, queue_name) == []


def test_helpers_check_their_argument_types(conn):
    for call in (lambda: pgqueue.dependencies(conn, "1"), lambda: pgqueue.batch_close(conn, None),
                 lambda: pgqueue.batch_cancel(conn, 1.5), lambda: pgqueue.batch_status(conn, True),
                 lambda: pgqueue.batch_open(conn, on_complete='{"queue": "x"}'),
                 lambda: pgqueue.batch_open(conn, on_failure=["x"])):
        with pytest.raises(TypeError):
            call()


# -- batches ----------------------------------------------------------------

def test_a_batch_drained_by_a_worker_fires_on_complete_once(conn, queue_name, start_worker):
    reports = other_queue()
    callbacks = []

    b = pgqueue.batch_open(conn, on_complete={"queue": reports, "payload": {"report": 7}, "priority": "high"})
    assert isinstance(b, int)
    with psycopg.connect(DSN) as tx:  # pushes into the batch, in a transaction of their own
        first = pgqueue.push(tx, queue_name, {"page": 1}, batch=b)
        rest = pgqueue.push_batch(tx, queue_name, [{"page": 2}, {"page": 3}], batch=b)
    ids = [first, *rest]
    assert {job_info(conn, i)["batch_id"] for i in ids} == {b}
    status = pgqueue.batch_status(conn, b)
    assert (status.id, status.state, status.total, status.pending) == (b, "open", 3, 3)
    assert status.on_complete == {"queue": reports, "payload": {"report": 7}, "priority": -10}
    assert status.on_failure is None and status.closed_at is None
    assert isinstance(status.created_at, dt.datetime)

    closed = pgqueue.batch_close(conn, b)
    assert (closed.state, closed.total, closed.pending, closed.completed, closed.progress) == ("closed", 3, 3, 0, 0)
    assert closed.closed_at is not None and closed.complete_job is None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"batch {b} is closed"):
        pgqueue.push(conn, queue_name, {"late": True}, batch=b)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pgqueue.batch_close(conn, b)

    def page(job):
        time.sleep(0.05)
        return {"page": job.payload["page"]}

    start_worker({queue_name: page, reports: lambda job: callbacks.append(job.payload)}, concurrency=3)
    done = wait_until(lambda: (s := pgqueue.batch_status(conn, b)).state == "done" and s, what="batch done")
    wait_until(lambda: callbacks, what="the on_complete job handled")
    assert {job_status(conn, i) for i in ids} == {"completed"}
    summary = {"id": b, "total": 3, "completed": 3, "failed": 0, "cancelled": 0}
    (cb,) = jobs_in(conn, reports)
    assert cb[0] == done.complete_job and done.failure_job is None
    assert cb[2] == {"report": 7, "batch": summary}
    assert job_info(conn, cb[0])["priority"] == -10
    assert (done.total, done.pending, done.completed, done.progress) == (3, 0, 3, 1.0)
    assert done.finished_at is not None
    time.sleep(0.5)  # nothing else fires later
    assert len(jobs_in(conn, reports)) == 1
    assert callbacks == [{"report": 7, "batch": summary}]


def test_a_batch_with_a_failure_fires_both_callbacks(conn, queue_name, start_worker):
    done_q, alert_q = other_queue(), other_queue()
    b = pgqueue.batch_open(conn, on_complete={"queue": done_q}, on_failure={"queue": alert_q, "payload": {"a": 1}})
    pgqueue.push_batch(conn, queue_name, [{"ok": True}, {"ok": False}], batch=b)
    pgqueue.batch_close(conn, b)

    def handler(job):
        if not job.payload["ok"]:
            raise pgqueue.PermanentError("bad page")
        return None

    start_worker({queue_name: handler})
    done = wait_until(lambda: (s := pgqueue.batch_status(conn, b)).state == "done" and s, what="batch done")
    summary = {"id": b, "total": 2, "completed": 1, "failed": 1, "cancelled": 0}
    assert [r[2] for r in jobs_in(conn, done_q)] == [{"batch": summary}]
    assert [r[2] for r in jobs_in(conn, alert_q)] == [{"a": 1, "batch": summary}]
    assert (done.completed, done.failed) == (1, 1)
    assert done.failure_job == jobs_in(conn, alert_q)[0][0]


def test_batch_cancel_and_an_empty_batch(conn, queue_name):
    cb = other_queue()
    b = pgqueue.batch_open(conn, on_complete={"queue": cb})
    ids = pgqueue.push_batch(conn, queue_name, [{}, {}], batch=b)
    assert pgqueue.batch_cancel(conn, b) is True
    assert pgqueue.batch_cancel(conn, b) is False
    assert {job_status(conn, i) for i in ids} == {"cancelled"}
    assert pgqueue.batch_status(conn, b).state == "cancelled"
    assert jobs_in(conn, cb) == []
    # An empty batch fires at its close.
    empty = pgqueue.batch_open(conn, on_complete={"queue": cb})
    closed = pgqueue.batch_close(conn, empty)
    assert closed.state == "done" and closed.total == 0 and closed.progress is None
    assert [r[2] for r in jobs_in(conn, cb)] == [
        {"batch": {"id": empty, "total": 0, "completed": 0, "failed": 0, "cancelled": 0}}]
    assert pgqueue.batch_status(conn, 2 ** 62) is None
    assert pgqueue.batch_cancel(conn, 2 ** 62) is False
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown"):
        pgqueue.batch_close(conn, 2 ** 62)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown"):
        pgqueue.push(conn, queue_name, {}, batch=2 ** 62)


@pytest.mark.parametrize("spec", [
    {"payload": {}},                           # no queue
    {"queue": "has space"},                    # bad queue name
    {"queue": "q", "payload": [1]},            # payload not an object
    {"queue": "q", "delay": 10},               # unknown key
    {"queue": "q", "priority": "urgent"},      # unknown priority
])
def test_a_bad_callback_spec_is_the_servers_error(conn, spec):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pgqueue.batch_open(conn, on_complete=spec)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pgqueue.batch_open(conn, on_failure=spec)


def test_batch_helpers_run_in_the_callers_transaction(queue_name):
    with psycopg.connect(DSN) as tx:
        b = pgqueue.batch_open(tx, on_complete={"queue": queue_name})
        job_id = pgqueue.push(tx, queue_name, {}, batch=b)
        assert pgqueue.batch_status(tx, b).total == 1
        tx.rollback()
    with psycopg.connect(DSN, autocommit=True) as check:
        assert pgqueue.batch_status(check, b) is None
        assert job_info(check, job_id) is None


# -- asyncio ----------------------------------------------------------------

def test_async_push_options_helpers_and_worker(queue_name):
    reports = other_queue()
    handled = collections.defaultdict(list)

    async def handler(job: pgqueue.AsyncJob):
        deps = await job.dependencies()
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as c:
            assert await pgqueue.adependencies(c, job.id) == deps
        handled[job.queue].append((job.payload, deps))
        return {"n": job.payload.get("n", 0) + sum(d.result["n"] for d in deps)}

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as aconn:
            b = await pgqueue.abatch_open(aconn, on_complete={"queue": reports, "payload": {"x": 1}})
            a = await pgqueue.apush(aconn, queue_name, {"n": 1}, tags=["async"], batch=b)
            kids = await pgqueue.apush_batch(aconn, queue_name, [{"n": 10}, {"n": 20}], depends_on=[a],
                                             run_anyway=False, tags=["async", "kid"], batch=b)
            cur = await aconn.execute("SELECT id, status, tags FROM queue.jobs WHERE id = ANY(%s) ORDER BY id",
                                      ([a, *kids],))
            assert await cur.fetchall() == [(a, "pending", ["async"]), (kids[0], "blocked", ["async", "kid"]),
                                            (kids[1], "blocked", ["async", "kid"])]
            closed = await pgqueue.abatch_close(aconn, b)
            assert (closed.state, closed.total) == ("closed", 3)
            async with pgqueue.AsyncWorker(DSN, {queue_name: handler, reports: handler}, concurrency=4,
                                           poll_interval=0.5):
                deadline = time.monotonic() + 15
                while (s := await pgqueue.abatch_status(aconn, b)).state != "done" or not handled[reports]:
                    assert time.monotonic() < deadline, f"batch not done: {s}"
                    await asyncio.sleep(0.05)
            other = await pgqueue.abatch_open(aconn)
            assert await pgqueue.abatch_cancel(aconn, other) is True
            assert await pgqueue.abatch_cancel(aconn, other) is False
            return a, kids, b, s

    a, kids, b, status = asyncio.run(main())
    with psycopg.connect(DSN, autocommit=True) as check:
        assert [job_info(check, i)["result"] for i in kids] == [{"n": 11}, {"n": 21}]
    kid_deps = [deps for payload, deps in handled[queue_name] if payload["n"] != 1]
    assert len(kid_deps) == 2
    assert all([(d.dependency, d.status, d.result) for d in deps] == [(a, "completed", {"n": 1})]
               for deps in kid_deps)
    ((cb_payload, _),) = handled[reports]
    assert cb_payload == {"x": 1, "batch": {"id": b, "total": 3, "completed": 3, "failed": 0, "cancelled": 0}}
    assert status.complete_job is not None
