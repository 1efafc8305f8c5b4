"""Job dependencies through real connections: several workers drain a
diamond and a 1,000-job fan-in in dependency order, each dependent reading
its dependencies' results; a failure cancels exactly the jobs below it
(run_anyway ones still run) and a retry brings them back."""
import threading
import time

from psycopg.types.json import Jsonb

from conftest import connect


class Workers:
    """`n` threads, each with its own connection, claiming with a server-side
    wait and finishing each job as `handler(conn, job_id, payload)` says: a
    dict is the ack's result; raising fails the job permanently. Every claim
    is recorded as (id, attempt)."""

    def __init__(self, queue, handler, n=4):
        self.queue, self.handler = queue, handler
        self.claims, self.errors = [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, n):
        try:
            with connect() as c:
                while not self.stop.is_set():
                    rows = c.execute(
                        "SELECT id, attempt, payload FROM queue_pop(%s, %s, 5, wait => '100 milliseconds')",
                        (self.queue, f"w{n}")).fetchall()
                    for job_id, attempt, payload in rows:
                        self.claims.append((job_id, attempt))
                        try:
                            result = self.handler(c, job_id, payload)
                        except Exception as e:  # the handler's failure fails the job
                            c.execute("SELECT queue_fail(%s, %s, %s, permanent => true)",
                                      (job_id, str(e), attempt))
                            continue
                        assert c.execute("SELECT queue_ack(%s, %s, %s)",
                                         (job_id, Jsonb(result), attempt)).fetchone()[0]
        except Exception as e:  # surfaced by close()
            self.errors.append(e)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        assert not self.errors, self.errors


def wait_until(conn, sql, args, timeout=60):
    deadline = time.monotonic() + timeout
    while not conn.execute(sql, args).fetchone()[0]:
        assert time.monotonic() < deadline, f"never true: {sql}"
        time.sleep(0.05)


def inputs_complete(c, job_id, payload):
    """The handler of every job: its dependencies are all completed when it
    runs, and each one's result (which names it) is there to read."""
    deps = c.execute("SELECT dependency, status, result FROM queue_dependencies(%s)", (job_id,)).fetchall()
    for dep, status, result in deps:
        assert status == "completed", (job_id, dep, status)
        assert result["id"] == dep, (job_id, dep, result)
    return {"id": job_id, "inputs": len(deps)}


def test_diamond_and_fan_in_run_in_dependency_order(queue_name):
    """A -> (B, C) -> D, then 1,000 independent jobs and D -> Z: Z depends
    on all 1,001. Four workers; every job runs once, and when its handler
    starts every one of its dependencies is completed in the database, with
    its result readable (the handler checks; a failed check fails the job
    and the test). Z is released exactly once."""
    with connect() as conn:
        push = "SELECT queue_push(%s, '{}', depends_on => %s::bigint[])"
        a = conn.execute(push, (queue_name, None)).fetchone()[0]
        b = conn.execute(push, (queue_name, [a])).fetchone()[0]
        c = conn.execute(push, (queue_name, [a])).fetchone()[0]
        d = conn.execute(push, (queue_name, [b, c])).fetchone()[0]
        fan = [r[0] for r in conn.execute(
            "SELECT queue_push_batch(%s, array_fill('{}'::jsonb, ARRAY[1000]))", (queue_name,))]
        z = conn.execute(push, (queue_name, fan + [d])).fetchone()[0]
        assert conn.execute("SELECT (queue_stats(%s) ->> 'blocked')::int", (queue_name,)).fetchone()[0] == 4

        workers = Workers(queue_name, inputs_complete)
        try:
            wait_until(conn, "SELECT status = 'completed' FROM queue.all_jobs WHERE id = %s", (z,))
        finally:
            workers.close()

        ids = [a, b, c, d, *fan, z]
        assert sorted(i for i, _ in workers.claims) == sorted(ids), "every job claimed exactly once"
        rows = conn.execute(
            "SELECT id, status::text, attempts, (result ->> 'inputs')::int FROM queue.all_jobs WHERE id = ANY(%s)",
            (ids,)).fetchall()
        assert all(r[1] == "completed" and r[2] == 1 for r in rows), rows
        inputs = {r[0]: r[3] for r in rows}
        assert (inputs[a], inputs[b], inputs[d], inputs[z]) == (0, 1, 2, 1001)
        stats = conn.execute("SELECT queue_stats(%s)", (queue_name,)).fetchone()[0]
        assert (stats["blocked"], stats["pending"], stats["completed"]) == (0, 0, len(ids))


