"""The claim and the passes of every tick are never compiled by JIT.

queue_pop keeps a generic plan of its claim, and a generic plan cannot know
`LIMIT batch`: the planner guesses a tenth of the rows the index scan may
return. Past about a million waiting jobs that guess lifts the claim's
estimated cost over jit_above_cost (100,000 by default), and JIT compiled the
claim's expressions on every call: 8 ms of work in front of a 0.2 ms claim at
10M waiting (bench/README.md, "Depth"). The maintenance, stats and scheduler
passes run every tick with the same kind of plans. The functions turn JIT off
for themselves, as they pin search_path.

The test does not need a deep table: with jit_above_cost = 0 the session
would compile every statement it plans. It reads the plans the functions
really run from auto_explain on a fresh connection (no plan cached yet) and
checks that none of the nested statements was compiled, while the top-level
statement, planned under the session's own settings, was, and so were the
push's statements (so the check can see JIT at all).
"""
import psycopg
import pytest

from conftest import DSN, log_plans


def test_the_claim_and_the_tick_passes_are_never_jit_compiled(queue_name):
    # Each statement's nested statements are logged before it (their
    # executors end first), so the log splits into one run per statement.
    steps = [
        ("push", "SELECT queue_push(%s, '{}'::jsonb)", (queue_name,)),
        ("claim", "SELECT id FROM queue_pop(%s, 'no-jit', 5)", (queue_name,)),
        ("maintenance pass", "SELECT queue.maintenance_pass()", ()),
        ("stats pass", "SELECT queue.stats_pass()", ()),
        ("scheduler pass", "SELECT queue.scheduler_pass()", ()),
    ]
    runs = {}
    with psycopg.connect(DSN, autocommit=True) as conn:
        if not conn.execute("SELECT pg_jit_available()").fetchone()[0]:
            pytest.skip("this server has no JIT provider (llvmjit)")
        plans = log_plans(conn, "jit = on", "jit_above_cost = 0")
        for name, sql, args in steps:
            before = len(plans)
            rows = conn.execute(sql, args).fetchall()
            # psycopg sends %s as $1: the statement's own plan is the one
            # with its text. What was logged after it ran at the commit
            # (counters the transaction leaves for the stats pass), outside
            # the function.
            head = sql.split("%s")[0]
            run = plans[before:]
            at = next(i for i, p in enumerate(run) if p["Query Text"].strip().startswith(head))
            runs[name] = (run[:at], run[at], rows)
        conn.execute("RESET client_min_messages")

    nested, top, rows = runs["claim"]
    assert len(rows) == 1
    assert "queue_pop" in top["Query Text"] and "JIT" in top, \
        "the session's own statement should have been JIT-compiled: the check sees no JIT"
    assert any("WITH claimed AS" in p["Query Text"] for p in nested), "auto_explain logged no claim statement"
    # The push is not covered (no statement of it reads more than a row or
    # two): with jit_above_cost = 0 its statements are compiled, which shows
    # that nested statements are seen.
    assert any("JIT" in p for p in runs["push"][0])
    for name in ("claim", "maintenance pass", "stats pass", "scheduler pass"):
        nested, top, _ = runs[name]
        assert nested, f"auto_explain logged no statement of the {name}"
        compiled = [p["Query Text"].strip()[:120] for p in nested if "JIT" in p]
        assert compiled == [], f"statements of the {name} were JIT-compiled: {compiled}"
