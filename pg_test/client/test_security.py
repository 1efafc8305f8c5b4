"""Security through real connections with real roles (README, Security model).

* No escalation: a non-superuser database owner plants shadow functions
  (date_bin, format, now, pg_notify, pg_has_role, ...) in public and in a
  schema it puts first with ALTER DATABASE ... SET search_path; every worker
  duty and every public function then runs, and none of the shadows ever
  does.
* Per-queue access: login roles confined by queue_grant_access cannot read,
  delay, claim, ack, fail, touch, cancel or stall jobs of another queue,
  through any function; each refusal has its SQLSTATE and changes nothing.
* Schedules belong to their real creator; roles are never silently adopted.
"""
import re
import time
import uuid

import psycopg
import pytest

from conftest import DSN, connect, wait_for


def dsn_for(user, dbname=None):
    """The test cluster's DSN as another login role (trust auth on loopback)."""
    dsn = re.sub(r"user=\S+", f"user={user}", DSN)
    if dbname:
        dsn = re.sub(r"dbname=\S+", f"dbname={dbname}", dsn)
    return dsn


def as_role(user, dbname=None):
    """An autocommit connection as `user`."""
    return psycopg.connect(dsn_for(user, dbname), autocommit=True)


def sqlstate_of(conn, sql, args=None):
    """Run `sql`, which must fail; its SQLSTATE (the transaction is rolled back)."""
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value.diag.sqlstate


def snapshot(conn):
    """Every job and schedule as stored, to prove a refusal changed nothing.
    Jobs left by other test files (queues named t-..., conftest's queue_name)
    are left out: the background workers may expire their leases or promote
    them while this file runs, which is not a change a refused call made."""
    jobs = conn.execute(
        """SELECT id, queue, status::text, attempts, lease_until::text, run_at::text, last_error,
                  result::text, progress::text, serial_group, group_waiting
             FROM queue.all_jobs WHERE queue NOT LIKE 't-%' ORDER BY id""").fetchall()
    schedules = conn.execute("SELECT name, owner, queue, schedule FROM queue.schedules ORDER BY name").fetchall()
    return jobs, schedules


# ---------------------------------------------------------------------------
# No escalation through the search_path
# ---------------------------------------------------------------------------

SHADOWS = [
    # name, argument types: each better-matching than, or equal to, a
    # built-in the extension's SQL calls; placed before pg_catalog in the path
    ("date_bin", "text, timestamptz, timestamptz", "timestamptz"),
    ("format", "text", "text"),
    ("format", "text, text", "text"),
    ("format", "text, text, text", "text"),
    ("format", "text, int", "text"),
    ("now", "", "timestamptz"),
    ("clock_timestamp", "", "timestamptz"),
    ("pg_notify", "text, text", "void"),
    ("pg_has_role", "oid, text, text", "boolean"),
    ("pg_has_role", "name, text, text", "boolean"),
    ("current_setting", "text", "text"),
    ("current_setting", "text, boolean", "text"),
    ("set_config", "text, text, boolean", "text"),
    ("jsonb_build_object", "text, int", "jsonb"),
    ("pg_advisory_xact_lock", "bigint", "void"),
    ("pg_try_advisory_xact_lock", "bigint", "boolean"),
    ("to_jsonb", "anyelement", "jsonb"),
    ("array_to_string", "text[], text", "text"),
    ("round", "numeric, int", "numeric"),
    ("date_part", "text, interval", "float8"),
    ("lower", "text", "text"),
    ("btrim", "text", "text"),
    ("quote_literal", "text", "text"),
    ("pg_get_userbyid", "oid", "name"),
    ("length", "text", "int"),
]


