"""The wake-up path (src/wakeup.rs): no push sends a NOTIFY in its own
transaction; the notifier tells every listener, one that never popped too,
in coalesced rounds; a sleeping worker is woken by the next push at once;
and under racing pushes and sleeping workers no wake-up is ever lost."""
import random
import threading
import time

from conftest import connect


def drain(conn, seconds=0.3):
    return len(list(conn.notifies(timeout=seconds)))


def notifier_pid(conn):
    """The pid of the notifier background worker."""
    return conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'queue notifier'").fetchone()[0]


def first_notify_after(listener, action, timeout=2.0):
    """Run `action` (its commit), then wait for one notification; (seconds
    from the commit until it came, the notify)."""
    action()
    started = time.monotonic()
    for n in listener.notifies(timeout=timeout, stop_after=1):
        return time.monotonic() - started, n
    raise AssertionError("no notification")


def test_a_passive_listener_hears_every_push_from_the_notifier(queue_name):
    """A session that only LISTENs, and never popped, is told of pushes
    within 50 ms; the NOTIFY comes from the notifier, never from the pushing
    transaction; a stream of pushes is coalesced into rounds."""
    with connect() as listener, connect() as producer:
        listener.execute(f'LISTEN "queue_{queue_name}"')
        notifier = notifier_pid(producer)
        latencies = []
        for _ in range(20):
            took, n = first_notify_after(
                listener, lambda: producer.execute("SELECT queue_push(%s, '{}')", (queue_name,)))
            assert n.channel == f"queue_{queue_name}"
            assert n.pid == notifier, "the pushing transaction sent no NOTIFY itself"
            latencies.append(took)
            time.sleep(0.02)
        latencies.sort()
        print(f"passive listener: push -> notification p50 {latencies[10] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
        assert latencies[-1] < 0.05, latencies

        # 200 pushes as fast as one connection goes: coalesced into rounds
        # (at most one per queue every 25 ms), at least one after the last.
        drain(listener)
        started = time.monotonic()
        for _ in range(200):
            producer.execute("SELECT queue_push(%s, '{}')", (queue_name,))
        elapsed = time.monotonic() - started
        heard = drain(listener, 0.2)
        assert 1 <= heard <= elapsed / 0.025 + 2, (heard, elapsed)


def test_passive_listeners_hear_promotions_and_group_releases(queue_name):
    """Delayed jobs promoted by the maintenance worker, and the next job of
    a serial group released by an ack, notify listeners that never popped."""
    with connect() as listener, connect() as producer:
        listener.execute(f'LISTEN "queue_{queue_name}"')
        producer.execute("SELECT queue_push(%s, '{}', delay => '300 milliseconds')", (queue_name,))
        assert drain(listener, 0.1) == 0, "a delayed job is not claimable yet"
        heard = list(listener.notifies(timeout=3, stop_after=1))
        assert heard and heard[0].pid == notifier_pid(producer), "the promotion is announced"
        producer.execute("SELECT id FROM queue_pop(%s)", (queue_name,))

        group = queue_name + "-g"
        for _ in range(2):
            producer.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (queue_name, group))
        first = producer.execute("SELECT id, attempt FROM queue_pop(%s)", (queue_name,)).fetchone()
        assert producer.execute("SELECT count(*) FROM queue_pop(%s)", (queue_name,)).fetchone()[0] == 0
        drain(listener)
        took, _ = first_notify_after(
            listener, lambda: producer.execute("SELECT queue_ack(%s, NULL, %s)", first))
        assert took < 0.05, took


def test_a_sleeping_worker_is_woken_at_once(queue_name):
    """A worker that found the queue empty is woken by the next push without
    waiting for a passive round."""
    with connect() as worker, connect() as producer:
        worker.execute(f'LISTEN "queue_{queue_name}"')
        latencies = []
        for _ in range(20):
            while worker.execute("SELECT count(*) FROM queue_pop(%s, batch => 20)", (queue_name,)).fetchone()[0]:
                pass
            drain(worker, 0.02)
            took, _ = first_notify_after(
                worker, lambda: producer.execute("SELECT queue_push(%s, '{}')", (queue_name,)))
            latencies.append(took)
        latencies.sort()
        print(f"sleeping worker: push -> notification p50 {latencies[10] * 1000:.2f} ms")
        assert latencies[10] < 0.01, latencies


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
