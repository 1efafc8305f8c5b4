"""The threaded Worker against a real cluster."""

from __future__ import annotations

import collections
import datetime as dt
import statistics
import threading
import time

import psycopg
import pytest

import pgqueue
from conftest import DSN, POISON_ERRORS, POISON_KINDS, Concurrency, job_info, job_status, poison, wait_until


def test_wakes_on_notify_quickly(conn, queue_name, start_worker, capsys):
    started = {}
    got = threading.Event()

    def handler(job):
        started[job.id] = time.monotonic()
        got.set()
        return None

    # Polling every 30 s: only the NOTIFY can wake the worker in time.
    w = start_worker({queue_name: handler}, poll_interval=30, heartbeat_interval=60)
    wait_until(lambda: w.listening, what="LISTEN connection up")
    latencies = []
    for _ in range(7):
        time.sleep(0.3)  # the worker has found nothing and sleeps
        got.clear()
        job_id = pgqueue.push(conn, queue_name, {})  # autocommit: committed on return
        pushed = time.monotonic()
        assert got.wait(5), "the idle worker was not woken"
        latencies.append((started[job_id] - pushed) * 1000)
        wait_until(lambda: job_status(conn, job_id) == "completed", what="ack")
    with capsys.disabled():
        print(f"\n[wake-up latency, threaded Worker] push commit -> handler start over {len(latencies)} jobs: "
              f"min {min(latencies):.1f} ms, median {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")
    assert statistics.median(latencies) < 500
    assert max(latencies) < 2000


def test_ack_stores_the_result(conn, queue_name, start_worker):
    start_worker({queue_name: lambda job: {"double": job.payload["n"] * 2, "attempt": job.attempt}})
    ids = pgqueue.push_batch(conn, queue_name, [{"n": i} for i in range(5)])
    for i, job_id in enumerate(ids):
        wait_until(lambda: job_status(conn, job_id) == "completed", what=f"job {job_id}")
        info = job_info(conn, job_id)
        assert info["result"] == {"double": i * 2, "attempt": 1}
        assert info["attempts"] == 1


def test_error_is_retried_and_recorded(conn, queue_name, start_worker):
    seen = []
    second_attempt_seen = threading.Event()

    def handler(job):
        seen.append(job.attempt)
        if job.attempt == 1:
            raise ValueError(f"boom on attempt {job.attempt}")
        second_attempt_seen.set()
        return {"ok": True}

    # The retry waits 1.5 s: long enough to see it recorded in between.
    job_id = pgqueue.push(conn, queue_name, {}, retry_delays=[1.5])
    start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "retrying", what="retrying after the error")
    info = job_info(conn, job_id)
    assert info["attempts"] == 1
    assert info["last_error"].startswith("ValueError: boom on attempt 1")
    assert "Traceback" in info["last_error"]
    assert second_attempt_seen.wait(10)
    wait_until(lambda: job_status(conn, job_id) == "completed", what="completed on retry")
    assert seen == [1, 2]
    assert job_info(conn, job_id)["attempts"] == 2


def test_exhausted_attempts_go_to_dead_letters(conn, queue_name, start_worker):
    def handler(job):
        raise RuntimeError(f"always fails ({job.attempt})")

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=3, retry_delays=[0])
    start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "failed", what="dead")
    dead = conn.execute("SELECT id, attempts, last_error FROM queue_dead(%s)", (queue_name,)).fetchall()
    assert [(d[0], d[1]) for d in dead] == [(job_id, 3)]
    assert dead[0][2].startswith("RuntimeError: always fails (3)")


def test_permanent_error_skips_retries(conn, queue_name, start_worker):
    calls = []

    def handler(job):
        calls.append(job.attempt)
        raise pgqueue.PermanentError("no such customer")

    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=5, retry_delays=[0])
    start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "failed", what="dead letter")
    dead = conn.execute("SELECT id, status, attempts, last_error FROM queue_dead(%s)", (queue_name,)).fetchall()
    assert dead == [(job_id, "failed", 1, "PermanentError: no such customer")]
    time.sleep(0.5)
    assert calls == [1]


