-- Roles: producers push, workers claim and finish, admins do everything;
-- nobody reaches the internal tables directly.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;
SELECT rolname FROM pg_roles WHERE rolname LIKE 'queue\_%' ORDER BY 1;

CREATE ROLE regress_queue_app LOGIN;
CREATE ROLE regress_queue_bg LOGIN;
CREATE ROLE regress_queue_nobody LOGIN;
GRANT queue_producer TO regress_queue_app;
GRANT queue_worker TO regress_queue_bg;

SET ROLE regress_queue_app;
SELECT queue_push('sec', '{"from": "app"}');
SELECT queue_size('sec');
SELECT queue_pop('sec');
SELECT * FROM queue.jobs;
RESET ROLE;

SET ROLE regress_queue_bg;
SELECT id, payload FROM queue_pop('sec');
SELECT queue_ack(1);
SELECT queue_push('sec', '{}');
SELECT queue_tick();
RESET ROLE;

SET ROLE regress_queue_nobody;
SELECT queue_push('sec', '{}');
SELECT queue_pop('sec');
SELECT queue.check_queue_name('x');
SELECT queue_schedule('s', '@daily', 'q');
RESET ROLE;

-- Schedules: admins only; the creator is the owner, and a schedule stops
-- pushing when its owner loses the right to push.
CREATE ROLE regress_queue_ops LOGIN;
GRANT queue_admin TO regress_queue_ops;
SET ROLE regress_queue_ops;
SELECT queue_schedule('nightly', '@daily', 'sec') > 0 AS created;
SELECT owner FROM queue_schedules();
-- Admins may use the schema (for queue.upsert_schedule) but not read the
-- job tables behind the functions, history included.
SELECT count(*) FROM queue.finished_jobs;
SELECT count(*) FROM queue.all_jobs;
RESET ROLE;
REVOKE queue_admin FROM regress_queue_ops;
UPDATE queue.schedules SET next_run_at = now() - interval '1 minute';
SELECT queue_tick() ->> 'fired' AS fired;
SELECT last_error FROM queue_schedules();
SELECT queue_trigger('nightly');
SELECT count(*) AS jobs_from_schedule FROM queue.all_jobs WHERE queue = 'sec' AND id > 1;

-- Every public function is SECURITY DEFINER with a pinned search_path,
-- and has a comment. Two exceptions: queue_priority touches no table, and
-- queue_schedule runs as its caller to record the caller as the owner.
SELECT p.oid::regprocedure AS function
  FROM pg_proc p
 WHERE p.proname LIKE 'queue\_%' AND p.pronamespace = 'public'::regnamespace
   AND (NOT (p.prosecdef OR p.proname IN ('queue_priority', 'queue_schedule'))
        OR p.proconfig IS NULL
        OR obj_description(p.oid, 'pg_proc') IS NULL);

DROP EXTENSION queue;
DROP ROLE regress_queue_app, regress_queue_bg, regress_queue_nobody, regress_queue_ops;