def plant_shadows(conn, schema):
    """Shadow functions in `schema` that record that they ran (and return a plausible value)."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.ran (fn text, at timestamptz DEFAULT pg_catalog.now(), who text)")
    conn.execute(f"GRANT INSERT, SELECT ON {schema}.ran TO PUBLIC")
    for name, args, ret in SHADOWS:
        params = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(args.split(","))) if args else ""
        value = {"timestamptz": "pg_catalog.now()", "text": "'shadow'", "void": "NULL", "boolean": "true",
                 "jsonb": "'{}'::jsonb", "numeric": "0", "float8": "0", "name": "'shadow'", "int": "0"}[ret]
        body = (f"INSERT INTO {schema}.ran (fn, who) VALUES ('{name}({args})', current_user); "
                f"SELECT {value}::{ret}" if ret != "void" else
                f"INSERT INTO {schema}.ran (fn, who) VALUES ('{name}({args})', current_user)")
        conn.execute(f"CREATE OR REPLACE FUNCTION {schema}.{name}({params}) RETURNS {ret} "
                     f"LANGUAGE sql VOLATILE AS $${body}$$")
        conn.execute(f"GRANT EXECUTE ON FUNCTION {schema}.{name}({args}) TO PUBLIC")


def restart_workers(conn):
    """Terminate the background workers, the launcher included; the postmaster
    starts the launcher again (a second later), which starts the services, in
    sessions that read the database's settings afresh."""
    old = set(r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'queue %'").fetchall())
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type LIKE 'queue %'")

    def restarted():
        now = set(r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'queue %'").fetchall())
        # The launcher, restarted too, and the three services it starts again.
        return len(now) == 4 and not (now & old)
    deadline = time.monotonic() + 20
    while not restarted():
        assert time.monotonic() < deadline, "the workers did not come back"
        time.sleep(0.1)


@pytest.fixture
def hostile_database_owner():
    """The served database handed to a non-superuser owner who plants shadows
    in public and in a schema of its own, put before pg_catalog for every
    session of the database. Undone afterwards."""
    owner = "sec_owner_" + uuid.uuid4().hex[:6]
    with connect() as su:
        su.execute(f"CREATE ROLE {owner} LOGIN")
        su.execute(f"GRANT queue_admin, queue_producer, queue_worker TO {owner}")
        su.execute(f"ALTER DATABASE postgres OWNER TO {owner}")
    try:
        with as_role(owner) as o:
            o.execute("CREATE SCHEMA shadow")
            plant_shadows(o, "shadow")
            plant_shadows(o, "public")
            o.execute("ALTER DATABASE postgres SET search_path = shadow, pg_catalog, public")
        with connect() as su:
            restart_workers(su)
        yield owner
    finally:
        with connect() as su:
            su.execute("ALTER DATABASE postgres RESET search_path")
            su.execute("ALTER DATABASE postgres OWNER TO postgres")
            su.execute("DROP SCHEMA IF EXISTS shadow CASCADE")
            for name, args, _ in SHADOWS:
                su.execute(f"DROP FUNCTION IF EXISTS public.{name}({args})")
            su.execute("DROP TABLE IF EXISTS public.ran")
            su.execute(f"REVOKE queue_admin, queue_producer, queue_worker FROM {owner}")
            su.execute(f"DROP ROLE {owner}")
            restart_workers(su)


def shadow_runs(conn):
    """Every recorded run of a shadow function, in either schema."""
    return conn.execute("SELECT fn, who FROM shadow.ran UNION ALL SELECT fn, who FROM public.ran").fetchall()


def test_shadow_functions_never_run(hostile_database_owner, queue_name):
    """Every worker duty and every public function, with the hostile path in force."""
    owner = hostile_database_owner
    q = queue_name
    with connect() as su:
        # The workers' sessions carry the database's setting, and pin their own.
        assert su.execute("SHOW search_path").fetchone()[0] == "shadow, pg_catalog, public"
        # The shadows are live: called unqualified here they win.
        su.execute("SELECT now()")
        assert shadow_runs(su), "the shadow functions are not in the way: the test would prove nothing"
        su.execute("DELETE FROM shadow.ran")
        su.execute("DELETE FROM public.ran")

    with as_role(owner) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "shadow, pg_catalog, public"
        c.execute("DELETE FROM shadow.ran")
        # Worker duties: promotion of delayed jobs and retries, lease expiry,
        # serial-group release, retention, stale workers, the scheduler, the
        # counters' flush and recount, and the notifier.
        c.execute("SELECT queue_push(%s, '{}', delay => '50 milliseconds')", (q,))
        c.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (q, q + "-g"))
        c.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (q, q + "-g"))
        c.execute("SELECT queue_push(%s, '{}', timeout => '10 milliseconds', max_attempts => 2,"
                  " backoff_base => '0', backoff_max => '0')", (q,))
        claimed = c.execute("SELECT id, attempt FROM queue_pop(%s, 'w1', 10)", (q,)).fetchall()
        assert claimed
        c.execute("SELECT queue_heartbeat('w1', '{\"host\": \"h\"}')")
        c.execute("SELECT queue_schedule(%s, 'every 1 second', %s)", (q + "-s", q))
        # wait for the maintenance worker: the lease expires and is retried,
        # the delayed job is promoted, the schedule fires
        with connect() as su:
            wait_for(su, "SELECT count(*) > 0 FROM queue.all_jobs WHERE queue = %s"
                         " AND last_error LIKE 'lease expired%%'", (q,), True, timeout=10)
            wait_for(su, "SELECT count(*) FROM queue_schedules() WHERE name = %s AND last_job_id IS NOT NULL",
                     (q + "-s",), 1, timeout=10)
            wait_for(su, "SELECT count(*) FROM queue.jobs WHERE queue = %s AND status IN ('scheduled', 'retrying')",
                     (q,), 0, timeout=10)
        # the rest of the API, each public function once
        for job_id, attempt in c.execute("SELECT id, attempt FROM queue_pop(%s, 'w1', 10)", (q,)).fetchall():
            c.execute("SELECT queue_touch(%s, '1 minute', %s)", (job_id, attempt))
            c.execute("SELECT queue_progress(%s, 1, 2, 'half', %s)", (job_id, attempt))
            c.execute("SELECT queue_fail(%s, 'boom', %s, permanent => true)", (job_id, attempt))
        dead = c.execute("SELECT id FROM queue_dead(%s)", (q,)).fetchall()
        assert dead
        c.execute("SELECT queue_retry(%s)", (dead[0][0],))
        c.execute("SELECT queue_retry_all(%s)", (q,))
        for job_id, attempt in c.execute("SELECT id, attempt FROM queue_pop(%s, 'w1', 10)", (q,)).fetchall():
            c.execute("SELECT queue_ack(%s, '{\"ok\": 1}', %s)", (job_id, attempt))
        ids = c.execute("SELECT queue_push_batch(%s, ARRAY['{}'::jsonb, '{}'], 'high')", (q,)).fetchall()
        c.execute("SELECT queue_push(%s, '{}', 'low', dedupe_key => 'k')", (q,))
        c.execute("SELECT * FROM queue_peek(%s, 5)", (q,))
        c.execute("SELECT queue_job(%s)", (ids[0][0],))
        c.execute("SELECT queue_cancel(%s)", (ids[0][0],))
        c.execute("SELECT queue_ack(ARRAY(SELECT id FROM queue_pop(%s, 'w1', 10)))", (q,))
        c.execute("SELECT queue_delete(%s)", (ids[0][0],))
        for sql in ["SELECT queue_stats()", "SELECT queue_stats(%s)", "SELECT queue_size(%s)",
                    "SELECT * FROM queue_list()", "SELECT queue_metrics()", "SELECT queue_metrics(%s)",
                    "SELECT queue_health()", "SELECT queue_prometheus()", "SELECT * FROM queue_workers()",
                    "SELECT queue_reap_workers('1 hour')", "SELECT * FROM queue_schedules()",
                    "SELECT * FROM queue_timeline()", "SELECT queue_trigger(%s)", "SELECT queue_tick()",
                    "SELECT queue_priority('high')", "SELECT queue_purge_dead(%s)", "SELECT queue_cleanup('1 hour')",
                    "SELECT queue_clear(%s)", "SELECT * FROM queue_access_rules()",
                    "SELECT queue_unschedule(%s)"]:
            n = sql.count("%s")
            arg = {"SELECT queue_trigger(%s)": q + "-s", "SELECT queue_unschedule(%s)": q + "-s"}.get(sql, q)
            c.execute(sql, (arg,) * n)
        # Retention (the duty the issue names: date_bin runs for every job it
        # deletes), a by-hand clean-up, and a recount of the counters after
        # tallies were lost: each on rows, so every call in them executes.
        with connect() as su:
            su.execute("ALTER SYSTEM SET queue.retention = '1 millisecond'")
            su.execute("SELECT pg_reload_conf()")
            try:
                wait_for(su, "SELECT count(*) FROM queue.finished_jobs WHERE queue = %s", (q,), 0, timeout=10)
            finally:
                su.execute("ALTER SYSTEM RESET queue.retention")
                su.execute("SELECT pg_reload_conf()")
        for job_id, attempt in c.execute("SELECT id, attempt FROM queue_pop(%s, 'w1', 10)", (q,)).fetchall():
            c.execute("SELECT queue_ack(%s, NULL, %s)", (job_id, attempt))
        c.execute("SELECT queue_cleanup('0 seconds')")
        with c.transaction():
            c.execute("SELECT queue_push(%s || '-' || i, '{}') FROM generate_series(1, 1600) i", (q,))
        with connect() as su:
            wait_for(su, "SELECT (queue_health() -> 'counters' ->> 'recount_pending')::boolean", (), False,
                     timeout=10)
        c.execute("SELECT queue_clear(%s || '-' || i) FROM generate_series(1, 1600) i", (q,))
        time.sleep(0.5)  # one more round of every worker
        c.execute("SELECT queue_tick()")
        assert shadow_runs(c) == []