def test_retry_in_sets_the_delay(conn, queue_name, start_worker):
    times = []

    class RateLimited(Exception):
        retry_in = dt.timedelta(seconds=1.2)

    def handler(job):
        times.append(time.monotonic())
        if job.attempt == 1:
            raise pgqueue.RetryIn(2.0, "busy, later")
        if job.attempt == 2:
            raise RateLimited("429")
        return "done"

    # The job's own backoff would be an hour: only retry_in explains the timing.
    job_id = pgqueue.push(conn, queue_name, {}, backoff_base=3600, backoff_max=3600, max_attempts=3)
    start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "retrying", what="retrying")
    assert job_info(conn, job_id)["last_error"] == "RetryIn: busy, later"
    wait_until(lambda: job_status(conn, job_id) == "completed", timeout=15, what="completed")
    assert len(times) == 3
    assert 1.9 <= times[1] - times[0] < 4
    assert 1.1 <= times[2] - times[1] < 3.5
    assert job_info(conn, job_id)["result"] == "done"


def test_long_job_keeps_its_lease(conn, queue_name, start_worker):
    attempts = []

    def handler(job):
        attempts.append(job.attempt)
        time.sleep(5)  # 2.5 times the timeout
        return {"slept": 5}

    job_id = pgqueue.push(conn, queue_name, {}, timeout=dt.timedelta(seconds=2), retry_delays=[0])
    w = start_worker({queue_name: handler})
    wait_until(lambda: job_status(conn, job_id) == "completed", timeout=15, what="completed")
    info = job_info(conn, job_id)
    assert info["attempts"] == 1
    assert info["result"] == {"slept": 5}
    assert attempts == [1]
    assert w.running_jobs == 0


def test_progress_is_recorded(conn, queue_name, start_worker):
    release = threading.Event()
    reported = []

    def handler(job):
        reported.append(job.progress(3, 10, "three of ten"))
        release.wait(10)
        return None

    job_id = pgqueue.push(conn, queue_name, {})
    start_worker({queue_name: handler})
    wait_until(lambda: reported, what="progress reported")
    assert reported == [True]
    progress = job_info(conn, job_id)["progress"]
    assert (progress["current"], progress["total"], progress["message"]) == (3, 10, "three of ten")
    assert float(progress["percent"]) == 30.0
    release.set()
    wait_until(lambda: job_status(conn, job_id) == "completed", what="completed")


def test_heartbeat_registers_the_worker(conn, queue_name, start_worker):
    w = start_worker({queue_name: lambda job: None, queue_name + "-b": lambda job: None},
                     concurrency=3, name="hb-" + queue_name)
    row = wait_until(lambda: conn.execute(
        "SELECT healthy, info FROM queue_workers() WHERE worker = %s", (w.name,)).fetchone(), what="heartbeat")
    healthy, info = row
    assert healthy
    assert info["pid"] > 0 and info["host"]
    assert info["version"] == pgqueue.__version__
    assert sorted(info["queues"]) == sorted([queue_name, queue_name + "-b"])
    assert info["concurrency"] == 3
    # One LISTEN connection for the whole worker, whatever its concurrency.
    wait_until(lambda: w.listening, what="listening")
    last = conn.execute("SELECT query FROM pg_stat_activity WHERE application_name = %s",
                        (f"pgqueue {w.name}"[:63],)).fetchall()
    assert len([q for (q,) in last if q.startswith("LISTEN")]) == 1


def test_concurrency_limit_never_exceeded(conn, queue_name, start_worker):
    gauge = Concurrency()

    def handler(job):
        with gauge:
            time.sleep(0.25)
        return None

    ids = pgqueue.push_batch(conn, queue_name, [{"n": i} for i in range(16)])
    start_worker({queue_name: handler}, concurrency=4)
    for job_id in ids:
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=20, what=f"job {job_id}")
    assert gauge.peak == 4  # reached, never exceeded


