"""One extension, every database: the launcher serves each database that has
the extension, with its own services and its own shared memory.

These tests start a cluster of their own (the main test cluster restricts
service to `postgres` with `queue.database`), with the default
`queue.database` (every database), `queue.max_databases = 4` and room for
the workers. Databases are real, connections are real, the launcher and its
services are the real ones.
"""
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
CLUSTER = RUN_DIR / "databases-cluster"
PORT = 25436
ROLES = ("queue maintenance", "queue scheduler", "queue notifier")
DATABASES = ("db_a", "db_b", "db_c")


def dsn(db):
    return f"host=127.0.0.1 port={PORT} user=postgres dbname={db}"


def connect(db, autocommit=True):
    return psycopg.connect(dsn(db), autocommit=autocommit)


def cluster(*args):
    subprocess.run([str(ROOT / "scripts/cluster.sh"), *args], check=True)


def services(admin, db):
    """{backend_type: pid} of the queue services connected to `db`."""
    return dict(
        admin.execute(
            "SELECT backend_type, pid FROM pg_stat_activity WHERE datname = %s AND backend_type = ANY(%s)",
            (db, list(ROLES)),
        ).fetchall()
    )


def served(admin, db):
    return len(services(admin, db)) == 3


def create_served(admin, db):
    """CREATE DATABASE, CREATE EXTENSION, wait until its services run: the
    seconds that took after CREATE EXTENSION committed."""
    admin.execute(f'CREATE DATABASE "{db}"')
    with connect(db) as c:
        c.execute("CREATE EXTENSION queue")
    start = time.monotonic()
    wait_until(f"services of {db}", lambda: served(admin, db), timeout=5)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def admin():
    cluster(
        "start", str(CLUSTER), str(PORT),
        "queue.database = ''", "queue.tick = 100ms", "queue.max_databases = 4",
        "max_worker_processes = 24", "max_prepared_transactions = 4",
    )
    try:
        with psycopg.connect(dsn("postgres"), autocommit=True) as c:
            waits = [create_served(c, db) for db in DATABASES]
            print(f"served after CREATE EXTENSION: {', '.join(f'{w * 1000:.0f} ms' for w in waits)}")
            yield c
    finally:
        cluster("stop", str(CLUSTER))


@pytest.fixture(autouse=True)
def drop_leftover_databases(admin):
    """A test that fails half-way leaves its databases behind, and they hold
    slots of queue.max_databases the next test counts on: drop every database
    but the module's own after each test. A connection of its own, since the
    crash test ends the admin connection with every other."""
    yield
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        leftovers = c.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'"
            " AND NOT datname = ANY(%s)", (list(DATABASES),)).fetchall()
        for (name,) in leftovers:
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_each_database_gets_its_own_three_services(admin):
    pids = {db: services(admin, db) for db in DATABASES}
    for db, by_role in pids.items():
        assert set(by_role) == set(ROLES), db
    every = [pid for by_role in pids.values() for pid in by_role.values()]
    assert len(set(every)) == 9
    launcher = admin.execute(
        "SELECT datname FROM pg_stat_activity WHERE backend_type = 'queue launcher'"
    ).fetchall()
    assert launcher == [(None,)], "one launcher, connected to no database"
    # postgres has no extension: nothing serves it.
    assert services(admin, "postgres") == {}
    for db in DATABASES:
        with connect(db) as c:
            health = c.execute("SELECT queue_health()").fetchone()[0]
            assert health["healthy"], (db, health["problems"])
            assert health["lease_book"]["ready"], db