def test_a_hostile_session_path_in_another_database(queue_name):
    """Outside the served database the counters are written before commit by
    the pushing backend as the bootstrap superuser: a session path with
    shadows first must not reach that code either."""
    db = "sec_other_" + uuid.uuid4().hex[:6]
    user = "sec_user_" + uuid.uuid4().hex[:6]
    with connect() as su:
        su.execute(f"CREATE DATABASE {db}")
        su.execute(f"CREATE ROLE {user} LOGIN")
        su.execute(f"GRANT queue_producer, queue_worker TO {user}")
    try:
        with as_role("postgres", db) as su:
            su.execute("CREATE EXTENSION queue")
            su.execute(f"CREATE SCHEMA shadow AUTHORIZATION {user}")
        with as_role(user, db) as c:
            plant_shadows(c, "shadow")
            c.execute("SET search_path = shadow, pg_catalog, public")
            c.execute("SELECT now()")
            assert c.execute("SELECT count(*) FROM shadow.ran").fetchone()[0] > 0
            c.execute("DELETE FROM shadow.ran")
            job = c.execute("SELECT queue_push(%s, '{}')", (queue_name,)).fetchone()[0]
            got = c.execute("SELECT id, attempt FROM queue_pop(%s)", (queue_name,)).fetchone()
            assert got[0] == job
            c.execute("SELECT queue_ack(%s, NULL, %s)", got)
            assert c.execute("SELECT queue_size(%s)", (queue_name,)).fetchone()[0] == 0
            assert c.execute("SELECT fn FROM shadow.ran").fetchall() == []
    finally:
        with connect() as su:
            su.execute(f"DROP DATABASE IF EXISTS {db}")
            su.execute(f"DROP ROLE IF EXISTS {user}")


def test_every_sql_function_pins_its_search_path():
    """Every SQL and PL/pgSQL function of the extension has SET search_path;
    the C functions run no SQL of their own but fixed, schema-qualified
    statements (src/stats.rs, src/services.rs, src/wakeup.rs)."""
    with connect() as c:
        rows = c.execute(
            """SELECT p.oid::regprocedure::text, l.lanname, p.proconfig
                 FROM pg_proc p
                 JOIN pg_language l ON l.oid = p.prolang
                 JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
                WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'queue')""").fetchall()
    assert len(rows) > 100
    unpinned = [sig for sig, lang, config in rows
                if lang != "c" and not any(s.startswith("search_path=pg_catalog, pg_temp") for s in (config or []))]
    assert unpinned == []


# ---------------------------------------------------------------------------
# Per-queue access
# ---------------------------------------------------------------------------

@pytest.fixture
def teams():
    """Two confined teams (producer + worker login roles each), an unconfined
    app, and a confined admin. The rules name group roles; the login roles
    are their members."""
    tag = uuid.uuid4().hex[:6]
    names = {k: f"sec_{k}_{tag}" for k in ("team_a", "team_b", "alice", "bob", "app", "ops_a")}
    qa, qb = f"a{tag}.jobs", f"b{tag}.jobs"
    with connect() as su:
        su.execute(f"CREATE ROLE {names['team_a']} NOLOGIN")
        su.execute(f"CREATE ROLE {names['team_b']} NOLOGIN")
        for user, team in (("alice", "team_a"), ("bob", "team_b")):
            su.execute(f"CREATE ROLE {names[user]} LOGIN IN ROLE {names[team]}, queue_producer, queue_worker")
        su.execute(f"CREATE ROLE {names['app']} LOGIN IN ROLE queue_producer, queue_worker")
        su.execute(f"CREATE ROLE {names['ops_a']} LOGIN IN ROLE queue_admin")
        for team, prefix in (("team_a", f"a{tag}.*"), ("team_b", f"b{tag}.*")):
            for access in ("produce", "work"):
                assert su.execute("SELECT queue_grant_access(%s::regrole, %s, %s)",
                                  (names[team], access, prefix)).fetchone()[0]
        su.execute("SELECT queue_grant_access(%s::regrole, 'read', %s)", (names["ops_a"], f"a{tag}.*"))
        su.execute("SELECT queue_grant_access(%s::regrole, 'produce', %s)", (names["ops_a"], f"a{tag}.*"))
    yield names, qa, qb
    with connect() as su:
        for role in names.values():
            su.execute("SELECT queue_revoke_access(%s::regrole)", (role,))
        su.execute("DELETE FROM queue.schedules WHERE owner LIKE %s", (f"sec_%_{tag}",))
        for key in ("alice", "bob", "app", "ops_a", "team_a", "team_b"):
            su.execute(f"DROP ROLE {names[key]}")


def test_confined_producers_push_only_into_their_queues(teams):
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, connect() as su:
        assert alice.execute("SELECT queue_push(%s, '{}')", (qa,)).fetchone()[0] > 0
        before = snapshot(su)
        for sql, args in [
            ("SELECT queue_push(%s, '{}')", (qb,)),
            ("SELECT queue_push(%s, '{}', 'high')", (qb,)),
            ("SELECT queue_push_batch(%s, ARRAY['{}'::jsonb])", (qb,)),
            ("SELECT * FROM queue_peek(%s)", (qb,)),
            ("SELECT queue_size(%s)", (qb,)),
            ("SELECT * FROM queue_pop(%s)", (qb,)),
        ]:
            assert sqlstate_of(alice, sql, args) == "42501", sql
        assert snapshot(su) == before


def test_confined_workers_cannot_touch_another_queues_jobs(teams):
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, connect() as su:
        job = bob.execute("SELECT queue_push(%s, '{\"secret\": 1}')", (qb,)).fetchone()[0]
        waiting = bob.execute("SELECT queue_push(%s, '{}')", (qb,)).fetchone()[0]
        claim = bob.execute("SELECT id, attempt FROM queue_pop(%s, 'bob')", (qb,)).fetchone()
        assert claim[0] == job
        before = snapshot(su)
        # by id, another queue's job is unknown: false / NULL, nothing changes
        assert alice.execute("SELECT queue_ack(%s)", (job,)).fetchone()[0] is False
        assert alice.execute("SELECT queue_ack(%s, NULL, %s)", claim).fetchone()[0] is False
        assert alice.execute("SELECT queue_ack(ARRAY[%s::bigint])", (job,)).fetchone()[0] == 0
        assert alice.execute("SELECT queue_ack_batch(ARRAY[%s::bigint], ARRAY[%s::int])", claim).fetchone()[0] == []
        assert alice.execute("SELECT count(*) FROM queue_ack_pop(%s, 'alice', 1, ARRAY[%s::bigint], ARRAY[%s::int])",
                             (qa, *claim)).fetchone()[0] == 0
        assert sqlstate_of(alice, "SELECT * FROM queue_ack_pop(%s, 'alice', 1, ARRAY[%s::bigint])", (qb, job)) == "42501"
        assert alice.execute("SELECT queue_fail(%s, 'x')", (job,)).fetchone()[0] is None
        assert alice.execute("SELECT queue_fail(%s, 'x', retry_in => '1 hour')", (job,)).fetchone()[0] is None
        assert alice.execute("SELECT queue_touch(%s, '1 hour')", (job,)).fetchone()[0] is False
        assert alice.execute("SELECT queue_progress(%s, 1, 2)", (job,)).fetchone()[0] is False
        assert alice.execute("SELECT queue_job(%s)", (job,)).fetchone()[0] is None
        assert snapshot(su) == before
        # bob's own claim still works, with its attempt
        assert bob.execute("SELECT queue_progress(%s, 1, 2, 'half', %s)", claim).fetchone()[0] is True
        assert bob.execute("SELECT queue_ack(%s, NULL, %s)", claim).fetchone()[0] is True
        assert bob.execute("SELECT queue_job(%s) ->> 'status'", (waiting,)).fetchone()[0] == "pending"


