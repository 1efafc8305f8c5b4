-- queue.rules_exist(): the probe every public function makes before
-- anything else ("is anyone confined at all?"), answered by a direct scan
-- of queue.access_rules instead of an EXISTS subquery. It must see exactly
-- what that EXISTS sees in the same snapshot: a rule made in this
-- transaction, none after a rollback, none once every rule is revoked (the
-- table keeps its pages), and a confined role is confined whichever path
-- found the rule. Other sessions' snapshots: specs/access_probe_snapshots.spec.
-- queue.push_mode() carries the same answer as its bit 1 (column mode_rule),
-- for queue_push; its bit 2 says some queue may have push defaults.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;
CREATE ROLE regress_probe_confined LOGIN;
GRANT queue_producer TO regress_probe_confined;

CREATE FUNCTION pg_temp.probe() RETURNS TABLE (probe boolean, subquery boolean, mode_rule boolean)
LANGUAGE sql AS $f$
    SELECT queue.rules_exist(), EXISTS (SELECT FROM queue.access_rules), queue.push_mode() & 1 = 1
$f$;

-- A new installation: no rule, no page.
SELECT * FROM pg_temp.probe();
SELECT pg_relation_size('queue.access_rules') AS bytes;

-- A rule made in this transaction is seen at once, and gone after a rollback.
BEGIN;
SELECT queue_grant_access('regress_probe_confined', 'produce', 'mail') IS NOT NULL AS granted;
SELECT * FROM pg_temp.probe();
ROLLBACK;
SELECT * FROM pg_temp.probe();

-- The rolled-back row left a page: still no rule.
SELECT pg_relation_size('queue.access_rules') > 0 AS has_pages;

-- A committed rule confines the role: its own queue works, another does not.
SELECT queue_grant_access('regress_probe_confined', 'produce', 'mail') IS NOT NULL AS granted;
SELECT * FROM pg_temp.probe();
SET ROLE regress_probe_confined;
SELECT queue_push('mail', '{}') > 0 AS pushed;
SELECT queue_push('billing', '{}');
RESET ROLE;

-- Every rule revoked: the pages stay, the rows are gone, nobody is confined.
SELECT queue_revoke_access('regress_probe_confined') AS revoked;
SELECT * FROM pg_temp.probe();
SET ROLE regress_probe_confined;
SELECT queue_push('billing', '{}') > 0 AS pushed;
RESET ROLE;

-- Push defaults set for some queue: bit 2 is on, and a push takes them.
SELECT queue_configure('mail', priority => 5) IS NOT NULL AS configured;
SELECT queue.push_mode() & 2 = 2 AS mode_defaults;
SELECT queue_push('mail', '{}') AS pushed_id \gset
SELECT priority FROM queue.jobs WHERE id = :pushed_id;

-- Internal: not callable by a role of the product.
SET ROLE regress_probe_confined;
SELECT queue.rules_exist();
SELECT queue.push_mode();
RESET ROLE;

DROP EXTENSION queue;
DROP ROLE regress_probe_confined;
