-- Roles and grants. Runs last, after every function exists.
--
-- Three NOLOGIN roles that admins grant to users:
--   queue_producer  push jobs and look at them
--   queue_worker    claim and finish jobs
--   queue_admin     everything, maintenance and schedules included
-- Roles are cluster-wide, so they are created only when missing (the
-- extension may be installed in several databases). An existing role of the
-- same name is used only when this extension made it: it carries the
-- comment written here at creation, and it has no attribute beyond NOLOGIN.
-- Anything else is refused: a role someone made in advance, with themselves
-- as a member, would otherwise be handed every right below. (Writing a
-- role's comment takes CREATEROLE, which can grant itself these roles
-- anyway.)
DO $$
DECLARE
    v_role text;
    v_marker constant text := 'role of the queue extension';
    r record;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['queue_producer', 'queue_worker', 'queue_admin'] LOOP
        SELECT a.oid, a.rolcanlogin OR a.rolsuper OR a.rolcreaterole OR a.rolcreatedb
                      OR a.rolreplication OR a.rolbypassrls AS privileged,
               pg_catalog.shobj_description(a.oid, 'pg_authid') AS marker
          INTO r
          FROM pg_catalog.pg_roles a WHERE a.rolname = v_role;
        IF NOT FOUND THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', v_role);
            EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', v_role, v_marker);
        ELSIF r.marker IS DISTINCT FROM v_marker OR r.privileged THEN
            RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                MESSAGE = pg_catalog.format('role %s exists and was not made by the queue extension', v_role),
                HINT = pg_catalog.format('Drop or rename it. If it is the one an earlier installation made, '
                              'make sure it is NOLOGIN with no other attribute and mark it: COMMENT ON ROLE %s IS %L.',
                              v_role, v_marker);
        END IF;
    END LOOP;
END;
$$;

-- Nobody but the owner touches the internal schema directly.
REVOKE ALL ON ALL TABLES IN SCHEMA queue FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA queue FROM PUBLIC;

-- Public API: no access by default, then per role.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                          AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'queue'
         WHERE p.proname LIKE 'queue\_%'
           AND p.pronamespace <> 'queue'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO queue_admin', f);
    END LOOP;
END;
$$;

GRANT EXECUTE ON FUNCTION
    @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_priority(text),
    @extschema@.queue_size(text),
    @extschema@.queue_peek(text, int),
    @extschema@.queue_job(bigint),
    @extschema@.queue_dependencies(bigint),
    @extschema@.queue_batch_open(jsonb, jsonb),
    @extschema@.queue_batch_close(bigint),
    @extschema@.queue_batch_cancel(bigint),
    @extschema@.queue_batch(bigint),
    @extschema@.queue_batches(text, int)
TO queue_producer;

GRANT EXECUTE ON FUNCTION
    @extschema@.queue_pop(text, text, int, interval),
    @extschema@.queue_ack(bigint, jsonb, int),
    @extschema@.queue_ack(bigint[]),
    @extschema@.queue_ack_batch(bigint[], int[], jsonb[]),
    @extschema@.queue_fail(bigint, text, int, interval, boolean),
    @extschema@.queue_release(bigint, int),
    @extschema@.queue_ack_pop(text, text, int, bigint[], int[], jsonb[]),
    @extschema@.queue_touch(bigint, interval, int),
    @extschema@.queue_progress(bigint, int, int, text, int),
    @extschema@.queue_heartbeat(text, jsonb),
    @extschema@.queue_priority(text),
    @extschema@.queue_dependencies(bigint)
TO queue_worker;

-- queue_schedule reaches the internal table through this one SECURITY
-- DEFINER function, which takes the owner from the session, not from an
-- argument.
GRANT USAGE ON SCHEMA queue TO queue_admin;
GRANT EXECUTE ON FUNCTION queue.save_schedule(text, text, text, jsonb, int, text, int, interval, boolean)
    TO queue_admin;

-- pg_dump skips the contents of an extension's tables unless they are
-- marked as configuration: without this, a dump and restore would lose every
-- job, schedule and worker row (and restart the id sequences).
SELECT pg_catalog.pg_extension_config_dump('queue.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('queue.jobs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('queue.finished_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('queue.schedules', '');
SELECT pg_catalog.pg_extension_config_dump('queue.schedules_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('queue.workers', '');
SELECT pg_catalog.pg_extension_config_dump('queue.stats', '');
SELECT pg_catalog.pg_extension_config_dump('queue.job_times', '');
SELECT pg_catalog.pg_extension_config_dump('queue.stats_minutes', '');
SELECT pg_catalog.pg_extension_config_dump('queue.job_errors', '');
SELECT pg_catalog.pg_extension_config_dump('queue.access_rules', '');
SELECT pg_catalog.pg_extension_config_dump('queue.queue_settings', '');
SELECT pg_catalog.pg_extension_config_dump('queue.job_deps', '');
SELECT pg_catalog.pg_extension_config_dump('queue.batches', '');
SELECT pg_catalog.pg_extension_config_dump('queue.batches_id_seq', '');