def test_a_failure_cancels_the_jobs_below_it_and_a_retry_revives_them(queue_name):
    """A -> B -> C, A -> D (run_anyway), E -> F. A fails: B and C are
    cancelled naming A, D still runs once, E and F complete. Retrying A
    (which now succeeds) runs B then C; nothing else runs again."""
    failing = {"on": True}

    def handler(c, job_id, payload):
        if payload.get("n") == "A" and failing["on"]:
            raise RuntimeError("A is broken")
        return inputs_complete(c, job_id, payload) if payload.get("n") != "D" else {"id": job_id}

    with connect() as conn:
        push = "SELECT queue_push(%s, %s, depends_on => %s::bigint[], run_anyway => %s)"
        ids = {}
        for name, deps, anyway in [("A", [], False), ("B", ["A"], False), ("C", ["B"], False),
                                   ("D", ["A"], True), ("E", [], False), ("F", ["E"], False)]:
            ids[name] = conn.execute(push, (queue_name, Jsonb({"n": name}),
                                            [ids[x] for x in deps], anyway)).fetchone()[0]

        def statuses():
            return dict(conn.execute(
                "SELECT payload ->> 'n', status::text FROM queue.all_jobs WHERE queue = %s",
                (queue_name,)).fetchall())

        workers = Workers(queue_name, handler)
        try:
            wait_until(conn, "SELECT count(*) = 3 FROM queue.finished_jobs WHERE queue = %s AND status = 'completed'",
                       (queue_name,))
            assert statuses() == {"A": "failed", "B": "cancelled", "C": "cancelled",
                                  "D": "completed", "E": "completed", "F": "completed"}
            reasons = conn.execute(
                "SELECT DISTINCT last_error FROM queue.finished_jobs WHERE id = ANY(%s)",
                ([ids["B"], ids["C"]],)).fetchall()
            assert reasons == [(f"dependency {ids['A']} ended failed",)]

            failing["on"] = False
            assert conn.execute("SELECT queue_retry(%s)", (ids["A"],)).fetchone()[0]
            wait_until(conn, "SELECT status = 'completed' FROM queue.all_jobs WHERE id = %s", (ids["C"],))
        finally:
            workers.close()

        assert set(statuses().values()) == {"completed"}
        claimed = [i for i, _ in workers.claims]
        assert sorted(claimed) == sorted([ids["A"], *ids.values()]), "A twice, every other job once"
        order = conn.execute(
            "SELECT payload ->> 'n' FROM queue.finished_jobs WHERE id = ANY(%s) ORDER BY started_at",
            ([ids["A"], ids["B"], ids["C"]],)).fetchall()
        assert [r[0] for r in order] == ["A", "B", "C"]


def test_a_batch_pushed_from_several_transactions_fires_its_callbacks_once(queue_name):
    """300 jobs join a batch from three connections while four workers drain
    it; every 50th fails. The batch is closed while jobs still run. When all
    are final, on_complete and on_failure are each pushed exactly once, with
    the right counts in their payload."""
    def handler(c, job_id, payload):
        if payload["n"] % 50 == 0:
            raise RuntimeError("every 50th fails")
        return {"n": payload["n"]}

    callbacks = queue_name + "-cb"
    with connect() as conn:
        batch = conn.execute(
            "SELECT queue_batch_open(%s, %s)",
            (Jsonb({"queue": callbacks, "payload": {"kind": "complete"}}),
             Jsonb({"queue": callbacks, "payload": {"kind": "failure"}}))).fetchone()[0]
        workers = Workers(queue_name, handler)
        try:
            def producer(k):
                with connect() as p:
                    for i in range(100):
                        p.execute("SELECT queue_push(%s, %s, batch => %s)",
                                  (queue_name, Jsonb({"n": k * 100 + i + 1}), batch))
            producers = [threading.Thread(target=producer, args=(k,)) for k in range(3)]
            for t in producers:
                t.start()
            for t in producers:
                t.join()
            closed = conn.execute("SELECT queue_batch_close(%s)", (batch,)).fetchone()[0]
            assert closed["total"] == 300
            wait_until(conn, "SELECT queue_batch(%s) ->> 'state' = 'done'", (batch,))
        finally:
            workers.close()
        report = conn.execute("SELECT queue_batch(%s)", (batch,)).fetchone()[0]
        assert (report["total"], report["completed"], report["failed"], report["pending"]) == (300, 294, 6, 0)
        fired = conn.execute(
            "SELECT payload ->> 'kind', payload -> 'batch' FROM queue.jobs WHERE queue = %s ORDER BY 1",
            (callbacks,)).fetchall()
        summary = {"id": batch, "total": 300, "completed": 294, "failed": 6, "cancelled": 0}
        assert fired == [("complete", summary), ("failure", summary)]