def test_promotion_retry_lease_expiry_and_schedules_in_every_database(admin):
    for db in DATABASES:
        with connect(db) as c:
            q = f"work-{db}"
            delayed = c.execute("SELECT queue_push(%s, '{}', delay => '300 ms')", (q,)).fetchone()[0]
            lapsing = c.execute(
                "SELECT queue_push(%s, '{}', timeout => '1 second', backoff_base => '100 ms', retry_delays => '{100 ms}')",
                (q + "-lease",),
            ).fetchone()[0]
            assert c.execute("SELECT id FROM queue_pop(%s, 'w')", (q + "-lease",)).fetchone() == (lapsing,)
            failing = c.execute("SELECT queue_push(%s, '{}')", (q + "-retry",)).fetchone()[0]
            job = c.execute("SELECT id, attempt FROM queue_pop(%s, 'w')", (q + "-retry",)).fetchone()
            assert job == (failing, 1)
            assert c.execute("SELECT queue_fail(%s, 'boom', 1, retry_in => '200 ms')", (failing,)).fetchone() == ("retrying",)
            c.execute("SELECT queue_schedule(%s, 'every 1 second', %s)", (f"tick-{db}", q + "-cron"))
    for db in DATABASES:
        with connect(db) as c:
            q = f"work-{db}"
            wait_until(f"{db}: delayed job promoted and claimed",
                       lambda: c.execute("SELECT id FROM queue_pop(%s, 'w')", (q,)).fetchone())
            wait_until(f"{db}: retry promoted and claimed",
                       lambda: c.execute("SELECT attempt FROM queue_pop(%s, 'w')", (q + "-retry",)).fetchone() == (2,))
            # The lapsed lease comes back through the lease book, then the retry delay.
            wait_until(f"{db}: lapsed lease taken back and claimed again",
                       lambda: c.execute("SELECT attempt FROM queue_pop(%s, 'w')", (q + "-lease",)).fetchone() == (2,),
                       timeout=6)
            wait_until(f"{db}: the schedule fired",
                       lambda: c.execute("SELECT queue_size(%s)", (q + "-cron",)).fetchone()[0] > 0, timeout=4)
            c.execute("SELECT queue_unschedule(%s)", (f"tick-{db}",))


def test_wakeups_come_from_each_databases_own_notifier(admin):
    for db in DATABASES:
        notifier = services(admin, db)["queue notifier"]
        with connect(db) as listener, connect(db) as producer:
            listener.execute('LISTEN "queue_wake"')
            # A sleeper: a pop that found nothing marks the queue.
            assert listener.execute("SELECT * FROM queue_pop('wake', 'w')").fetchall() == []
            start = time.monotonic()
            producer.execute("SELECT queue_push('wake', '{}')")
            heard = list(listener.notifies(timeout=2, stop_after=1))
            latency = time.monotonic() - start
            assert heard and heard[0].channel == "queue_wake", db
            assert heard[0].pid == notifier, f"{db}: sent by its own notifier, not the pusher"
            assert latency < 0.5, latency
            print(f"{db}: sleeper woken in {latency * 1000:.2f} ms")
            # A passive listener (never popped) hears the next push too.
            producer.execute("SELECT queue_push('wake', '{}')")
            heard = list(listener.notifies(timeout=2, stop_after=1))
            assert heard and heard[0].pid == notifier, db


def test_counters_are_exact_and_separate_per_database(admin):
    # The same queue name in every database, a different amount in each.
    for n, db in enumerate(DATABASES, start=1):
        with connect(db) as c:
            c.execute("SELECT queue_push_batch('same', array_fill('{}'::jsonb, ARRAY[%s]))", (n * 10,))
            ids = [r[0] for r in c.execute("SELECT id FROM queue_pop('same', 'w', %s)", (n * 3,)).fetchall()]
            c.execute("SELECT queue_ack(%s::bigint[])", (ids[:n],))
    for n, db in enumerate(DATABASES, start=1):
        with connect(db) as c:
            # A tick flushes shared memory: read twice, before and after.
            for _ in range(2):
                s = c.execute("SELECT queue_stats('same')").fetchone()[0]
                stats = (s["pending"], s["processing"], s["completed"], s["total_pushed"])
                assert stats == (n * 7, n * 2, n, n * 10), (db, s)
                rows = dict(c.execute(
                    "SELECT status::text, count(*) FROM queue.all_jobs WHERE queue = 'same' GROUP BY 1"
                ).fetchall())
                assert rows == {"pending": n * 7, "processing": n * 2, "completed": n}, db
                time.sleep(0.3)
            health = c.execute("SELECT queue_health()").fetchone()[0]
            assert health["counters"]["lost_tallies"] == 0


