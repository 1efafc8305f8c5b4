"""The wake-up path (src/wakeup.rs): pushes send no NOTIFY while no worker
sleeps, a sleeping worker is woken by the next push, and under racing
pushes and sleeping workers no wake-up is ever lost."""
import random
import threading
import time

from conftest import connect


def drain(conn, seconds=0.3):
    return len(list(conn.notifies(timeout=seconds)))


def test_notify_only_when_a_worker_sleeps(queue_name):
    with connect() as worker, connect() as producer:
        worker.execute(f'LISTEN "queue_{queue_name}"')
        for _ in range(50):
            producer.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        assert drain(worker) == 0, "nobody had found the queue empty: no NOTIFY"

        # The worker drains the queue, finds it empty, and would sleep.
        while worker.execute("SELECT count(*) FROM queue_pop(%s, batch => 20)", (queue_name,)).fetchone()[0]:
            pass
        producer.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        assert drain(worker, 2) == 1, "the sleeping worker is woken"
        for _ in range(20):
            producer.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        assert drain(worker) == 0, "one wake-up until the worker sleeps again"


def test_no_wakeup_is_lost_under_racing_pushes(queue_name):
    """Each push is the last one for a while: the producer waits until its
    job is done before the next. Random gaps of 0-3 ms make pushes land while
    workers are between an empty pop and their wait, the window a lost
    wake-up would fall into; a lost one leaves its job waiting for seconds."""
    jobs = 400
    done, errors = set(), []
    stop = threading.Event()

    def worker(n):
        try:
            with connect() as conn:
                conn.execute(f'LISTEN "queue_{queue_name}"')
                while not stop.is_set():
                    row = conn.execute("SELECT id FROM queue_pop(%s, %s)", (queue_name, f"w{n}")).fetchone()
                    if row:
                        conn.execute("SELECT queue_ack(%s)", row)
                        done.add(row[0])
                        continue
                    for _ in conn.notifies(timeout=10, stop_after=1):
                        pass
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    rng = random.Random(7)
    stuck, slowest = [], 0.0
    with connect() as producer:
        for _ in range(jobs):
            time.sleep(rng.random() * 0.003)
            job = producer.execute("SELECT queue_push(%s, '{}')", (queue_name,)).fetchone()[0]
            started = time.monotonic()
            while job not in done and time.monotonic() - started < 2:
                time.sleep(0.0002)
            slowest = max(slowest, time.monotonic() - started)
            if job not in done:
                stuck.append(job)
                break
    stop.set()
    with connect() as conn:
        conn.execute("SELECT pg_notify(%s, '')", (f"queue_{queue_name}",))  # release the sleepers
    for t in threads:
        t.join(15)
    assert not errors, errors
    assert not stuck, f"job {stuck} waited 2 s with idle workers: a wake-up was lost"
    print(f"{jobs} lone pushes, slowest push -> done {slowest * 1000:.1f} ms")