def test_serial_groups_keep_order_across_workers(conn, queue_name, start_worker):
    lock = threading.Lock()
    running = collections.Counter()
    order = collections.defaultdict(list)
    overlaps = []

    def handler(job):
        group = job.serial_group
        with lock:
            running[group] += 1
            if running[group] > 1:
                overlaps.append(group)
        time.sleep(0.02)
        with lock:
            order[group].append(job.payload["seq"])
            running[group] -= 1
        return None

    groups = [f"g{i}" for i in range(3)]
    pushed = collections.defaultdict(list)
    ids = []
    for seq in range(10):
        for g in groups:
            ids.append(pgqueue.push(conn, queue_name, {"seq": seq}, serial_group=f"{queue_name}-{g}"))
            pushed[f"{queue_name}-{g}"].append(seq)
    for _ in range(3):
        start_worker({queue_name: handler}, concurrency=4)
    for job_id in ids:
        wait_until(lambda: job_status(conn, job_id) == "completed", timeout=30, what=f"job {job_id}")
    assert overlaps == []
    assert dict(order) == dict(pushed)


def test_stale_ack_is_refused_not_raised(conn, queue_name, start_worker):
    """The lease of attempt 1 is taken away while its handler runs: its ack
    returns false (no exception), and attempt 2 completes the job."""
    events = []
    first_running = threading.Event()
    go_on = threading.Event()

    def handler(job):
        if job.attempt == 1:
            first_running.set()
            go_on.wait(10)
            return {"attempt": 1}
        return {"attempt": job.attempt}

    listener = pgqueue.CallbackListener(on_finished=events.append)
    job_id = pgqueue.push(conn, queue_name, {}, retry_delays=[0])
    w = start_worker({queue_name: handler}, concurrency=2, listeners=[listener], heartbeat_interval=60)
    assert first_running.wait(10)
    time.sleep(0.2)
    # Reaping the worker fails its running attempt; it is claimed again.
    assert conn.execute("SELECT queue_reap_workers('0 seconds')").fetchone()[0] >= 1
    wait_until(lambda: any(e.job.attempt == 2 for e in events), what="attempt 2 finished")
    go_on.set()
    wait_until(lambda: len(events) == 2, what="attempt 1 finished")
    by_attempt = {e.job.attempt: e.status for e in events}
    assert by_attempt == {1: None, 2: "completed"}
    info = job_info(conn, job_id)
    assert (info["status"], info["attempts"], info["result"]) == ("completed", 2, {"attempt": 2})
    assert w.running_jobs == 0


def test_unserialisable_result_fails_the_attempt(conn, queue_name, start_worker):
    job_id = pgqueue.push(conn, queue_name, {}, max_attempts=1)
    start_worker({queue_name: lambda job: {"when": object()}})
    wait_until(lambda: job_status(conn, job_id) == "failed", what="failed")
    assert "result could not be stored" in job_info(conn, job_id)["last_error"]


def test_worker_settings_are_checked():
    with pytest.raises(ValueError):
        pgqueue.Worker(DSN, {})
    with pytest.raises(ValueError):
        pgqueue.Worker(DSN, {"bad name": lambda j: None})
    with pytest.raises(ValueError):
        pgqueue.Worker(DSN, {"q": lambda j: None}, concurrency=0)
    with pytest.raises(TypeError):
        pgqueue.Worker(DSN, {"q": "not callable"})

    async def coro(job):
        return None

    with pytest.raises(TypeError, match="AsyncWorker"):
        pgqueue.Worker(DSN, {"q": coro})
    with pytest.raises(TypeError, match="async"):
        pgqueue.AsyncWorker(DSN, {"q": lambda j: None})


def test_a_worker_runs_once(queue_name):
    w = pgqueue.Worker(DSN, {queue_name: lambda j: None}, grace=0)
    w.start()
    with pytest.raises(pgqueue.WorkerStopped):
        w.start()
    w.stop()
    assert w.wait(10)