def test_a_database_beyond_max_databases_is_refused_then_served_when_a_slot_frees(admin):
    admin.execute('CREATE DATABASE "db_d"')
    with connect("db_d") as c:
        c.execute("CREATE EXTENSION queue")
    # db_a, db_b, db_c and db_d fill the four slots; db_e must wait.
    wait_until("db_d served", lambda: served(admin, "db_d"), timeout=5)
    admin.execute('CREATE DATABASE "db_e"')
    with connect("db_e") as c:
        c.execute("CREATE EXTENSION queue")
        time.sleep(1.5)
        assert services(admin, "db_e") == {}
        problems = c.execute("SELECT queue_health() -> 'problems'").fetchone()[0]
        assert any("queue.max_databases (4)" in p for p in problems), problems
        # Push and pop still work, unserved (NOTIFY in the transaction, counters in the table).
        c.execute("SELECT queue_push('refused', '{}')")
        assert c.execute("SELECT count(*) FROM queue_pop('refused', 'w')").fetchone() == (1,)
    log = (CLUSTER / "server.log").read_text()
    assert 'database "db_e" has the extension, but queue.max_databases (4) databases are served already' in log
    # DROP DATABASE of a served database: no FORCE, nothing stopped by hand.
    start = time.monotonic()
    admin.execute('DROP DATABASE "db_d"')
    print(f"DROP DATABASE of a served database took {(time.monotonic() - start) * 1000:.0f} ms")
    # Its slot goes to the refused database.
    wait_until("db_e served once a slot is free", lambda: served(admin, "db_e"), timeout=5)
    with connect("db_e") as c:
        # Its services connect before their first tick: healthy once they ran.
        wait_until("db_e healthy once served",
                   lambda: c.execute("SELECT queue_health() -> 'healthy'").fetchone()[0] is True, timeout=5)
        s = c.execute("SELECT queue_stats('refused')").fetchone()[0]
        # The unserved job's counts were written to the table; the recount keeps them.
        assert (s["completed"], s["processing"], s["total_pushed"]) == (0, 1, 1), s
    admin.execute('DROP DATABASE "db_e"')
    assert admin.execute("SELECT count(*) FROM pg_database WHERE datname IN ('db_d', 'db_e')").fetchone() == (0,)


def test_more_refused_databases_than_the_board_holds_are_served_when_a_slot_frees(admin):
    """The launcher's board notes 16 databases refused for lack of a slot.
    One refused beyond them must still get the next free slot within
    seconds, not at the launcher's ten-minute look."""
    create_served(admin, "db_d")  # the fourth slot: every slot is taken
    admin.execute('CREATE DATABASE "rf_template"')
    with connect("rf_template") as c:
        c.execute("CREATE EXTENSION queue")
    admin.execute("ALTER DATABASE rf_template IS_TEMPLATE true")  # the launcher skips templates
    log = CLUSTER / "server.log"

    def refused(db):
        return f'database "{db}" has the extension, but queue.max_databases' in log.read_text()

    # One at a time, each refused before the next, so that the first 16 fill
    # the board and the 17th is refused with the board full.
    names = [f"rf_{i:02}" for i in range(17)]
    for db in names:
        admin.execute(f'CREATE DATABASE "{db}" TEMPLATE rf_template')
        wait_until(f"{db} refused", lambda: refused(db), timeout=10)
    last = names[-1]
    # Only the one beyond the board still wants a slot.
    for db in names[:-1]:
        admin.execute(f'DROP DATABASE "{db}"')
    admin.execute('DROP DATABASE "db_d"')
    wait_until(f"{last} served once a slot is free", lambda: served(admin, last), timeout=10)
    admin.execute(f'DROP DATABASE "{last}"')
    admin.execute("ALTER DATABASE rf_template IS_TEMPLATE false")
    admin.execute('DROP DATABASE "rf_template"')


