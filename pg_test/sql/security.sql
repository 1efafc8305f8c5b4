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
RESET ROLE;

-- Every public function is SECURITY DEFINER with a pinned search_path,
-- and has a comment.
SELECT p.oid::regprocedure AS function
  FROM pg_proc p
 WHERE p.proname LIKE 'queue\_%' AND p.pronamespace = 'public'::regnamespace
   AND (NOT (p.prosecdef OR p.proname = 'queue_priority')
        OR p.proconfig IS NULL
        OR obj_description(p.oid, 'pg_proc') IS NULL);

DROP ROLE regress_queue_app, regress_queue_bg, regress_queue_nobody;
DROP EXTENSION queue;