def test_payload_is_decoded_once_when_first_read_with_psycopgs_loads(conn, queue_name, start_worker):
    """A claim leaves the payload's JSON text undecoded: a handler that reads it
    gets it decoded by the jsonb loader psycopg would have used (here one set
    with ``set_json_loads``), once, the same object every time; one that never
    reads it costs no decoding."""
    import json

    from psycopg.types.json import set_json_loads

    decoded = []

    def loads(data):
        decoded.append(data)
        return {"decoded_by": "custom", **json.loads(data)}

    seen = {}
    unread_ids = []

    def handler(job):
        if job.id not in unread_ids:
            assert job.payload is job.payload
            seen[job.id] = job.payload
        return None

    set_json_loads(loads)
    try:
        read = pgqueue.push(conn, queue_name, {"n": 1})
        unread = pgqueue.push(conn, queue_name, {"read": False})
        unread_ids.append(unread)
        start_worker({queue_name: handler})
        wait_until(lambda: job_status(conn, read) == "completed" and job_status(conn, unread) == "completed",
                   what="both jobs completed")
    finally:
        set_json_loads(json.loads)
    assert seen == {read: {"decoded_by": "custom", "n": 1}}
    # Decoded once; the unread payload never (the test's own queries decode other jsonb).
    assert [bytes(d) for d in decoded].count(b'{"n": 1}') == 1
    assert not [d for d in decoded if bytes(d) == b'{"read": false}']


def test_the_acks_of_short_handlers_are_gathered_into_full_calls(conn, queue_name, start_worker, capsys):
    """Slots of a claim finish one after another (each needs the GIL); the acker
    waits for the acks still to come while each turn brings more, so a drain of
    no-op handlers spends about one queue_ack_batch call per claim of
    ``concurrency`` jobs, not one per first few acks (half as many commits)."""
    from test_ack_batch import calls_of, completed_count, settled_calls

    jobs = 400
    pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(jobs)])
    before = calls_of(conn, "queue_ack_batch")
    w = start_worker({queue_name: lambda job: None}, concurrency=10)
    wait_until(lambda: completed_count(conn, queue_name) == jobs, timeout=60, what="every job completed")
    w.stop()
    assert w.wait(15)
    calls = settled_calls(conn, "queue_ack_batch", before) - before
    with capsys.disabled():
        print(f"\n[gathered acks, threaded Worker] {jobs} no-op jobs at concurrency 10: {calls} queue_ack_batch"
              f" calls ({jobs / max(calls, 1):.1f} acks per call)")
    # Without gathering about 5 per call; a loaded machine may split a few claims.
    assert 1 <= calls <= jobs // 7, f"{calls} calls for {jobs} jobs: the acks were not gathered"