def test_drop_extension_rename_and_template_copy(admin):
    create_served(admin, "db_x")
    old = services(admin, "db_x")
    # ALTER DATABASE ... RENAME needs the database to itself.
    admin.execute('ALTER DATABASE "db_x" RENAME TO "db_y"')
    wait_until("services back after the rename", lambda: served(admin, "db_y"), timeout=15)
    assert set(services(admin, "db_y").values()).isdisjoint(old.values())
    # CREATE DATABASE ... TEMPLATE of a served database, which then is served too.
    admin.execute('CREATE DATABASE "db_z" TEMPLATE "db_y"')
    with connect("db_z") as c:
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'queue'").fetchone() is not None
    admin.execute('DROP DATABASE "db_z"')
    # DROP EXTENSION: the services leave within a few ticks and the slot frees.
    with connect("db_y") as c:
        c.execute("DROP EXTENSION queue")
    wait_until("services gone after DROP EXTENSION", lambda: services(admin, "db_y") == {}, timeout=5)
    # CREATE EXTENSION again: served again, from zero.
    with connect("db_y") as c:
        c.execute("CREATE EXTENSION queue")
        wait_until("served again", lambda: served(admin, "db_y"), timeout=5)
        assert c.execute("SELECT queue_stats() -> 'total_pushed'").fetchone() == (0,)
    admin.execute('DROP DATABASE "db_y"')


def test_drop_and_create_extension_back_to_back_is_served_again(admin):
    """DROP EXTENSION and CREATE EXTENSION with no pause between, in one
    commit and in two. The DROP's transaction lasts long enough for a
    maintenance pass to wait on the extension's lock. In one commit, the
    pass then holds the new installation and the services go on serving it.
    In two, the pass finds no installation and retires the services, while
    the launcher hears CREATE EXTENSION's announcement with the old services
    still in the slot. Either way the new installation must be served within
    seconds, not at the launcher's ten-minute look: its services run,
    queue.service_problem() is NULL, and a push learns that no queue has
    defaults (push_mode 0, which needs the database's slot)."""
    create_served(admin, "db_x")
    with connect("db_x") as c:
        for round_ in range(4):
            with c.transaction():
                c.execute("DROP EXTENSION queue")
                if round_ % 2 == 0:
                    c.execute("CREATE EXTENSION queue")
                c.execute("SELECT pg_sleep(0.3)")
            if round_ % 2 == 1:
                c.execute("CREATE EXTENSION queue")

            def ready():
                c.execute("SELECT queue_push('warm', '{}')")
                return served(admin, "db_x") and c.execute(
                    "SELECT queue.service_problem() IS NULL AND queue.push_mode() = 0").fetchone()[0]

            wait_until(f"round {round_}: the new installation is served", ready, timeout=5)
    admin.execute('DROP DATABASE "db_x"')


def reload_with(admin, setting):
    """Serve only the databases `setting` lists (None: every one again)."""
    if setting is None:
        admin.execute("ALTER SYSTEM RESET queue.database")
    else:
        admin.execute(f"ALTER SYSTEM SET queue.database = '{setting}'")
    admin.execute("SELECT pg_reload_conf()")


def test_a_slot_whose_installation_was_dropped_unseen_is_retired(admin):
    """All three services had left without retiring (here: asked to leave by a
    DROP DATABASE that then failed, which keeps them away for ten seconds),
    and DROP EXTENSION committed meanwhile. When the launcher brings them
    back, the maintenance service finds no extension: it must retire the
    slot, not leave the scheduler and the notifier serving nothing while it
    is started again every second."""
    create_served(admin, "db_x")
    with connect("db_x") as s:
        start = time.monotonic()
        with pytest.raises(psycopg.errors.ObjectInUse):
            admin.execute('DROP DATABASE "db_x"')  # s is connected: fails after 5 s
        assert services(admin, "db_x") == {}, "the services left for the DROP DATABASE"
        s.execute("DROP EXTENSION queue")
        assert time.monotonic() - start < 9, "the DROP EXTENSION must land inside the pause"
        # The pause ends ten seconds after it began; then the launcher looks.
        time.sleep(max(0.0, start + 12 - time.monotonic()))
        seen = {}
        for _ in range(15):  # three seconds: no service of db_x runs
            seen.update(services(admin, "db_x"))
            time.sleep(0.2)
        assert seen == {}, f"services of a database without the extension: {seen}"
        # No slot is held for it: CREATE EXTENSION is served again at once.
        s.execute("CREATE EXTENSION queue")
        wait_until("served after CREATE EXTENSION", lambda: served(admin, "db_x"), timeout=5)
    log = (CLUSTER / "server.log").read_text()
    assert log.count("stopped serving database") >= 1
    admin.execute('DROP DATABASE "db_x"')