def test_confined_producers_cannot_depend_on_or_read_another_teams_jobs(teams):
    """A dependency reads another job (its completion, its result) and
    locks it while the push commits: a confined role may only depend on jobs
    of queues it may produce into or work, not merely read. Another
    team's id is refused as unknown (22023, as for an id that never
    existed) and nothing is pushed; queue_dependencies shows nothing of a
    job the caller may not read."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, connect() as su:
        secret = bob.execute("SELECT queue_push(%s, '{}')", (qb,)).fetchone()[0]
        claim = bob.execute("SELECT id, attempt FROM queue_pop(%s, 'bob')", (qb,)).fetchone()
        assert bob.execute("SELECT queue_ack(%s, '{\"secret\": 1}', %s)", claim).fetchone()[0] is True
        own = bob.execute("SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint])", (qb, secret)).fetchone()[0]
        mine = alice.execute("SELECT queue_push(%s, '{}')", (qa,)).fetchone()[0]
        before = snapshot(su)
        for sql, args in [
            ("SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint])", (qa, secret)),
            ("SELECT queue_push_batch(%s, ARRAY['{}'::jsonb], depends_on => ARRAY[%s::bigint])", (qa, secret)),
            ("SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint, 999999999])", (qa, mine)),
        ]:
            assert sqlstate_of(alice, sql, args) == "22023", sql
        assert sqlstate_of(bob, "SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint])", (qb, mine)) == "22023"
        assert snapshot(su) == before
        assert alice.execute("SELECT count(*) FROM queue_dependencies(%s)", (own,)).fetchone()[0] == 0
        assert bob.execute("SELECT dependency, result FROM queue_dependencies(%s)", (own,)).fetchall() == \
            [(secret, {"secret": 1})]
        # within its own queues a confined producer uses dependencies freely
        child = alice.execute("SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint])", (qa, mine)).fetchone()[0]
        assert alice.execute("SELECT queue_job(%s) ->> 'status'", (child,)).fetchone()[0] == "blocked"


def test_a_role_that_reads_pg_locks_cannot_hold_a_group_or_the_counters(teams):
    """pg_locks shows every held lock's key to anyone, and any role may call
    pg_advisory_lock. The queue's own locks are under a lock tag SQL cannot
    name: a role with no queue grant at all that takes the key it read
    holds nothing the queue waits for."""
    names, qa, qb = teams
    eve = names["team_b"] + "_eve"
    group = qb + ":c1"
    with connect() as su:
        su.execute(f"CREATE ROLE {eve} LOGIN")
    try:
        with psycopg.connect(dsn_for(names["bob"])) as bob_tx, as_role(names["bob"]) as bob, as_role(eve) as e:
            bob_tx.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qb, group))
            keys = e.execute("SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
                             " WHERE locktype = 'advisory' AND classid = 1903519093 AND objsubid = 3").fetchall()
            assert keys, "the group's lock shows in pg_locks"
            bob_tx.commit()
            for (key,) in keys:
                e.execute("SELECT pg_advisory_lock(%s)", (key,))
            e.execute("SELECT pg_advisory_lock(1903519093, 1)")
            bob.execute("SET lock_timeout = '2s'")
            bob.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qb, group))
            claim = bob.execute("SELECT id, attempt FROM queue_pop(%s, 'bob')", (qb,)).fetchone()
            assert claim is not None
            assert bob.execute("SELECT queue_ack(%s, attempt => %s)", claim).fetchone()[0] is True
            with connect() as su:
                su.execute("SET lock_timeout = '2s'")
                assert su.execute("SELECT queue_stats(%s)", (qb,)).fetchone()[0]["total_pushed"] >= 2
            e.execute("SELECT pg_advisory_unlock_all()")
    finally:
        with connect() as su:
            su.execute(f"DROP ROLE {eve}")


def test_a_lock_held_on_an_expiring_jobs_dependents_holds_up_no_other_expiry(queue_name):
    """A last attempt whose lease lapses cancels its dependents, releasing
    their groups, under their groups' locks. A session holding one of those
    locks (an open transaction that pushed into a dependent's group) must
    not hold up the expiry of every other lease: that job waits for a later
    pass, the others expire."""
    q = queue_name
    group = q + ":g"
    with connect() as su, connect(autocommit=False) as holder:
        parent = su.execute("SELECT queue_push(%s, '{}', max_attempts => 1, timeout => '1 second')", (q,)).fetchone()[0]
        assert su.execute("SELECT id FROM queue_pop(%s, 'w')", (q,)).fetchone() == (parent,)
        child = su.execute("SELECT queue_push(%s, '{}', serial_group => %s, depends_on => ARRAY[%s::bigint])",
                           (q + "-c", group, parent)).fetchone()[0]
        other = su.execute("SELECT queue_push(%s, '{}', max_attempts => 1, timeout => '1 second')",
                           (q + "-x",)).fetchone()[0]
        assert su.execute("SELECT id FROM queue_pop(%s, 'w')", (q + "-x",)).fetchone() == (other,)
        holder.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (q + "-c", group))
        try:
            wait_for(su, "SELECT status::text FROM queue.all_jobs WHERE id = %s", (other,), "expired", timeout=6)
            assert su.execute("SELECT status::text FROM queue.all_jobs WHERE id = %s", (parent,)).fetchone() == \
                ("processing",), "the parent waits for the group"
        finally:
            holder.commit()
        wait_for(su, "SELECT status::text FROM queue.all_jobs WHERE id = %s", (parent,), "expired", timeout=6)
        wait_for(su, "SELECT status::text FROM queue.all_jobs WHERE id = %s", (child,), "cancelled", timeout=6)


def test_a_confined_admin_locks_no_schedule_it_may_not_see(teams):
    """A schedule of another team's queue is unknown to a confined admin,
    and so never locked by its calls: it keeps firing while the admin's
    transaction stays open."""
    names, qa, qb = teams
    other = qb + "-every"
    with connect() as su, psycopg.connect(dsn_for(names["ops_a"])) as ops:
        su.execute("SELECT queue_schedule(%s, 'every 1 second', %s)", (other, qb))
        try:
            assert ops.execute("SELECT queue_unschedule(%s)", (other,)).fetchone()[0] is False
            before = su.execute("SELECT last_job_id FROM queue.schedules WHERE name = %s", (other,)).fetchone()[0]
            wait_for(su, "SELECT last_job_id IS DISTINCT FROM %s FROM queue.schedules WHERE name = %s",
                     (before, other), True, timeout=5)
        finally:
            ops.rollback()
            su.execute("SELECT queue_unschedule(%s)", (other,))


def test_an_authenticator_login_takes_the_rules_of_the_role_it_becomes(teams):
    """A NOINHERIT login (PostgREST's authenticator) holds no privilege of its
    own: after SET ROLE it is confined by that role's rules alone, so a
    confined member role does not confine its service role."""
    names, qa, qb = teams
    authn, service = names["team_a"] + "_authn", names["team_a"] + "_service"
    with connect() as su:
        su.execute(f"CREATE ROLE {service} NOLOGIN IN ROLE queue_producer, queue_worker")
        su.execute(f"CREATE ROLE {authn} LOGIN NOINHERIT IN ROLE {names['team_a']}, {service}")
    try:
        with as_role(authn) as a:
            a.execute(f"SET ROLE {service}")
            assert a.execute("SELECT queue_push(%s, '{}')", (qb,)).fetchone()[0] > 0
    finally:
        with connect() as su:
            su.execute(f"DROP ROLE {authn}")
            su.execute(f"DROP ROLE {service}")


def test_a_read_rule_does_not_let_a_role_lock_another_teams_job_by_depending_on_it(teams):
    """Depending on a live job locks it until the push commits, and a locked
    job is skipped by claims: a role that may only read another team's queue
    must not hold its jobs that way."""
    names, qa, qb = teams
    with connect() as su:
        su.execute("SELECT queue_grant_access(%s::regrole, 'read', %s)", (names["team_a"], qb))
    with as_role(names["bob"]) as bob, connect() as su, psycopg.connect(dsn_for(names["alice"])) as alice:
        theirs = bob.execute("SELECT queue_push(%s, '{}')", (qb,)).fetchone()[0]
        assert alice.execute("SELECT queue_job(%s) ->> 'status'", (theirs,)).fetchone()[0] == "pending"
        before = snapshot(su)
        assert sqlstate_of(alice, "SELECT queue_push(%s, '{}', depends_on => ARRAY[%s::bigint])",
                           (qa, theirs)) == "22023"
        alice.rollback()
        assert snapshot(su) == before
        assert bob.execute("SELECT id FROM queue_pop(%s, 'bob')", (qb,)).fetchone() == (theirs,)


def test_a_confined_producer_sees_and_drives_only_its_own_batches(teams):
    """Another team's batch is unknown to a confined producer: not listed,
    not reported, not joinable, not closable, not cancellable; and a
    callback into another team's queue is refused when the batch opens."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, connect() as su:
        theirs = bob.execute("SELECT queue_batch_open(%s::jsonb)", ('{"queue": "%s"}' % qb,)).fetchone()[0]
        mine = alice.execute("SELECT queue_batch_open()").fetchone()[0]
        before = snapshot(su)
        assert alice.execute("SELECT queue_batch(%s)", (theirs,)).fetchone()[0] is None
        assert [r[0] for r in alice.execute("SELECT id FROM queue_batches()").fetchall()] == [mine]
        assert sqlstate_of(alice, "SELECT queue_push(%s, '{}', batch => %s)", (qa, theirs)) == "22023"
        assert sqlstate_of(alice, "SELECT queue_batch_close(%s)", (theirs,)) == "22023"
        assert alice.execute("SELECT queue_batch_cancel(%s)", (theirs,)).fetchone()[0] is False
        assert sqlstate_of(alice, "SELECT queue_batch_open(%s::jsonb)", ('{"queue": "%s"}' % qb,)) == "42501"
        assert snapshot(su) == before
        assert su.execute("SELECT state FROM queue.batches WHERE id = %s", (theirs,)).fetchone()[0] == "open"
        # the owner and an unconfined role see it
        assert bob.execute("SELECT queue_batch(%s) ->> 'state'", (theirs,)).fetchone()[0] == "open"
        assert theirs in [r[0] for r in su.execute("SELECT id FROM queue_batches('open')").fetchall()]


def test_pausing_is_for_admins_and_a_confined_admin_pauses_only_its_queues(teams):
    """A worker cannot pause any queue; a confined admin pauses its own team's
    queue but not another's, and sees only its own pauses."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["ops_a"]) as ops, connect() as su:
        assert sqlstate_of(alice, "SELECT queue_pause(%s)", (qa,)) == "42501"
        assert sqlstate_of(ops, "SELECT queue_pause(%s)", (qb,)) == "42501"
        assert su.execute("SELECT queue_pause(%s)", (qb,)).fetchone()[0] is True
        try:
            assert sqlstate_of(ops, "SELECT queue_resume(%s)", (qb,)) == "42501"
            assert ops.execute("SELECT queue_pause(%s)", (qa,)).fetchone()[0] is True
            assert [r[0] for r in ops.execute("SELECT queue FROM queue_settings() WHERE paused").fetchall()] == [qa]
            assert ops.execute("SELECT queue_health() -> 'paused_queues'").fetchone()[0] == [qa]
            assert ops.execute("SELECT queue_resume(%s)", (qa,)).fetchone()[0] is True
        finally:
            su.execute("SELECT queue_resume(%s)", (qb,))
            su.execute("DELETE FROM queue.queue_settings WHERE queue IN (%s, %s)", (qa, qb))


def test_configuring_is_for_admins_and_a_confined_admin_configures_only_its_queues(teams):
    """Queue defaults change what every producer's pushes get: a worker or
    producer cannot set them, a confined admin sets its own team's only,
    and its pushes pick them up."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["ops_a"]) as ops, connect() as su:
        before = snapshot(su)
        assert sqlstate_of(alice, "SELECT queue_configure(%s, max_attempts => 1)", (qa,)) == "42501"
        assert sqlstate_of(ops, "SELECT queue_configure(%s, max_attempts => 1)", (qb,)) == "42501"
        assert snapshot(su) == before
        try:
            assert ops.execute("SELECT queue_configure(%s, max_attempts => 9) -> 'max_attempts'", (qa,)).fetchone()[0] == 9
            job = alice.execute("SELECT queue_push(%s, '{}')", (qa,)).fetchone()[0]
            assert su.execute("SELECT max_attempts FROM queue.jobs WHERE id = %s", (job,)).fetchone()[0] == 9
            assert [r[0] for r in ops.execute("SELECT queue FROM queue_settings()").fetchall()] == [qa]
        finally:
            su.execute("DELETE FROM queue.queue_settings WHERE queue IN (%s, %s)", (qa, qb))


def test_confined_producers_cannot_stall_another_teams_serial_group(teams):
    """Serial groups span queues: a confined producer may only use groups in
    its namespace, so it can neither demote another team's waiting head with a
    better priority nor squat a group name before them."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, connect() as su:
        group = qb + ":customer-1"
        head = bob.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qb, group)).fetchone()[0]
        before = snapshot(su)
        assert sqlstate_of(alice, "SELECT queue_push(%s, '{}', priority => -20, serial_group => %s)",
                           (qa, group)) == "42501"
        assert sqlstate_of(alice, "SELECT queue_push(%s, '{}', serial_group => 'customer-2')", (qa,)) == "42501"
        assert snapshot(su) == before
        assert bob.execute("SELECT id FROM queue_pop(%s)", (qb,)).fetchone()[0] == head
        # alice's own groups work, named like her queues
        assert alice.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qa, qa + ":c1")).fetchone()[0] > 0


def test_unconfined_roles_work_as_before(teams):
    """A role bound by no rule reaches every queue, as without rules."""
    names, qa, qb = teams
    with as_role(names["app"]) as app:
        for q in (qa, qb):
            job = app.execute("SELECT queue_push(%s, '{}', serial_group => 'anything')", (q,)).fetchone()[0]
            claimed = app.execute("SELECT id, attempt FROM queue_pop(%s, 'app', 10)", (q,)).fetchall()
            for job_id, attempt in claimed:
                assert app.execute("SELECT queue_ack(%s, NULL, %s)", (job_id, attempt)).fetchone()[0]
            assert app.execute("SELECT queue_job(%s)", (job,)).fetchone()[0] is not None


def test_a_confined_admin_sees_and_manages_only_its_queues(teams):
    names, qa, qb = teams
    with as_role(names["app"]) as app:
        app.execute("SELECT queue_push(%s, '{}')", (qa,))
        app.execute("SELECT queue_push(%s, '{}')", (qb,))
        dead_b = app.execute("SELECT queue_push(%s, '{}', max_attempts => 1)", (qb,)).fetchone()[0]
        for job_id, attempt in app.execute("SELECT id, attempt FROM queue_pop(%s, 'app', 10)", (qb,)).fetchall():
            app.execute("SELECT queue_fail(%s, 'boom', %s, permanent => true)", (job_id, attempt))
        waiting_b = app.execute("SELECT queue_push(%s, '{}')", (qb,)).fetchone()[0]
    with connect() as su:
        wait_for(su, "SELECT count(*) FROM queue_list() WHERE queue = %s", (qb,), 1)
    with as_role(names["ops_a"]) as ops, connect() as su:
        listed = [r[0] for r in ops.execute("SELECT queue FROM queue_list()").fetchall()]
        assert qa in listed and qb not in listed and all(q.startswith(qa.split(".")[0]) for q in listed)
        assert [r for r in ops.execute("SELECT id FROM queue_dead()").fetchall() if r[0] == dead_b] == []
        assert qb not in ops.execute("SELECT queue_prometheus()").fetchone()[0]
        all_stats = ops.execute("SELECT queue_stats()").fetchone()[0]
        su_stats = su.execute("SELECT queue_stats(%s)", (qa,)).fetchone()[0]
        assert all_stats["total_pushed"] == su_stats["total_pushed"]
        before = snapshot(su)
        for sql, args in [("SELECT queue_stats(%s)", (qb,)), ("SELECT queue_metrics(%s)", (qb,)),
                          ("SELECT * FROM queue_dead(%s)", (qb,)), ("SELECT queue_retry_all(%s)", (qb,)),
                          ("SELECT queue_clear(%s)", (qb,)), ("SELECT queue_purge_dead(%s)", (qb,)),
                          ("SELECT queue_schedule('x', '@daily', %s)", (qb,))]:
            assert sqlstate_of(ops, sql, args) == "42501", sql
        assert ops.execute("SELECT queue_retry(%s)", (dead_b,)).fetchone()[0] is False
        assert ops.execute("SELECT queue_delete(%s)", (dead_b,)).fetchone()[0] is False
        assert ops.execute("SELECT queue_cancel(%s)", (waiting_b,)).fetchone()[0] is False
        assert ops.execute("SELECT queue_purge_dead()").fetchone()[0] == 0
        # a confined admin may not lift its own confinement
        assert sqlstate_of(ops, "SELECT queue_revoke_access(%s::regrole)", (names["ops_a"],)) == "42501"
        assert sqlstate_of(ops, "SELECT queue_grant_access(%s::regrole, 'read', '*')", (names["ops_a"],)) == "42501"
        assert snapshot(su) == before


def test_a_confined_admin_learns_nothing_of_another_teams_schedules_and_rules(teams):
    """Another team's schedule is unknown to a confined admin, by every
    function that takes a schedule's name, as it is in queue_schedules(); and
    queue_access_rules() shows it the rules that bind it, not every team's
    patterns."""
    names, qa, qb = teams
    other = qb + "-nightly"
    with connect() as su, as_role(names["ops_a"]) as ops:
        su.execute("SELECT queue_schedule(%s, '@daily', %s)", (other, qb))
        try:
            before = snapshot(su)
            assert ops.execute("SELECT queue_unschedule(%s)", (other,)).fetchone()[0] is False
            assert ops.execute("SELECT queue_unschedule('no-such-schedule')").fetchone()[0] is False
            assert sqlstate_of(ops, "SELECT queue_trigger(%s)", (other,)) == "42704"
            assert sqlstate_of(ops, "SELECT queue_trigger('no-such-schedule')") == "42704"
            with pytest.raises(psycopg.Error) as taken:
                ops.execute("SELECT queue_schedule(%s, '@daily', %s)", (other, qa))
            assert taken.value.diag.sqlstate == "42710" and "postgres" not in str(taken.value)
            assert snapshot(su) == before
            rules = ops.execute("SELECT role, pattern FROM queue_access_rules()").fetchall()
            assert rules and all(role == names["ops_a"] for role, _ in rules), rules
            assert len(su.execute("SELECT * FROM queue_access_rules()").fetchall()) > len(rules)
        finally:
            su.execute("SELECT queue_unschedule(%s)", (other,))


def test_a_worker_row_belongs_to_the_role_that_registered_it(teams):
    """A confined role can neither overwrite another role's worker of the
    same name (its info, its liveness) nor reap it."""
    names, qa, qb = teams
    w = f"w-{qb}"
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, as_role(names["ops_a"]) as ops, \
            connect() as su:
        try:
            # a row from before registered_by existed belongs to its next heartbeat's role
            su.execute("INSERT INTO queue.workers (worker) VALUES (%s)", (w,))
            bob.execute("SELECT queue_heartbeat(%s, '{\"host\": \"bob-host\"}')", (w,))
            assert sqlstate_of(alice, "SELECT queue_heartbeat(%s, '{\"host\": \"evil\"}')", (w,)) == "42501"
            su.execute("UPDATE queue.workers SET last_heartbeat = now() - interval '1 hour' WHERE worker = %s", (w,))
            assert sqlstate_of(alice, "SELECT queue_heartbeat(%s)", (w,)) == "42501"
            assert ops.execute("SELECT queue_reap_workers('5 minutes')").fetchone()[0] == 0
            assert su.execute("SELECT info ->> 'host', last_heartbeat < now() - interval '30 minutes'"
                              " FROM queue.workers WHERE worker = %s", (w,)).fetchone() == ("bob-host", True)
            bob.execute("SELECT queue_heartbeat(%s)", (w,))
            assert su.execute("SELECT last_heartbeat > now() - interval '1 minute' FROM queue.workers"
                              " WHERE worker = %s", (w,)).fetchone() == (True,)
        finally:
            su.execute("DELETE FROM queue.workers WHERE worker = %s", (w,))


def test_schedules_push_only_what_their_owner_may(teams):
    """A schedule fires as its owner: confined to the owner's queues, checked at every run."""
    names, qa, qb = teams
    with connect() as su:
        su.execute(f"GRANT queue_admin TO {names['alice']}")
    try:
        with as_role(names["alice"]) as alice, connect() as su:
            assert sqlstate_of(alice, "SELECT queue_schedule(%s, '@daily', %s)", (qa + "-x", qb)) == "42501"
            alice.execute("SELECT queue_schedule(%s, 'manual', %s)", (qa + "-s", qa))
            # moved into another queue behind the owner's back: refused when it fires
            su.execute("UPDATE queue.schedules SET queue = %s WHERE name = %s", (qb, qa + "-s"))
            assert sqlstate_of(su, "SELECT queue_trigger(%s)", (qa + "-s",)) == "42501"
            su.execute("DELETE FROM queue.schedules WHERE name = %s", (qa + "-s",))
    finally:
        with connect() as su:
            su.execute(f"REVOKE queue_admin FROM {names['alice']}")


def test_a_confined_login_stays_confined_after_set_role(teams):
    """A login may SET ROLE to any role it is a member of, the extension's
    own roles included, and no rule binds those: the rules of the role the
    session logged in as still hold, whatever role it takes."""
    names, qa, qb = teams
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, as_role(names["ops_a"]) as ops, \
            connect() as su:
        secret = bob.execute("SELECT queue_push(%s, '{\"secret\": 1}')", (qb,)).fetchone()[0]
        mine = alice.execute("SELECT queue_push(%s, '{}')", (qa,)).fetchone()[0]
        before = snapshot(su)
        # queue_worker may pop (and not push), queue_producer push (and not pop)
        alice.execute("SET ROLE queue_worker")
        assert sqlstate_of(alice, "SELECT * FROM queue_pop(%s)", (qb,)) == "42501"
        alice.execute("SET ROLE queue_producer")
        for sql, args in [("SELECT queue_push(%s, '{}')", (qb,)),
                          ("SELECT queue_push(%s, '{}', serial_group => %s)", (qa, qb + ":c1")),
                          ("SELECT * FROM queue_peek(%s)", (qb,))]:
            assert sqlstate_of(alice, sql, args) == "42501", sql
        assert alice.execute("SELECT queue_job(%s)", (secret,)).fetchone()[0] is None
        alice.execute("RESET ROLE")
        ops.execute("SET ROLE queue_admin")
        assert sqlstate_of(ops, "SELECT queue_revoke_access(%s::regrole)", (names["ops_a"],)) == "42501"
        assert qb not in [r[0] for r in ops.execute("SELECT queue FROM queue_list()").fetchall()]
        assert sqlstate_of(ops, "SELECT queue_schedule('x', '@daily', %s)", (qb,)) == "42501"
        assert snapshot(su) == before
        # ... and keeps what its rules allow
        alice.execute("SET ROLE queue_worker")
        assert alice.execute("SELECT id FROM queue_pop(%s)", (qa,)).fetchone() == (mine,)
        # A superuser's session that takes a confined role is confined as that role.
        su.execute(f"SET ROLE {names['alice']}")
        assert sqlstate_of(su, "SELECT queue_push(%s, '{}')", (qb,)) == "42501"
        su.execute("RESET ROLE")


def test_a_confined_worker_cannot_lock_or_probe_another_queues_job(teams):
    """queue_fail and queue_release on another queue's job return as for an
    unknown job without taking its row lock: the job's own worker acks it
    while the other transaction is still open, and no transaction id (a
    sign that a lock was taken) betrays that the id exists."""
    names, qa, qb = teams
    with as_role(names["bob"]) as bob, connect() as su, \
            psycopg.connect(dsn_for(names["alice"])) as alice:
        bob.execute("SELECT queue_push(%s, '{}')", (qb,))
        claim = bob.execute("SELECT id, attempt FROM queue_pop(%s, 'bob')", (qb,)).fetchone()
        assert alice.execute("SELECT queue_fail(%s, 'x'), queue_release(%s)", (claim[0], claim[0])).fetchone() == \
            (None, False)
        assert alice.execute("SELECT queue_fail(%s, 'x', attempt => %s)", claim).fetchone()[0] is None
        assert alice.execute("SELECT txid_current_if_assigned()").fetchone()[0] is None
        bob.execute("SET lock_timeout = '2s'")
        assert bob.execute("SELECT queue_ack(%s, attempt => %s)", claim).fetchone()[0] is True
        alice.rollback()


def crc_twins(prefix_a, prefix_b, n=300_000):
    """Two group names, one with each prefix, whose CRC-32 (the lock key of
    builds before 0.2.0) is the same: a birthday search over n names each."""
    import secrets
    import zlib
    # Random suffixes: CRC-32 is affine, so suffixes that differ only in a
    # few bits (counters) may never meet.
    seen = {}
    for _ in range(n):
        a = prefix_a + secrets.token_urlsafe(9)
        seen[zlib.crc32(a.encode())] = a
    for _ in range(n):
        b = prefix_b + secrets.token_urlsafe(9)
        a = seen.get(zlib.crc32(b.encode()))
        if a is not None:
            return a, b
    raise AssertionError("no CRC-32 twins found")


def test_a_group_lock_held_by_one_team_stalls_neither_another_team_nor_the_services(teams):
    """One team's open transaction that pushed into its own serial group
    holds that group's lock. It must not hold another team's group (a name
    with the same CRC-32, the key of earlier builds, is computed in a
    second), nor stall the maintenance pass or the scheduler, which serve
    every queue."""
    names, qa, qb = teams
    mine, theirs = crc_twins(qa + ":", qb + ":")
    with as_role(names["alice"]) as alice, as_role(names["bob"]) as bob, connect() as su, \
            psycopg.connect(dsn_for(names["alice"])) as holder:
        try:
            # alice's grouped work, due soon, and a schedule into her group
            alice.execute("SELECT queue_push(%s, '{}', serial_group => %s, delay => '300 milliseconds')", (qa, mine))
            su.execute("SELECT queue_schedule(%s, 'every 1 second', %s, serial_group => %s)", (qa + "-held", qa, mine))
            bob_group_job = bob.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qb, theirs)).fetchone()[0]
            claim = bob.execute("SELECT id, attempt FROM queue_pop(%s, 'bob')", (qb,)).fetchone()
            assert claim[0] == bob_group_job
            # alice holds her group's lock in an open transaction
            holder.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qa, mine))
            bob.execute("SET lock_timeout = '2s'")
            # bob's group is his own: his push and his ack do not wait
            bob.execute("SELECT queue_push(%s, '{}', serial_group => %s)", (qb, theirs))
            assert bob.execute("SELECT queue_ack(%s, attempt => %s)", claim).fetchone()[0] is True
            # the services go on for every other queue
            due = bob.execute("SELECT queue_push(%s, '{}', delay => '300 milliseconds')", (qb,)).fetchone()[0]
            su.execute("SELECT queue_schedule(%s, 'every 1 second', %s)", (qb + "-tick", qb))
            wait_for(su, "SELECT status::text FROM queue.jobs WHERE id = %s", (due,), "pending", timeout=5)
            wait_for(su, "SELECT count(*) > 0 FROM queue.jobs WHERE queue = %s AND id > %s AND serial_group IS NULL",
                     (qb, due), True, timeout=5)
            waits = su.execute("SELECT backend_type, wait_event_type FROM pg_stat_activity"
                               " WHERE backend_type IN ('queue maintenance', 'queue scheduler')"
                               " AND datname = current_database()").fetchall()
            assert all(w != "Lock" for _, w in waits), waits
            assert su.execute("SELECT last_job_id FROM queue.schedules WHERE name = %s", (qa + "-held",)
                              ).fetchone()[0] is None, "the held group's schedule waits"
            holder.commit()
            # alice's delayed grouped job and her group's schedule go on once her lock is free
            wait_for(su, "SELECT count(*) FROM queue.jobs WHERE serial_group = %s AND status = 'scheduled'",
                     (mine,), 0, timeout=5)
            wait_for(su, "SELECT last_job_id IS NOT NULL FROM queue.schedules WHERE name = %s", (qa + "-held",),
                     True, timeout=5)
        finally:
            holder.rollback()
            su.execute("DELETE FROM queue.schedules WHERE name = ANY(%s)", ([qb + "-tick", qa + "-held"],))


