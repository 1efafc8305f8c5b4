"""The serial-group hammer (issue 3).

8 connections work one queue of several thousand jobs in a few hundred
groups with random priorities. Each claim is logged in the transaction that
claims it, each finish in the transaction that finishes it; some jobs fail
(and retry), some fail permanently, some are abandoned so that their lease
expires and the background worker takes them back. Then SQL over the log
proves:

  1. no group ever had two jobs running at once;
  2. inside a group, jobs started in (priority, id) order (all jobs were
     waiting from the start), and a started job held its group until it was
     final (its claims are one contiguous run);
  3. every job ended completed or dead (failed / expired).
"""
import random
import threading
import time
import uuid

from conftest import connect

JOBS = 3000
GROUPS = 300
WORKERS = 8
LEASE_MS = 300


def setup_jobs(queue, log):
    rng = random.Random(42)
    with connect() as conn:
        conn.execute(
            f"""CREATE TABLE {log} (
                    job_id bigint, grp text, priority int, attempt int, worker text,
                    started timestamptz, lease_until timestamptz,
                    finished timestamptz, outcome text)"""
        )
        with conn.cursor() as cur:
            for _ in range(JOBS):
                group = f"g{rng.randrange(GROUPS)}" if rng.random() < 0.9 else None
                cur.execute(
                    """SELECT queue_push(%s, '{}', priority => %s, serial_group => %s,
                                         max_attempts => 3, timeout => %s,
                                         backoff_base => '10 milliseconds', backoff_max => '50 milliseconds')""",
                    (queue, rng.randint(-5, 5), group, f"{LEASE_MS} milliseconds"),
                )


def work(queue, log, n, stop, errors):
    rng = random.Random(n)
    try:
        with connect(autocommit=False) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    f"""WITH c AS (SELECT * FROM queue_pop(%s, %s, %s))
                        INSERT INTO {log} (job_id, grp, priority, attempt, worker, started, lease_until)
                        SELECT id, serial_group, priority, attempt, %s, clock_timestamp(), lease_until FROM c
                        RETURNING job_id, attempt""",
                    (queue, f"w{n}", rng.randint(1, 3), f"w{n}"),
                ).fetchall()
                conn.commit()
                if not rows:
                    time.sleep(0.005)
                    continue
                for job_id, attempt in rows:
                    time.sleep(rng.random() * 0.003)
                    roll = rng.random()
                    if roll < 0.08:
                        continue  # abandoned: the lease runs out
                    if roll < 0.78:
                        outcome = "ack"
                        done = conn.execute(
                            "SELECT queue_ack(%s, attempt => %s)", (job_id, attempt)
                        ).fetchone()[0]
                    else:
                        outcome = "fail-permanent" if roll > 0.95 else "fail"
                        done = conn.execute(
                            "SELECT queue_fail(%s, 'hammer', attempt => %s, permanent => %s)",
                            (job_id, attempt, outcome == "fail-permanent"),
                        ).fetchone()[0] is not None
                    conn.execute(
                        f"""UPDATE {log} SET finished = clock_timestamp(), outcome = %s
                             WHERE job_id = %s AND attempt = %s""",
                        (outcome if done else "stale", job_id, attempt),
                    )
                    conn.commit()
    except Exception as e:
        errors.append(e)


def test_serial_groups_hold_under_concurrency():
    queue = "hammer-" + uuid.uuid4().hex[:8]
    log = "hammer_log_" + uuid.uuid4().hex[:8]
    setup_jobs(queue, log)
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=work, args=(queue, log, i, stop, errors)) for i in range(WORKERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    with connect() as conn:
        while time.monotonic() - started < 240 and not errors:
            left = conn.execute(
                """SELECT count(*) FROM queue.all_jobs WHERE queue = %s
                    AND status IN ('scheduled', 'pending', 'processing', 'retrying')""",
                (queue,),
            ).fetchone()[0]
            if left == 0:
                break
            time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    took = time.monotonic() - started
    assert not errors, errors

    with connect() as conn:
        q = lambda sql, *a: conn.execute(sql, a).fetchall()

        # 3. Every job ended completed or dead.
        statuses = dict(q("SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", queue))
        assert set(statuses) <= {"completed", "failed", "expired"}, statuses
        assert sum(statuses.values()) == JOBS

        # The run really exercised retries, permanent failures and expiries.
        outcomes = dict(q(f"SELECT coalesce(outcome, 'abandoned'), count(*) FROM {log} GROUP BY 1"))
        assert outcomes.get("fail", 0) > 50 and outcomes.get("abandoned", 0) > 50, outcomes
        assert statuses.get("expired", 0) + statuses.get("failed", 0) > 0

        # 1. No overlap: each claim of a group starts after every earlier
        # claim of that group ended (finished, or its lease ran out).
        overlaps = q(
            f"""SELECT grp, job_id, started, prev_end FROM (
                    SELECT grp, job_id, started,
                           max(coalesce(finished, lease_until)) OVER (
                               PARTITION BY grp ORDER BY started
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
                      FROM {log} WHERE grp IS NOT NULL) s
                 WHERE started <= prev_end"""
        )
        assert overlaps == [], overlaps[:5]

        # 2a. First claims inside a group follow (priority, id).
        disorder = q(
            f"""SELECT grp, job_id, priority, prev_job, prev_priority FROM (
                    SELECT grp, job_id, priority,
                           lag(job_id) OVER w AS prev_job, lag(priority) OVER w AS prev_priority
                      FROM {log} WHERE grp IS NOT NULL AND attempt = 1
                    WINDOW w AS (PARTITION BY grp ORDER BY started)) s
                 WHERE (prev_priority, prev_job) > (priority, job_id)"""
        )
        assert disorder == [], disorder[:5]

        # 2b. A started job holds its group until final: all claims of a job
        # form one contiguous run in its group's claim sequence.
        broken_runs = q(
            f"""SELECT job_id, count(*) AS runs FROM (
                    SELECT job_id, lag(job_id) OVER (PARTITION BY grp ORDER BY started) AS prev
                      FROM {log} WHERE grp IS NOT NULL) s
                 WHERE prev IS DISTINCT FROM job_id
                 GROUP BY job_id HAVING count(*) > 1"""
        )
        assert broken_runs == [], broken_runs[:5]

        # Claims are counted: attempt n is the job's n-th claim.
        bad_attempts = q(
            f"""SELECT job_id FROM (
                    SELECT job_id, attempt, row_number() OVER (PARTITION BY job_id ORDER BY started) AS n
                      FROM {log}) s WHERE attempt <> n"""
        )
        assert bad_attempts == []

        claims = q(f"SELECT count(*) FROM {log}")[0][0]
        print(f"hammer: {JOBS} jobs, {claims} claims, {took:.1f}s, outcomes {outcomes}, final {statuses}")
        conn.execute(f"DROP TABLE {log}")
