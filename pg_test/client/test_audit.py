"""A module that audits table access sees every push.

The plain push stores a job without an INSERT statement (src/push.rs), so
the executor's permission check, where pgaudit's object audit logging and
sepgsql hook in, would never see it. With such a hook installed, pushes take
the general path, whose INSERT the hook sees. The test starts a cluster of
its own with pgaudit preloaded beside the extension (Debian's
postgresql-15-pgaudit, installed by scripts/ensure-deps.sh), audits INSERTs
into queue.jobs through an audit role, and counts the audit lines.
"""
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from conftest import push_calls, wait_for_plain_pushes

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
CLUSTER = RUN_DIR / "audit-cluster"
PORT = 25438
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"


def cluster(*args):
    subprocess.run([str(ROOT / "scripts/cluster.sh"), *args], check=True)


@pytest.fixture(scope="module")
def audited():
    cluster("start", str(CLUSTER), str(PORT),
            "shared_preload_libraries = 'queue,pgaudit'", "pgaudit.role = 'queue_auditor'")
    try:
        with psycopg.connect(DSN, autocommit=True) as c:
            c.execute("CREATE EXTENSION queue")
            c.execute("CREATE ROLE queue_auditor")
            c.execute("GRANT INSERT ON queue.jobs TO queue_auditor")
            # Served, and known to have no queue defaults: a push could be
            # plain (push_mode 0) but for the audit hook.
            wait_for_plain_pushes(c)
            yield c
    finally:
        cluster("stop", str(CLUSTER))


def audit_lines():
    return [line for line in (CLUSTER / "server.log").read_text().splitlines()
            if "AUDIT: OBJECT" in line and "INSERT" in line and "queue.jobs" in line]


def test_every_push_is_seen_by_the_audit_hook(audited):
    before = len(audit_lines())
    assert audited.execute("SELECT queue.push_mode()").fetchone() == (0,)
    for n in range(3):
        _, calls = push_calls(audited, "SELECT queue_push('audited', jsonb_build_object('n', %s::int))", (n,))
        assert calls.get("push_general") == 1, calls
    assert len(audit_lines()) - before == 3, audit_lines()[before:]
    assert audited.execute("SELECT count(*) FROM queue.jobs WHERE queue = 'audited'").fetchone() == (3,)