# ---------------------------------------------------------------------------
# Attempts and leases
# ---------------------------------------------------------------------------

def test_a_stale_claim_changes_nothing(queue_name):
    """With its attempt, a worker whose lease ran out and whose job was claimed
    again cannot ack, fail, touch or report progress for the new claim."""
    with connect() as c:
        job = c.execute("SELECT queue_push(%s, '{}', timeout => '10 milliseconds', backoff_base => '0',"
                        " backoff_max => '0')", (queue_name,)).fetchone()[0]
        first = c.execute("SELECT attempt FROM queue_pop(%s)", (queue_name,)).fetchone()[0]
        deadline = time.monotonic() + 10
        while True:
            c.execute("SELECT queue_tick()")
            row = c.execute("SELECT attempt FROM queue_pop(%s)", (queue_name,)).fetchone()
            if row:
                break
            assert time.monotonic() < deadline, "the expired lease was never given back"
            time.sleep(0.02)
        second = row[0]
        assert second == first + 1
        before = c.execute("SELECT lease_until, progress, status FROM queue.jobs WHERE id = %s", (job,)).fetchone()
        assert c.execute("SELECT queue_ack(%s, NULL, %s)", (job, first)).fetchone()[0] is False
        assert c.execute("SELECT queue_fail(%s, 'x', %s)", (job, first)).fetchone()[0] is None
        assert c.execute("SELECT queue_touch(%s, '1 hour', %s)", (job, first)).fetchone()[0] is False
        assert c.execute("SELECT queue_progress(%s, 1, 2, NULL, %s)", (job, first)).fetchone()[0] is False
        assert c.execute("SELECT lease_until, progress, status FROM queue.jobs WHERE id = %s", (job,)).fetchone() == before
        assert sqlstate_of(c, "SELECT queue_touch(%s, '2 days', %s)", (job, second)) == "22023"
        assert c.execute("SELECT queue_ack(%s, NULL, %s)", (job, second)).fetchone()[0] is True


