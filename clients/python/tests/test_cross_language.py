"""Python, Node and Rust workers drain one queue together.

Python pushes 300 jobs (every third in one of 3 serial groups); a Python
worker process (``cross_worker_proc.py``), a Node worker process
(``clients/node/test/fixtures/cross-language-worker.js``, on the built Node
client) and a Rust worker process (``clients/rust/examples/cross_language_worker.rs``,
built here with ``cargo build -p queue-client --example cross_language_worker``
when its binary is missing or older than its sources) serve the queue at once.
Every job must complete exactly once, each of the three languages must have
run some, and within each serial group no two jobs may have overlapped in time
(each handler stores its start and end in the result). Skipped, with the
reason, without node, the built Node client, or cargo.
"""

from __future__ import annotations

import json
import os
import queue as stdlib_queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

import psycopg
import pytest
from psycopg import sql

import pgqueue
from conftest import DSN, REPO, wait_until

NODE = shutil.which("node")
NODE_DIR = os.path.join(REPO, "clients", "node")
NODE_WORKER = os.path.join(NODE_DIR, "test", "fixtures", "cross-language-worker.js")
PY_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cross_worker_proc.py")
CARGO = shutil.which("cargo")
RUST_DIR = os.path.join(REPO, "clients", "rust")
RUST_EXAMPLE = "cross_language_worker"
# The debug profile, so that `cargo test -p queue-client` reuses what this builds.
RUST_TARGET_DIR = os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR") or "target")
RUST_WORKER = os.path.join(RUST_TARGET_DIR, "debug", "examples", RUST_EXAMPLE)

if NODE is None:
    pytest.skip("node is not installed: the cross-language test needs a Node worker", allow_module_level=True)
if not os.path.exists(os.path.join(NODE_DIR, "dist", "index.js")) \
        or not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")):
    pytest.skip("the Node client is not built (cd clients/node && npm ci && npm run build)", allow_module_level=True)

JOBS = 300
GROUPS = ["g0", "g1", "g2"]
LANGS = ("python", "node", "rust")
# The workers time their handlers on the system's monotonic clock
# (CLOCK_MONOTONIC: Python's time.monotonic, Node's process.hrtime, Rust's
# clock_gettime), one clock for all processes, so that one job's end and the
# next job's start compare exactly whichever languages ran them. (Their wall
# clocks did not: Node's performance.timeOrigin + now() was seen 3 ms off
# time.time() on this VM, and a handover takes about a millisecond.)


class Proc:
    """A worker subprocess and the JSON lines it prints."""

    def __init__(self, lang: str, argv: List[str], env: Dict[str, str]) -> None:
        self.lang = lang
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        self.lines: List[dict] = []
        self.ready = threading.Event()
        self._q: "stdlib_queue.Queue[dict]" = stdlib_queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                e = {"event": "text", "text": line.rstrip()}
            self.lines.append(e)
            if e.get("event") == "ready":
                self.ready.set()

    def started(self) -> List[int]:
        return [int(e["id"]) for e in self.lines if e.get("event") == "start"]

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            code = self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = self.p.wait()
        self._reader.join(5)
        return code


