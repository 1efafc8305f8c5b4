"""A worker blocked in LISTEN is woken by a push from another connection,
claims the job and completes it."""
import threading
import time

from conftest import connect


def worker_loop(queue, results, ready):
    with connect() as conn:
        conn.execute(f'LISTEN "queue_{queue}"')
        ready.set()
        while True:
            row = conn.execute(
                "SELECT id, attempt, payload FROM queue_pop(%s, 'py-worker')", (queue,)
            ).fetchone()
            if row:
                job_id, attempt, payload = row
                popped_at = time.monotonic()
                acked = conn.execute(
                    "SELECT queue_ack(%s, %s::jsonb, attempt => %s)",
                    (job_id, '{"done": true}', attempt),
                ).fetchone()[0]
                results.append((job_id, payload, acked, popped_at))
                if payload.get("last"):
                    return
                continue
            # Block until a notification arrives. No polling: if the NOTIFY
            # never came, this times out and the test fails.
            got = False
            for _ in conn.notifies(timeout=30, stop_after=1):
                got = True
            if not got:
                results.append(("timeout", None, None, None))
                return


def test_listening_worker_is_woken_and_completes_jobs(queue_name):
    results, ready = [], threading.Event()
    t = threading.Thread(target=worker_loop, args=(queue_name, results, ready))
    t.start()
    assert ready.wait(10)
    time.sleep(0.3)  # the worker has found the queue empty and is waiting

    latencies = []
    with connect() as producer:
        for i in range(5):
            t0 = time.monotonic()
            job = producer.execute(
                "SELECT queue_push(%s, %s::jsonb)",
                (queue_name, '{"n": %d, "last": %s}' % (i, "true" if i == 4 else "false")),
            ).fetchone()[0]
            deadline = time.monotonic() + 30
            while not any(r[0] == job for r in results) and time.monotonic() < deadline:
                time.sleep(0.001)
            done = [r for r in results if r[0] == job]
            assert done, f"job {job} was not picked up"
            latencies.append(done[0][3] - t0)
            time.sleep(0.05)  # let the worker go back to waiting
    t.join(30)
    assert not t.is_alive()
    assert all(r[0] != "timeout" for r in results)
    assert [r[2] for r in results] == [True] * 5

    with connect() as conn:
        statuses = conn.execute(
            "SELECT status::text, result FROM queue.all_jobs WHERE queue = %s ORDER BY id", (queue_name,)
        ).fetchall()
    assert statuses == [("completed", {"done": True})] * 5
    print(f"push -> pop wake-up latency (ms): {[round(x * 1000, 2) for x in latencies]}")