# ---------------------------------------------------------------------------
# Schedules and roles
# ---------------------------------------------------------------------------

@pytest.fixture
def two_admins():
    tag = uuid.uuid4().hex[:6]
    a, b = f"sec_adm1_{tag}", f"sec_adm2_{tag}"
    with connect() as su:
        for r in (a, b):
            su.execute(f"CREATE ROLE {r} LOGIN IN ROLE queue_admin")
    yield a, b
    with connect() as su:
        su.execute("DELETE FROM queue.schedules WHERE owner IN (%s, %s)", (a, b))
        su.execute(f"DROP ROLE {a}")
        su.execute(f"DROP ROLE {b}")


def test_a_schedule_belongs_to_its_real_creator(two_admins, queue_name):
    a, b = two_admins
    name = queue_name + "-nightly"
    with as_role(a) as ca, as_role(b) as cb, connect() as su:
        ca.execute("SELECT queue_schedule(%s, '@daily', %s)", (name, queue_name))
        # the internal function takes no owner: calling it directly records the caller too
        ca.execute("SELECT queue.save_schedule(%s, 'manual', %s, '{}', 0, NULL, 3, '5 minutes', true)",
                   (name + "-2", queue_name))
        owners = dict(su.execute("SELECT name, owner FROM queue.schedules WHERE name LIKE %s",
                                 (name + "%",)).fetchall())
        assert owners == {name: a, name + "-2": a}
        before = snapshot(su)
        assert sqlstate_of(cb, "SELECT queue_schedule(%s, 'manual', %s)", (name, queue_name)) == "42501"
        assert sqlstate_of(cb, "SELECT queue_unschedule(%s)", (name,)) == "42501"
        assert sqlstate_of(cb, "SELECT queue_trigger(%s)", (name,)) == "42501"
        assert snapshot(su) == before
        # a member of the owner role may; so may a superuser
        su.execute(f"GRANT {a} TO {b}")
        assert cb.execute("SELECT queue_trigger(%s)", (name,)).fetchone()[0] > 0
        assert su.execute("SELECT queue_unschedule(%s)", (name + "-2",)).fetchone()[0] is True


