-- Roles and grants. Runs last, after every function exists.
--
-- Three NOLOGIN roles that admins grant to users:
--   queue_producer  push jobs and look at them
--   queue_worker    claim and finish jobs
--   queue_admin     everything, maintenance and schedules included
-- Roles are cluster-wide, so they are created only when missing (the
-- extension may be installed in several databases).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'queue_producer') THEN
        CREATE ROLE queue_producer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'queue_worker') THEN
        CREATE ROLE queue_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'queue_admin') THEN
        CREATE ROLE queue_admin NOLOGIN;
    END IF;
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
        SELECT p.oid::regprocedure
          FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'queue'
         WHERE p.proname LIKE 'queue\_%'
           AND p.pronamespace <> 'queue'::regnamespace
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO queue_admin', f);
    END LOOP;
END;
$$;

GRANT EXECUTE ON FUNCTION
    @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text),
    @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text),
    @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text),
    @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text),
    @extschema@.queue_priority(text),
    @extschema@.queue_size(text),
    @extschema@.queue_peek(text, int),
    @extschema@.queue_job(bigint)
TO queue_producer;

GRANT EXECUTE ON FUNCTION
    @extschema@.queue_pop(text, text, int),
    @extschema@.queue_ack(bigint, jsonb, int),
    @extschema@.queue_ack(bigint[]),
    @extschema@.queue_fail(bigint, text, int, interval, boolean),
    @extschema@.queue_touch(bigint, interval, int),
    @extschema@.queue_progress(bigint, int, int, text),
    @extschema@.queue_heartbeat(text, jsonb),
    @extschema@.queue_priority(text)
TO queue_worker;

-- queue_schedule runs as its caller (it records the caller as the owner)
-- and reaches the internal table through this one SECURITY DEFINER function.
GRANT USAGE ON SCHEMA queue TO queue_admin;
GRANT EXECUTE ON FUNCTION queue.upsert_schedule(name, text, text, text, jsonb, int, text, int, interval, boolean)
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
