"""The claim reads its index in order whatever the statistics say.

Autovacuum often analyzes queue.jobs while it is almost empty (a queue that
keeps up is empty most of the time). A worker that connects then plans its
claim once for the session (queue_pop keeps a generic plan), and with the
statistics of an empty table the planner found a bitmap scan of the queue's
whole index range followed by a sort as cheap as reading the index in order:
when a backlog came, every claim of that worker read every waiting job of the
queue (a raw drain of 20,000 jobs fell from about 4,000 to 700 jobs/s,
bench/clients/README.md). The claim and the group elections now forbid the
plans that do not read their index in order.

Statistics that mislead the planner this way depend on timing (they were
caught once, with reltuples 4 over 214 pages and a 2-page claim index). The
test stands them in with the session's enable_indexscan = off, under which
the claim's own query planned alone reads without order and sorts; fills a
backlog; and reads the plans the functions really run from auto_explain on a
fresh connection. The functions pin the planner settings they rely on, as
they pin search_path.
"""
import psycopg
import pytest

from conftest import DSN, dsn_for as dsn, log_plans

DB = "claim_plans"


@pytest.fixture
def db():
    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DB}"')
        try:
            with psycopg.connect(dsn(DB), autocommit=True) as c:
                c.execute("CREATE EXTENSION queue")
            yield dsn(DB)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def plans_of(conn, sql, args=()):
    """Run `sql` with enable_indexscan = off and return the JSON plans
    auto_explain logged for every statement it ran, nested ones included."""
    plans = log_plans(conn, "enable_indexscan = off")
    rows = conn.execute(sql, args).fetchall()
    conn.execute("RESET client_min_messages")
    return rows, plans


def ordered_reads(node, under_limit=False):
    """What feeds each LIMIT of a plan tree: (node type, index name) of the
    scans of queue.jobs and every Sort below a Limit node."""
    found = []
    under_limit = under_limit or node["Node Type"] == "Limit"
    if under_limit and (node.get("Relation Name") == "jobs" or node["Node Type"] == "Sort"):
        found.append((node["Node Type"], node.get("Index Name")))
    for child in node.get("Plans", []):
        found.extend(ordered_reads(child, under_limit))
    return found


def test_claims_and_group_elections_read_their_index_in_order_on_empty_table_statistics(db):
    with psycopg.connect(db, autocommit=True) as c:
        # A backlog: a plain queue and one serial group.
        # pushed in turns, so that the table is not in the index's order.
        for _ in range(20):
            c.execute("SELECT count(*) FROM queue_push_batch('burst', ARRAY(SELECT jsonb_build_object('n', i) "
                      "FROM generate_series(1, 1000) i))")
            c.execute("SELECT count(*) FROM queue_push_batch('grouped', ARRAY(SELECT jsonb_build_object('n', i) "
                      "FROM generate_series(1, 100) i), serial_group => 'g')")
        c.execute("ANALYZE queue.jobs")
        # The stand-in works: the claim's query, planned as queue_pop plans it
        # (a generic plan, queue and batch unknown), reads without order.
        c.execute("SET enable_indexscan = off")
        c.execute("SET plan_cache_mode = force_generic_plan")
        c.execute("PREPARE claim(text, int) AS SELECT ctid FROM queue.jobs WHERE queue = $1 "
                  "AND status = 'pending' AND NOT group_waiting ORDER BY priority, id LIMIT $2 "
                  "FOR UPDATE SKIP LOCKED")
        plan = c.execute("EXPLAIN (FORMAT JSON) EXECUTE claim('burst', 1)").fetchone()[0]
        assert ("Sort", None) in ordered_reads(plan[0]["Plan"]), plan

    # A worker that connects now: its first claim makes the session's plan.
    with psycopg.connect(db, autocommit=True) as w:
        rows, plans = plans_of(w, "SELECT id, attempt FROM queue_pop('burst', 'w', 1)")
        assert len(rows) == 1
        claim = [p for p in plans if "WITH claimed" in p["Query Text"]][-1]
        reads = ordered_reads(claim["Plan"])
        assert reads == [("Index Scan", "jobs_claim")], reads
        # Pinning the plan must not make it look costly: no JIT for a claim.
        assert "JIT" not in claim, claim["JIT"]

        # The group's active job: its ack elects the next one of 1,999.
        (job_id, attempt), = w.execute("SELECT id, attempt FROM queue_pop('grouped', 'w', 1)").fetchall()
        rows, plans = plans_of(w, "SELECT queue_ack(%s, NULL, %s)", (job_id, attempt))
        assert rows == [(True,)]
        election = [p for p in plans if "WITH elected" in p["Query Text"]][-1]
        assert "JIT" not in election, election["JIT"]
        reads = ordered_reads(election["Plan"])
        assert reads and all(kind in ("Index Scan", "Index Only Scan") and index == "jobs_group_next"
                             for kind, index in reads), reads
        # And the election did its work: the next job of the group is claimable.
        assert len(w.execute("SELECT id FROM queue_pop('grouped', 'w', 5)").fetchall()) == 1