def test_roles_of_the_same_name_are_not_adopted():
    """CREATE EXTENSION refuses a queue_* role it did not make."""
    db = "sec_roles_" + uuid.uuid4().hex[:6]
    with connect() as su:
        su.execute(f"CREATE DATABASE {db}")
        marker = su.execute("SELECT shobj_description('queue_worker'::regrole, 'pg_authid')").fetchone()[0]
        assert marker == "role of the queue extension"
    try:
        for change, undo in [
            ("COMMENT ON ROLE queue_worker IS NULL", f"COMMENT ON ROLE queue_worker IS '{marker}'"),
            ("ALTER ROLE queue_worker LOGIN", "ALTER ROLE queue_worker NOLOGIN"),
            ("ALTER ROLE queue_worker CREATEROLE", "ALTER ROLE queue_worker NOCREATEROLE"),
        ]:
            with connect() as su:
                su.execute(change)
            try:
                with as_role("postgres", db) as c:
                    with pytest.raises(psycopg.Error) as e:
                        c.execute("CREATE EXTENSION queue")
                    assert e.value.diag.sqlstate == "42710", change
                    assert "was not made by the queue extension" in e.value.diag.message_primary
                    assert e.value.diag.message_hint
                    assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'queue'").fetchone()[0] == 0
            finally:
                with connect() as su:
                    su.execute(undo)
        with as_role("postgres", db) as c:
            c.execute("CREATE EXTENSION queue")
    finally:
        with connect() as su:
            su.execute(f"DROP DATABASE {db}")