def test_short_handlers_share_slots_without_a_wake_up_per_job(conn, queue_name, start_worker, capsys):
    """A drain of no-op handlers: a slot runs the claimed jobs one after
    another instead of a thread waking per job (and again per ack), so the
    process blocks well under once per job (it was 1.6 times per job), and
    each job still runs once and completes."""
    import resource

    jobs = 1000
    ids = pgqueue.push_batch(conn, queue_name, [{"n": n} for n in range(jobs)])
    finished = []
    all_done = threading.Event()

    def on_finished(event):
        finished.append(event)
        if len(finished) == jobs:
            all_done.set()

    w = pgqueue.Worker(DSN, {queue_name: lambda job: job.payload["n"]}, concurrency=10, grace=5,
                       listeners=[pgqueue.CallbackListener(on_finished=on_finished)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    w.start()
    try:
        assert all_done.wait(60), f"{len(finished)} of {jobs} finished"
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    finally:
        w.stop()
        assert w.wait(15)
    with capsys.disabled():
        print(f"\n[shared slots, threaded Worker] {jobs} no-op jobs at concurrency 10: "
              f"{switches / jobs:.2f} voluntary context switches per job")
    assert sorted(e.job.id for e in finished) == sorted(ids)
    assert all(e.status == "completed" for e in finished)
    assert switches < jobs, f"{switches} voluntary context switches for {jobs} jobs"


def test_a_handler_that_turns_out_long_does_not_hold_up_the_jobs_queued_behind_it(conn, queue_name,
                                                                                  start_worker):
    """Short handlers share slots; when one of them blocks, the jobs claimed
    with it get slots of their own within a turn instead of waiting for it."""
    gate = threading.Event()
    quick_done = []

    def handler(job):
        if job.payload.get("block"):
            gate.wait(10)
        else:
            quick_done.append(job.id)

    w = start_worker({queue_name: handler}, concurrency=8, poll_interval=0.2)
    wait_until(lambda: w.listening, what="listening")
    warm = pgqueue.push_batch(conn, queue_name, [{} for _ in range(200)])  # the mean run: short
    wait_until(lambda: len(quick_done) == len(warm), timeout=30, what="the warm-up drained")
    try:
        ids = pgqueue.push_batch(conn, queue_name, [{"block": True}] + [{} for _ in range(7)])
        t0 = time.monotonic()
        wait_until(lambda: all(i in quick_done for i in ids[1:]), timeout=5, what="the quick jobs")
        took = time.monotonic() - t0
    finally:
        gate.set()
    wait_until(lambda: job_status(conn, ids[0]) == "completed", what="the long job completed")
    assert took < 2, f"the quick jobs waited {took:.2f}s behind the long one"
    assert gate.is_set()


def test_a_stop_amid_a_drain_leaves_no_job_half_done(conn, queue_name):
    """A stop while a drain of no-op handlers is in full swing: every job that
    started was acked, and finished, before wait() returned; the others are
    still pending; none is left processing."""
    ids = pgqueue.push_batch(conn, queue_name, [{} for _ in range(3000)])
    started, finished = [], []
    w = pgqueue.Worker(DSN, {queue_name: lambda job: None}, concurrency=20, grace=5, poll_interval=0.2,
                       listeners=[pgqueue.CallbackListener(on_started=started.append, on_finished=finished.append)])
    w.start()
    wait_until(lambda: len(finished) >= 200, what="the drain under way")
    w.stop()
    assert w.wait(15)
    count = len(finished)
    assert count < len(ids), "the drain ended before the stop"
    assert sorted(e.job.id for e in finished) == sorted(e.job.id for e in started)
    assert all(e.status == "completed" for e in finished)
    counts = dict(conn.execute("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1",
                               (queue_name,)).fetchall())
    assert counts == {"completed": count, "pending": len(ids) - count}


def test_created_at_is_decoded_when_first_read_in_the_connections_time_zone(conn, queue_name, start_worker):
    """A claimed job's creation time is the server's, as the worker's
    connections would load it (their time zone), decoded once when first
    read; a handler that never reads it costs no parse."""
    seen = {}

    def handler(job):
        if job.payload["read"]:
            seen[job.id] = (job.created_at, job.created_at is job.created_at)

    read = pgqueue.push(conn, queue_name, {"read": True})
    unread = pgqueue.push(conn, queue_name, {"read": False})
    start_worker({queue_name: handler}, connect_kwargs={"options": "-c TimeZone=America/New_York"})
    wait_until(lambda: job_status(conn, read) == "completed" and job_status(conn, unread) == "completed",
               what="both completed")
    created, same = seen[read]
    assert same and set(seen) == {read}
    server = conn.execute("SELECT created_at FROM queue.all_jobs WHERE id = %s", (read,)).fetchone()[0]
    assert created == server  # the same instant
    assert created.utcoffset() in (dt.timedelta(hours=-5), dt.timedelta(hours=-4))  # New York's zone, not UTC


def test_a_handler_that_exits_or_whose_error_cannot_be_stored_fails_only_its_job(conn, queue_name, start_worker):
    """Poison pills: a handler that calls sys.exit (SystemExit, as argparse
    does on a bad payload), an error text holding a NUL (PostgreSQL text
    cannot), and a retry delay the server refuses (beyond queue.max_delay).
    Each fails its own job at once, with its error recorded, and the worker's
    one slot goes on to run the job queued behind them. Before, the first
    ended the slot's thread (its lease kept forever) and the other two left
    their jobs to wait out their lease, their errors lost."""
    ids = {kind: pgqueue.push(conn, queue_name, {"kind": kind}, max_attempts=1, timeout=dt.timedelta(hours=1))
           for kind in POISON_KINDS}
    start_worker({queue_name: poison}, concurrency=1)
    wait_until(lambda: job_status(conn, ids["fine"]) == "completed", what="the job behind the poison pills")
    for kind, text in POISON_ERRORS:
        wait_until(lambda: job_status(conn, ids[kind]) == "failed", timeout=5, what=f"{kind} failed")
        assert job_info(conn, ids[kind])["last_error"].startswith(text), job_info(conn, ids[kind])["last_error"]