def test_a_claim_open_while_the_database_became_served_keeps_its_lease_entry(admin):
    """A claim that began before its database was served and commits after the
    lease book's rebuild (whose scan could not see it) still writes its
    entry: its lease, once run out, is recovered at the next passes, not at
    the ten-minute safety rebuild."""
    reload_with(admin, "db_a, db_b, db_c")
    try:
        admin.execute('CREATE DATABASE "db_x"')
        with connect("db_x") as c, connect("db_x", autocommit=False) as w:
            c.execute("CREATE EXTENSION queue")
            job = c.execute("SELECT queue_push('lease', '{}', timeout => '1 second')").fetchone()[0]
            time.sleep(0.5)
            assert services(admin, "db_x") == {}, "not served yet"
            claimed = w.execute("SELECT id FROM queue_pop('lease', 'w')").fetchall()
            assert claimed == [(job,)]
            reload_with(admin, None)
            wait_until("db_x served, its lease book ready",
                       lambda: served(admin, "db_x")
                       and c.execute("SELECT queue.leases_ready()").fetchone()[0], timeout=10)
            w.commit()
            wait_until("the run-out lease recovered",
                       lambda: c.execute("SELECT status <> 'processing' FROM queue.jobs WHERE id = %s",
                                         (job,)).fetchone()[0], timeout=8)
    finally:
        reload_with(admin, None)
    admin.execute('DROP DATABASE "db_x"')


def test_queue_defaults_configured_while_unserved_reach_every_later_push(admin):
    """queue_configure runs while the database has no slot (its store reaches
    nothing); a push whose snapshot is older than the configure then runs
    once the database is served, finds no defaults and must not record that
    none exist: every later push gets the queue's defaults."""
    reload_with(admin, "db_a, db_b, db_c")
    try:
        admin.execute('CREATE DATABASE "db_x"')
        with connect("db_x") as c, connect("db_x", autocommit=False) as p:
            c.execute("CREATE EXTENSION queue")
            p.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            p.execute("SELECT 1")  # the snapshot: before the configure
            c.execute("SELECT queue_configure('defaults', priority => 7)")
            reload_with(admin, None)
            wait_until("db_x served", lambda: served(admin, "db_x"), timeout=10)
            old = p.execute("SELECT queue_push('defaults', '{}')").fetchone()[0]
            p.commit()
            new = c.execute("SELECT queue_push('defaults', '{}')").fetchone()[0]
            got = dict(c.execute("SELECT id, priority FROM queue.jobs WHERE id IN (%s, %s)", (old, new)).fetchall())
            assert got == {old: 0, new: 7}, got  # the old snapshot saw no defaults; the new push must
            assert c.execute("SELECT queue.push_mode() & 2").fetchone() == (2,)
    finally:
        reload_with(admin, None)
    admin.execute('DROP DATABASE "db_x"')


def test_create_extension_cannot_be_prepared(admin):
    """A prepared CREATE EXTENSION would commit where nothing tells the
    launcher: refused (0A000), and nothing is left of it."""
    admin.execute('CREATE DATABASE "db_x"')
    with connect("db_x") as c:
        c.execute("BEGIN")
        c.execute("CREATE EXTENSION queue")
        try:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                c.execute("PREPARE TRANSACTION 'queue_install'")
        finally:
            # Should the PREPARE succeed, it must not outlive the test: a
            # prepared transaction keeps its database from being dropped.
            c.execute("ROLLBACK")
            if c.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'queue_install'").fetchone()[0]:
                c.execute("ROLLBACK PREPARED 'queue_install'")
        assert "cannot PREPARE a transaction that installed or updated the queue extension" in str(e.value)
        assert c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'queue'").fetchone() == (0,)
        c.execute("CREATE EXTENSION queue")
        wait_until("served", lambda: served(admin, "db_x"), timeout=5)
    admin.execute('DROP DATABASE "db_x"')