def rust_worker_binary() -> str:
    """The Rust worker's binary, built first if it is missing or older than its sources."""
    sources = [os.path.join(REPO, "Cargo.lock"), os.path.join(RUST_DIR, "Cargo.toml"),
               os.path.join(RUST_DIR, "examples", RUST_EXAMPLE + ".rs")]
    for d, _, files in os.walk(os.path.join(RUST_DIR, "src")):
        sources += [os.path.join(d, f) for f in files if f.endswith(".rs")]
    newest = max(os.path.getmtime(f) for f in sources if os.path.exists(f))
    if os.path.exists(RUST_WORKER) and os.path.getmtime(RUST_WORKER) >= newest:
        return RUST_WORKER
    if CARGO is None:
        pytest.skip("cargo is not installed: the cross-language test needs a Rust worker")
    build = subprocess.run([CARGO, "build", "-q", "-p", "queue-client", "--example", RUST_EXAMPLE], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert build.returncode == 0, f"cargo build of the Rust worker failed:\n{build.stdout[-4000:]}"
    assert os.path.exists(RUST_WORKER), f"cargo built no {RUST_WORKER}"
    return RUST_WORKER


def node_url(dsn: str = DSN) -> str:
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgres://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', '5432')}/{p.get('dbname', 'postgres')}"


def start_workers(dsn: str, queue_name: str) -> List[Proc]:
    """One worker process per language on ``queue_name`` of ``dsn``'s database."""
    rust_worker = rust_worker_binary()
    url = node_url(dsn)
    return [
        Proc("python", [sys.executable, PY_WORKER, dsn, queue_name], {}),
        Proc("node", [NODE, NODE_WORKER], {"DATABASE_URL": url, "QUEUE": queue_name, "CONCURRENCY": "4"}),
        Proc("rust", [rust_worker], {"DATABASE_URL": url, "QUEUE": queue_name, "CONCURRENCY": "4"}),
    ]


def test_python_node_and_rust_workers_share_a_queue(conn, queue_name, capsys):
    procs = start_workers(DSN, queue_name)
    by_lang = {p.lang: p for p in procs}
    try:
        for p in procs:
            assert p.ready.wait(20), f"the {p.lang} worker did not start: {p.lines}"
        rng = random.Random(7)
        group_of: Dict[int, str] = {}
        with psycopg.connect(DSN) as tx:  # one transaction: all 300 become claimable at once
            for i in range(JOBS):
                group = GROUPS[(i // 3) % 3] if i % 3 == 0 else None
                job_id = pgqueue.push(tx, queue_name, {"i": i, "ms": rng.randint(5, 15)}, serial_group=group)
                if group:
                    group_of[job_id] = group
        assert len(group_of) == JOBS // 3
        wait_until(lambda: conn.execute("SELECT count(*) FROM queue.all_jobs WHERE queue = %s AND status = 'completed'",
                                        (queue_name,)).fetchone()[0] == JOBS, timeout=90, interval=0.1,
                   what=f"{JOBS} jobs completed")
    finally:
        codes = {p.lang: p.stop() for p in procs}
    assert codes["python"] == 0, by_lang["python"].lines[-5:]
    assert codes["node"] in (0, -signal.SIGTERM), by_lang["node"].lines[-5:]
    assert codes["rust"] == 0, by_lang["rust"].lines[-5:]
    assert not [e for p in procs for e in p.lines if e.get("event") == "error"]

    rows = conn.execute("SELECT id, status::text, attempts, serial_group, result FROM queue.all_jobs WHERE queue = %s",
                        (queue_name,)).fetchall()
    assert len(rows) == JOBS
    # Completed exactly once: one attempt each, and one handler start across the three processes.
    assert {(r[1], r[2]) for r in rows} == {("completed", 1)}
    starts = [i for p in procs for i in p.started()]
    assert sorted(starts) == sorted(r[0] for r in rows), "a job was started twice, or not at all"
    ran_by = {i: p.lang for p in procs for i in p.started()}
    for job_id, _, _, group, result in rows:
        assert result["lang"] == ran_by[job_id]
        assert group == group_of.get(job_id)
    counts = {lang: sum(1 for v in ran_by.values() if v == lang) for lang in LANGS}
    assert all(counts[lang] > 0 for lang in LANGS), counts

    # One job of a group at a time, in push order, whichever language ran it.
    handovers = 0
    for group in GROUPS:
        jobs = sorted((r for r in rows if r[3] == group), key=lambda r: r[4]["start"])
        assert [r[0] for r in jobs] == sorted(r[0] for r in jobs), f"group {group} ran out of order"
        for a, b in zip(jobs, jobs[1:]):
            assert b[4]["start"] >= a[4]["end"], (
                f"group {group}: job {b[0]} ({b[4]['lang']}) started {a[4]['end'] - b[4]['start']:.2f} ms before "
                f"job {a[0]} ({a[4]['lang']}) ended")
            handovers += a[4]["lang"] != b[4]["lang"]
    with capsys.disabled():
        print(f"\n[cross-language] {JOBS} jobs: python ran {counts['python']}, node ran {counts['node']}, "
              f"rust ran {counts['rust']}; serial groups handed between languages {handovers} times")


WIDEN_DB = "cross_language_widened"


def widen_queue_pop(conn: psycopg.Connection) -> None:
    """Give ``queue_pop`` one more result column, as a later release might:
    the function moves to another schema and a plpgsql wrapper with the old
    signature returns its rows plus ``widened``. Like an ``ALTER EXTENSION ... UPDATE`` that
    replaces the function, this invalidates every plan that calls it, and the
    statements the workers prepared are planned again against a wider result."""
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'queue.claimed_job'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert cols, "queue.claimed_job has no columns"
    table = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in cols)
    (schema,) = conn.execute("SELECT pronamespace::regnamespace::text FROM pg_proc"
                             " WHERE oid = 'queue_pop(text, text, integer, interval)'::regprocedure").fetchone()
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TYPE {}.claimed_job_widened AS ({}, widened text)").format(
            sql.Identifier(schema), table))
        # Moved, not renamed: the function names its parameters queue_pop.queue and so on.
        conn.execute("CREATE SCHEMA before_widening")
        conn.execute("ALTER FUNCTION queue_pop(text, text, integer, interval) SET SCHEMA before_widening")
        conn.execute(sql.SQL(
            "CREATE FUNCTION {schema}.queue_pop(queue text, worker text DEFAULT NULL, batch int DEFAULT 1,"
            " wait interval DEFAULT NULL) RETURNS SETOF {schema}.claimed_job_widened LANGUAGE plpgsql"
            " SET search_path = pg_catalog, pg_temp AS $f$ BEGIN RETURN QUERY SELECT p.*, 'widened'::text"
            " FROM before_widening.queue_pop(queue, worker, batch, wait) AS p; END $f$"
        ).format(schema=sql.Identifier(schema)))


