"""The upgrade path a real user takes (driven by scripts/upgrade-test.sh).

`before_upgrade` runs against a cluster where the oldest release is installed
from its own build: it leaves jobs in every status, serial groups, a claimed
job with a live lease, schedules and a worker, and writes down what it left.

`after_upgrade` runs once this build's library is installed and the server
restarted, with the old catalog still in place: calls made before `ALTER
EXTENSION queue UPDATE` either work or fail with a clear error (never a
crash); then the update; then every job, schedule and counter is as it was
and the queue works; and the upgraded schema equals a fresh install, compared
by `pg_dump --schema-only` of both.
"""
import json
import os
import re
import subprocess
import time

import psycopg
import pytest
from psycopg import sql

DSN = os.environ.get("QUEUE_UPGRADE_DSN", "host=127.0.0.1 port=25434 user=postgres dbname=upgraded")
RUN_DIR = os.environ.get("RUN_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".run"))
SNAPSHOT = os.path.join(RUN_DIR, "upgrade-snapshot.json")
SERVER_LOG = os.path.join(RUN_DIR, "upgrade-cluster", "server.log")
NEW_VERSION = "0.2.0"

QUEUES = ["up-a", "up-b", "up-groups"]


def connect(dbname=None, autocommit=True):
    """A connection to the upgrade cluster (to `dbname`, default the upgraded database)."""
    dsn = DSN if dbname is None else re.sub(r"dbname=\S+", f"dbname={dbname}", DSN)
    return psycopg.connect(dsn, autocommit=autocommit)


def wait_until(predicate, what, timeout=20.0):
    """Poll `predicate` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def jobs_of(conn):
    """Every job, as the fields a user relies on, by id."""
    rows = conn.execute(
        """SELECT id, queue, status::text, priority, serial_group, attempts, max_attempts,
                  payload, result, last_error, dedupe_key, run_at, lease_until, worker
             FROM queue.all_jobs ORDER BY id"""
    ).fetchall()
    return [[str(v) if not isinstance(v, (int, str, type(None), dict, list)) else v for v in r] for r in rows]


def schedules_of(conn):
    """Every schedule as queue_schedules shows it."""
    rows = conn.execute(
        "SELECT name, kind, schedule, queue, enabled, next_run_at::text FROM queue_schedules() ORDER BY name"
    ).fetchall()
    return [list(r) for r in rows]


def gauges_of(conn, queue):
    """The counters of queue_stats that must match the jobs."""
    s = conn.execute("SELECT queue_stats(%s)", (queue,)).fetchone()[0]
    return {k: s[k] for k in ("pending", "scheduled", "processing", "retrying",
                              "completed", "failed", "expired", "cancelled", "total_pushed")}


def counted_of(conn, queue):
    """The same gauges counted from the rows (total_pushed is not derivable)."""
    rows = dict(conn.execute(
        "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = %s GROUP BY 1", (queue,)
    ).fetchall())
    return {k: rows.get(k, 0) for k in ("pending", "scheduled", "processing", "retrying",
                                        "completed", "failed", "expired", "cancelled")}


def settled_gauges(conn, queue):
    """queue_stats once its counters agree with the rows (they are flushed every tick)."""
    def agree():
        g = gauges_of(conn, queue)
        return g if {k: g[k] for k in counted_of(conn, queue)} == counted_of(conn, queue) else None
    return wait_until(agree, f"the counters of {queue} to match its jobs")


# ---------------------------------------------------------------------------
# Before: the old release, from its own build
# ---------------------------------------------------------------------------

def test_before_upgrade_fill_every_state():
    """Jobs in every status, serial groups, a live lease, schedules, a worker."""
    with connect() as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'queue'").fetchone()[0]
        assert version != NEW_VERSION
        push = "SELECT queue_push(%s, %s::jsonb, priority => %s, max_attempts => %s, timeout => %s::interval)"

        for i in range(5):
            conn.execute(push, ("up-a", json.dumps({"pending": i}), i % 3, 3, "1 hour"))
        conn.execute("SELECT queue_push('up-a', '{\"later\": 1}', delay => '2 hours')")
        conn.execute("SELECT queue_push('up-a', '{\"dedupe\": 1}', dedupe_key => 'once')")

        # processing: a claim with a live lease, kept by this worker
        conn.execute(push, ("up-b", '{"claimed": 1}', 0, 3, "2 hours"))
        claimed = conn.execute("SELECT id, attempt FROM queue_pop('up-b', 'old-worker')").fetchone()
        conn.execute("SELECT queue_heartbeat('old-worker', '{\"host\": \"old\"}')")
        # retrying: failed once, retry in an hour
        conn.execute(push, ("up-b", '{"retry": 1}', 0, 3, "1 hour"))
        rid, rattempt = conn.execute("SELECT id, attempt FROM queue_pop('up-b')").fetchone()
        assert conn.execute("SELECT queue_fail(%s, 'transient', attempt => %s, retry_in => '1 hour')",
                            (rid, rattempt)).fetchone()[0] == "retrying"
        # completed, failed, cancelled
        conn.execute(push, ("up-b", '{"done": 1}', 0, 3, "1 hour"))
        did, dattempt = conn.execute("SELECT id, attempt FROM queue_pop('up-b')").fetchone()
        assert conn.execute("SELECT queue_ack(%s, '{\"ok\": true}', %s)", (did, dattempt)).fetchone()[0]
        conn.execute(push, ("up-b", '{"dead": 1}', 0, 1, "1 hour"))
        fid, fattempt = conn.execute("SELECT id, attempt FROM queue_pop('up-b')").fetchone()
        assert conn.execute("SELECT queue_fail(%s, 'fatal', attempt => %s)", (fid, fattempt)).fetchone()[0] == "failed"
        cid = conn.execute("SELECT queue_push('up-b', '{\"cancel\": 1}', delay => '1 hour')").fetchone()[0]
        assert conn.execute("SELECT queue_cancel(%s)", (cid,)).fetchone()[0]
        # expired: one attempt, a lease of a moment, expired by the maintenance worker
        conn.execute(push, ("up-b", '{"expire": 1}', 0, 1, "10 milliseconds"))
        eid = conn.execute("SELECT id FROM queue_pop('up-b')").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT status = 'expired' FROM queue.all_jobs WHERE id = %s",
                                        (eid,)).fetchone()[0], "the lease to expire")

        # a serial group: its head is processing, two wait behind it
        group_ids = [conn.execute("SELECT queue_push('up-groups', %s::jsonb, serial_group => 'g1', timeout => '2 hours')",
                                  (json.dumps({"g": i}),)).fetchone()[0] for i in range(3)]
        head = conn.execute("SELECT id, attempt FROM queue_pop('up-groups', 'old-worker', 5)").fetchall()
        assert [h[0] for h in head] == group_ids[:1]

        conn.execute("SELECT queue_schedule('nightly', '0 3 * * *', 'up-a', '{\"cron\": 1}')")
        conn.execute("SELECT queue_schedule('by-hand', 'manual', 'up-b')")

        snapshot = {
            "version": version,
            "jobs": jobs_of(conn),
            "schedules": schedules_of(conn),
            "gauges": {q: settled_gauges(conn, q) for q in QUEUES},
            "claimed": list(claimed),
            "group_head": list(head[0]),
            "group_ids": group_ids,
            "workers": [r[0] for r in conn.execute("SELECT worker FROM queue_workers()").fetchall()],
        }
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(SNAPSHOT, "w") as f:
        json.dump(snapshot, f)


# ---------------------------------------------------------------------------
# After: this build's library, the old catalog, then the update
# ---------------------------------------------------------------------------

def load_snapshot():
    """What before_upgrade left."""
    with open(SNAPSHOT) as f:
        return json.load(f)


def server_crashes():
    """Lines of the server log that say a backend died of a signal."""
    with open(SERVER_LOG, errors="replace") as f:
        return [line for line in f if "terminated by signal" in line or "was terminated by" in line]


# What workers and producers call: these must work on the old catalog (a
# deployment installs the new build, restarts, and runs the update later).
OLD_CATALOG_JOB_CALLS = [
    "SELECT queue_push('up-probe', '{}')",
    "SELECT queue_push_batch('up-probe', ARRAY['{}'::jsonb, '{}'])",
    "SELECT * FROM queue_pop('up-probe')",
    "SELECT queue_ack(0)",
    "SELECT queue_fail(0, 'x')",
    "SELECT queue_touch(0)",
    "SELECT queue_heartbeat('up-probe-worker', '{}')",
]
# The rest: work or fail with a clear error.
OLD_CATALOG_CALLS = OLD_CATALOG_JOB_CALLS + [
    "SELECT queue_stats()",
    "SELECT queue_list()",
    "SELECT queue_metrics()",
    "SELECT queue_health()",
    "SELECT queue_job(1)",
    "SELECT queue_tick()",
    "SELECT * FROM queue_schedules()",
    "SELECT * FROM queue_timeline()",
    "SELECT * FROM queue_dead()",
    "SELECT queue_prometheus()",
]


def test_after_upgrade_old_catalog_calls_work_or_fail_clearly():
    """Before the update the new library serves the old catalog: the job
    calls work, the others work or fail with a clear error, never a crash."""
    before = len(server_crashes())
    failed = {}
    for call in OLD_CATALOG_CALLS:
        with connect(autocommit=False) as conn:
            try:
                conn.execute(call).fetchall()
            except psycopg.OperationalError as e:
                pytest.fail(f"{call}: the connection broke: {e}")
            except psycopg.Error as e:
                assert e.diag.sqlstate and e.diag.sqlstate[:2] not in ("XX", "58"), (call, e.diag.sqlstate, str(e))
                assert e.diag.message_primary, call
                failed[call] = f"{e.diag.sqlstate}: {e.diag.message_primary}"
            finally:
                conn.rollback()
    with connect() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert len(server_crashes()) == before, server_crashes()[before:]
    assert {s: f for s, f in failed.items() if s in OLD_CATALOG_JOB_CALLS} == {}


def released_symbols():
    """(release file, C symbol) of every C function a released install script declares."""
    releases = os.path.join(os.path.dirname(__file__), "..", "..", "sql", "releases")
    found = []
    for name in sorted(os.listdir(releases)):
        if name.endswith(".sql"):
            with open(os.path.join(releases, name)) as f:
                found += [(name, sym) for sym in sorted(set(re.findall(r"'MODULE_PATHNAME',\s*'(\w+)'", f.read())))]
    return found


def test_after_upgrade_this_library_has_every_symbol_a_release_calls():
    """Every C function of every released catalog still resolves in this
    library (src/compat.rs keeps the ones the current catalog dropped):
    CREATE FUNCTION of a C function looks its symbol up, and fails if it is
    not there. Rolled back."""
    symbols = released_symbols()
    assert len(symbols) > 20, symbols
    missing = []
    with connect(autocommit=False) as conn:
        conn.execute("CREATE SCHEMA symbol_probe")
        for i, (release, sym) in enumerate(symbols):
            conn.execute("SAVEPOINT s")
            try:
                conn.execute(sql.SQL("CREATE FUNCTION symbol_probe.{}() RETURNS void LANGUAGE c AS '$libdir/queue', {}")
                             .format(sql.Identifier(f"f{i}"), sql.Literal(sym)))
            except psycopg.Error as e:
                missing.append(f"{release}: {sym} ({e.diag.message_primary})")
            conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.rollback()
    assert missing == []


def test_after_upgrade_alter_extension_update():
    """ALTER EXTENSION queue UPDATE reaches this build's version."""
    with connect() as conn:
        conn.execute("ALTER EXTENSION queue UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'queue'").fetchone()[0] == NEW_VERSION


def test_after_upgrade_every_job_schedule_and_counter_is_intact():
    """The same jobs, schedules, workers and counters as before the upgrade."""
    snap = load_snapshot()
    with connect() as conn:
        assert jobs_of(conn) == snap["jobs"]
        assert schedules_of(conn) == snap["schedules"]
        assert [r[0] for r in conn.execute("SELECT worker FROM queue_workers()").fetchall()] == snap["workers"]
        for q in QUEUES:
            assert settled_gauges(conn, q) == snap["gauges"][q], q


def test_after_upgrade_the_queue_works():
    """Old claims finish, serial groups move on, new jobs flow, schedules fire."""
    snap = load_snapshot()
    with connect() as conn:
        cid, cattempt = snap["claimed"]
        assert conn.execute("SELECT queue_touch(%s, attempt => %s)", (cid, cattempt)).fetchone()[0]
        assert conn.execute("SELECT queue_ack(%s, '{\"after\": true}', %s)", (cid, cattempt)).fetchone()[0]

        hid, hattempt = snap["group_head"]
        assert conn.execute("SELECT * FROM queue_pop('up-groups')").fetchall() == []
        assert conn.execute("SELECT queue_ack(%s, NULL, %s)", (hid, hattempt)).fetchone()[0]
        nxt = conn.execute("SELECT id FROM queue_pop('up-groups', 'new-worker', 5)").fetchall()
        assert [r[0] for r in nxt] == snap["group_ids"][1:2]

        new_id = conn.execute("SELECT queue_push('up-a', '{\"new\": 1}', priority => -100)").fetchone()[0]
        got = conn.execute("SELECT id, attempt FROM queue_pop('up-a')").fetchone()
        assert got[0] == new_id and got[1] == 1
        assert conn.execute("SELECT queue_ack(%s, NULL, 1)", (new_id,)).fetchone()[0]

        fired = conn.execute("SELECT queue_trigger('by-hand')").fetchone()[0]
        assert conn.execute("SELECT queue FROM queue.jobs WHERE id = %s", (fired,)).fetchone()[0] == "up-b"
        assert conn.execute("SELECT (queue_tick() ->> 'errors')::int").fetchone()[0] == 0
        health = conn.execute("SELECT queue_health()").fetchone()[0]
        assert health is not None
        for q in QUEUES:
            settled_gauges(conn, q)


def detached_schema_dump(db):
    """pg_dump --schema-only of the extension's objects in database `db`.

    pg_dump leaves out the members of an extension (it writes CREATE EXTENSION
    instead), so the objects are first detached from the extension: then every
    table, index, function, grant and comment is written out. This ends the
    extension in `db`, so it runs last."""
    with connect(db) as conn:
        conn.execute(
            """DELETE FROM pg_depend
                WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
                  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'queue')""")
    port = re.search(r"port=(\d+)", DSN).group(1)
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "-h", "127.0.0.1", "-p", port, "-U", "postgres", db],
        check=True, capture_output=True, text=True).stdout
    # \restrict lines carry a random key of each dump.
    return [line for line in out.splitlines()
            if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict"))]


def test_after_upgrade_schema_equals_a_fresh_install():
    """The upgraded catalog is exactly what CREATE EXTENSION of this version makes."""
    with connect("postgres") as conn:
        conn.execute("DROP DATABASE IF EXISTS fresh")
        conn.execute("CREATE DATABASE fresh")
    with connect("fresh") as conn:
        conn.execute("CREATE EXTENSION queue")
    upgraded, fresh = detached_schema_dump("upgraded"), detached_schema_dump("fresh")
    assert len(fresh) > 1000, "the dump holds the extension's objects"
    if upgraded != fresh:
        import difflib
        diff = "\n".join(difflib.unified_diff(fresh, upgraded, "fresh", "upgraded", lineterm="", n=2))
        pytest.fail("the upgraded schema differs from a fresh install:\n" + diff[:20000])