def test_work_done_while_a_slot_retires_is_counted_and_wakes(admin):
    """Pushes that commit while the database's slot is retiring (no longer
    listed in queue.database; the maintenance service made its last flush and
    left, the scheduler is still on its way out) are counted in the table
    and wake listeners with a plain NOTIFY: nothing goes into the slot that
    is about to be zeroed."""
    create_served(admin, "db_x")
    with connect("db_x") as c, connect("db_x", autocommit=False) as lock, connect("db_x") as listener:
        listener.execute("LISTEN queue_retiring")
        # The scheduler's next pass waits on this lock, so it cannot leave yet.
        lock.execute("LOCK TABLE queue.schedules IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.5)
        reload_with(admin, "db_a, db_b, db_c")
        try:
            wait_until("the maintenance service left, the scheduler not yet",
                       lambda: set(services(admin, "db_x")) == {"queue scheduler"}, timeout=10)
            for _ in range(20):
                c.execute("SELECT queue_push('retiring', '{}')")
            assert any(True for _ in listener.notifies(timeout=2, stop_after=1)), "no wake-up"
            lock.rollback()
            wait_until("the slot freed", lambda: services(admin, "db_x") == {}, timeout=10)
            s = c.execute("SELECT queue_stats('retiring')").fetchone()[0]
            assert (s["pending"], s["total_pushed"]) == (20, 20), s
        finally:
            reload_with(admin, None)
        wait_until("served again", lambda: served(admin, "db_x"), timeout=15)
        wait_until("counted once served again",
                   lambda: c.execute("SELECT queue_stats('retiring') -> 'total_pushed'").fetchone() == (20,),
                   timeout=5)
    admin.execute('DROP DATABASE "db_x"')


def test_queue_database_restricts_service_on_reload(admin):
    admin.execute("ALTER SYSTEM SET queue.database = 'db_a, db_b'")
    admin.execute("SELECT pg_reload_conf()")
    try:
        wait_until("db_c left", lambda: services(admin, "db_c") == {}, timeout=5)
        assert served(admin, "db_a") and served(admin, "db_b")
        with connect("db_c") as c:
            problems = c.execute("SELECT queue_health() -> 'problems'").fetchone()[0]
            assert any("queue.database" in p for p in problems), problems
    finally:
        admin.execute("ALTER SYSTEM RESET queue.database")
        admin.execute("SELECT pg_reload_conf()")
    wait_until("db_c back", lambda: served(admin, "db_c"), timeout=15)


def test_a_crash_brings_every_databases_services_back(admin):
    before = {db: services(admin, db) for db in DATABASES}
    victim = before["db_b"]["queue maintenance"]
    # SIGKILL: the postmaster restarts every process and resets shared memory.
    os.kill(victim, 9)
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(dsn("postgres"), autocommit=True, connect_timeout=2) as c:
                if all(served(c, db) for db in DATABASES):
                    after = {db: services(c, db) for db in DATABASES}
                    break
        except psycopg.OperationalError:
            pass
        assert time.monotonic() < deadline, "services not back within 30 s of a crash"
        time.sleep(0.2)
    for db in DATABASES:
        assert set(after[db].values()).isdisjoint(before[db].values()), f"{db}: new processes"
        with connect(db) as c:
            c.execute("SELECT queue_push('after-crash', '{}')")
            assert c.execute("SELECT count(*) FROM queue_pop('after-crash', 'w')").fetchone() == (1,)
    # A terminated service comes back within a second or so, with a new pid.
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        old = services(c, "db_a")["queue scheduler"]
        c.execute("SELECT pg_terminate_backend(%s)", (old,))
        wait_until("scheduler back", lambda: services(c, "db_a").get("queue scheduler") not in (None, old), timeout=5)