def test_workers_go_on_when_queue_pop_gains_a_column(capsys):
    """An upgrade that adds a column to what ``queue_pop`` returns must not stop
    a running worker: each client keeps its claim (and the ack that claims)
    as a prepared statement per connection, and a prepared statement whose
    result changes shape fails for good ("cached plan must not change result
    type", 0A000). The clients name the columns they read, so theirs keep
    their shape. Three workers, one per language, serve a database of their
    own; 10 rounds of 6 jobs (every worker's statements prepared), the widening,
    10 rounds more: every job completed once, every language ran jobs after
    the widening, and the Node worker reported no error."""
    admin = psycopg.connect(DSN, autocommit=True)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(WIDEN_DB)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(WIDEN_DB)))
    dsn = psycopg.conninfo.make_conninfo(DSN, dbname=WIDEN_DB)
    db = psycopg.connect(dsn, autocommit=True)
    procs: List[Proc] = []
    try:
        db.execute("CREATE EXTENSION queue")
        procs = start_workers(dsn, "widened")
        for p in procs:
            assert p.ready.wait(20), f"the {p.lang} worker did not start: {p.lines}"

        def rounds(first: int) -> List[int]:
            ids = []
            for r in range(10):
                with db.transaction():
                    ids += [pgqueue.push(db, "widened", {"i": first + r * 6 + k, "ms": 2}) for k in range(6)]
                wait_until(lambda: db.execute("SELECT count(*) FROM queue.all_jobs WHERE id = ANY(%s)"
                                              " AND status = 'completed'", (ids,)).fetchone()[0] == len(ids),
                           timeout=30, interval=0.02, what=f"round {r} of the jobs from {first} completed")
            return ids

        before = rounds(0)
        widen_queue_pop(db)
        assert db.execute("SELECT widened FROM queue_pop('nothing-here')").fetchall() == []
        after = rounds(60)
    finally:
        codes = {p.lang: p.stop() for p in procs}
        db.close()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(WIDEN_DB)))
        admin.close()
    assert codes["python"] == 0 and codes["rust"] == 0 and codes["node"] in (0, -signal.SIGTERM), codes
    by_lang = {p.lang: p for p in procs}
    assert not [e for e in by_lang["node"].lines if e.get("event") == "error"], by_lang["node"].lines[-5:]
    starts = [i for p in procs for i in p.started()]
    assert sorted(starts) == sorted(before + after), "a job was started twice, or not at all"
    ran_after = {p.lang: len(set(p.started()) & set(after)) for p in procs}
    assert all(n > 0 for n in ran_after.values()), f"a worker ran nothing after the widening: {ran_after}"
    with capsys.disabled():
        print(f"\n[queue_pop widened] jobs run after the widening: {ran_after}")
