-- The scheduler: named schedules that push jobs. Parsing and time
-- arithmetic are Rust (src/cron.rs, src/scheduler.rs); the firing is here,
-- run by the scheduler background service and by queue_tick().
--
-- A schedule only ever pushes a job, with its own options, and only while
-- the role that created it may push jobs. It never runs SQL.

CREATE TABLE queue.schedules (
    id           bigserial PRIMARY KEY,
    name         text COLLATE "C" NOT NULL UNIQUE,
    schedule     text NOT NULL,
    kind         text NOT NULL,
    queue        text COLLATE "C" NOT NULL,
    payload      jsonb NOT NULL,
    priority     int NOT NULL,
    serial_group text COLLATE "C",
    max_attempts int NOT NULL,
    timeout      interval NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    owner        name NOT NULL,
    next_run_at  timestamptz,
    last_run_at  timestamptz,
    last_job_id  bigint,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The scheduler and the timeline read schedules in next-run order.
CREATE INDEX schedules_due ON queue.schedules (next_run_at)
    WHERE enabled AND next_run_at IS NOT NULL;

/*
 * queue.owner_may_push: whether a role may still push jobs (superuser,
 * queue_producer or queue_admin). Checked every time a schedule fires.
 */
CREATE FUNCTION queue.owner_may_push(p_owner name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_roles r
         WHERE r.rolname = p_owner
           AND (r.rolsuper
                OR pg_has_role(r.oid, 'queue_producer', 'USAGE')
                OR pg_has_role(r.oid, 'queue_admin', 'USAGE')));
$$;

/*
 * queue.check_schedule_owner: raise 42501 unless the caller may change or
 * run the schedule p_name owned by p_owner: a superuser, the owner, or a
 * member of the owner role. One admin cannot take over, delete or run
 * another's schedule; a schedule whose owner no longer exists may be taken
 * over (it cannot fire).
 */
CREATE FUNCTION queue.check_schedule_owner(p_owner name, p_name text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_owner oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = p_owner);
    v_caller oid := queue.caller();
BEGIN
    IF v_owner IS NOT NULL AND v_owner <> v_caller AND NOT queue.rule_binds(v_caller, v_owner)
       AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = v_caller) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('schedule "%s" belongs to %s', p_name, p_owner),
            HINT = format('Only %s, its members and superusers may change, delete or run it.', p_owner);
    END IF;
END;
$$;

/*
 * queue.push_for_schedule: push one job of a schedule, as its owner may:
 * the owner must still hold queue_producer or queue_admin, and its access
 * rules must allow the schedule's queue and serial group.
 */
CREATE FUNCTION queue.push_for_schedule(s queue.schedules) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT queue.owner_may_push(s.owner) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('schedule "%s": its owner %s may not push jobs', s.name, s.owner),
            HINT = 'Grant queue_producer to the owner, or re-create the schedule as a role that has it.';
    END IF;
    IF queue.rules_exist() THEN
        PERFORM queue.check_access((SELECT r.oid FROM pg_roles r WHERE r.rolname = s.owner), 'produce',
                                   s.queue, s.serial_group);
    END IF;
    RETURN @extschema@.queue_push(s.queue, s.payload, s.priority, serial_group => s.serial_group,
                                  max_attempts => s.max_attempts, timeout => s.timeout);
END;
$$;

/*
 * queue.scheduler_pass: fire every due schedule, at most p_batch of them.
 *
 * Due schedules are locked (SKIP LOCKED) and their next_run_at moves past
 * now() in the same transaction that pushes the job, so two passes running
 * at once never push the same slot twice: the second skips the locked row,
 * or, once the first committed, no longer sees it as due. The next run is
 * computed from now(), so after downtime a schedule runs once, not once per
 * missed slot. A push that fails (bad owner, bad options) is recorded in
 * last_error and the schedule moves on. Returns {"fired", "failed", "more",
 * "next_in_ms"} (milliseconds until the next due schedule, for the service's
 * sleep).
 */
CREATE FUNCTION queue.scheduler_pass(p_batch int DEFAULT 100) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- No JIT, as for the maintenance pass: it runs every tick.
SET jit = off AS $$
DECLARE
    s        queue.schedules;
    v_job    bigint;
    v_error  text;
    v_fired  int := 0;
    v_failed int := 0;
    v_next   timestamptz;
BEGIN
    FOR s IN
        SELECT * FROM queue.schedules
         WHERE enabled AND next_run_at <= now()
           -- A push into a serial group takes the group's lock: a session
           -- holding it must not stall every other schedule. The schedule
           -- stays due and fires once the group is free.
           AND (serial_group IS NULL OR queue.group_try_lock(queue.group_lock_key(serial_group)))
         ORDER BY next_run_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            v_job := queue.push_for_schedule(s);
            v_error := NULL;
            v_fired := v_fired + 1;
        EXCEPTION WHEN lock_not_available THEN
            -- Waited past the pass's lock timeout (src/services.rs): not a
            -- failure of the schedule. It stays due, unchanged, and fires
            -- once the lock is free (the pass looks again soon).
            CONTINUE;
        WHEN OTHERS THEN
            v_job := NULL;
            v_error := SQLERRM;
            v_failed := v_failed + 1;
            RAISE WARNING 'queue scheduler: %', SQLERRM;
        END;
        UPDATE queue.schedules
           SET last_run_at = now(),
               last_job_id = coalesce(v_job, last_job_id),
               last_error  = v_error,
               next_run_at = queue.schedule_after_run(schedule, next_run_at, now()),
               enabled     = enabled AND kind <> 'once'
         WHERE id = s.id;
    END LOOP;

    -- A schedule still due was skipped (its group busy, or locked by
    -- another pass): look again soon, not at once, so that a busy group
    -- does not make the scheduler spin.
    SELECT least(min(next_run_at) FILTER (WHERE next_run_at > now()),
                 CASE WHEN bool_or(next_run_at <= now()) THEN now() + interval '250 milliseconds' END)
      INTO v_next FROM queue.schedules WHERE enabled AND next_run_at IS NOT NULL;
    RETURN jsonb_build_object(
        'fired', v_fired, 'failed', v_failed,
        'more', v_fired + v_failed >= p_batch,
        'next_in_ms', CASE WHEN v_next IS NULL THEN NULL
                           ELSE greatest(0, ceil(extract(epoch FROM v_next - clock_timestamp()) * 1000))::bigint END);
END;
$$;

/*
 * queue.save_schedule: create or replace a schedule (by name), owned by the
 * caller (queue.caller(): the session's role, never an argument, so no one
 * can record another role as the owner). Replacing a schedule of another
 * owner needs the right to change it (queue.check_schedule_owner); the
 * owner must be allowed to push into the schedule's queue.
 */
CREATE FUNCTION queue.save_schedule(
    p_name text, p_schedule text, p_queue text, p_payload jsonb, p_priority int,
    p_serial_group text, p_max_attempts int, p_timeout interval, p_enabled boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_owner name := pg_get_userbyid(queue.caller());
    v_kind  text;
    v_id    bigint;
    v_old   name;
    v_old_queue text;
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'schedule name must not be NULL',
            HINT = 'Name the schedule; queue_schedule with an existing name replaces it.';
    END IF;
    PERFORM queue.check_key('schedule name', p_name);
    IF p_schedule IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'schedule must not be NULL',
            HINT = 'Pass a cron expression, @daily, ''every 10 minutes'', ''at <timestamptz>'' or ''manual''.';
    END IF;
    PERFORM queue.check_push_args(p_queue, p_serial_group, queue.json_size(p_payload), NULL, NULL,
                                  p_max_attempts, p_timeout, '0', '0', NULL, NULL, p_priority);
    v_kind := queue.schedule_kind(p_schedule);
    IF NOT queue.owner_may_push(v_owner) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('role %s may not push jobs, so it cannot own a schedule', v_owner),
            HINT = 'Grant queue_producer or queue_admin to the role.';
    END IF;
    IF queue.rules_exist() THEN
        PERFORM queue.check_access(queue.caller(), 'produce', p_queue, p_serial_group);
    END IF;
    -- Another team's schedule is neither locked nor named.
    SELECT s.queue INTO v_old_queue FROM queue.schedules s WHERE s.name = p_name;
    IF FOUND AND NOT queue.access_allows(queue.scope('read'), v_old_queue) THEN
        -- Another team's schedule: say the name is taken, not whose it is.
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = format('schedule name "%s" is taken', p_name),
            HINT = 'Schedule names are shared by every team of the database: choose another, e.g. prefixed with your queue''s name.';
    END IF;
    SELECT s.owner INTO v_old FROM queue.schedules s WHERE s.name = p_name FOR UPDATE;
    IF FOUND THEN
        PERFORM queue.check_schedule_owner(v_old, p_name);
    END IF;

    INSERT INTO queue.schedules AS s (name, schedule, kind, queue, payload, priority, serial_group,
                                      max_attempts, timeout, enabled, owner, next_run_at)
    VALUES (p_name, p_schedule, v_kind, p_queue, p_payload, p_priority, p_serial_group,
            p_max_attempts, p_timeout, coalesce(p_enabled, true), v_owner,
            queue.schedule_next(p_schedule, now()))
    ON CONFLICT (name) DO UPDATE
       SET schedule = excluded.schedule, kind = excluded.kind, queue = excluded.queue,
           payload = excluded.payload, priority = excluded.priority,
           serial_group = excluded.serial_group, max_attempts = excluded.max_attempts,
           timeout = excluded.timeout, enabled = excluded.enabled, owner = excluded.owner,
           next_run_at = excluded.next_run_at, last_error = NULL
    RETURNING s.id INTO v_id;
    RETURN v_id;
END;
$$;

/*
 * queue_schedule: create or replace (by name) a schedule that pushes a job.
 * Its owner is the caller, whose right to push (and access rules) are
 * checked again every time the schedule fires.
 */
CREATE FUNCTION @extschema@.queue_schedule(
    name text, schedule text, queue text, payload jsonb DEFAULT '{}',
    priority int DEFAULT 0, serial_group text DEFAULT NULL, max_attempts int DEFAULT 3,
    timeout interval DEFAULT '5 minutes', enabled boolean DEFAULT true)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT queue.save_schedule($1, $2, $3, $4, $5, $6, $7, $8, $9);
$$;
COMMENT ON FUNCTION @extschema@.queue_schedule(text, text, text, jsonb, int, text, int, interval, boolean) IS
'Create or replace (by name) a schedule that pushes a job: 5-field cron, @hourly..@yearly, ''every N seconds|minutes|hours|days'', ''at <timestamptz>'' or ''manual''. Cron runs in queue.timezone. Returns the schedule id.';

CREATE FUNCTION @extschema@.queue_unschedule(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_owner name;
    v_queue text;
BEGIN
    -- A schedule of a queue the caller may not read is unknown to it, as
    -- in queue_schedules(): its name and owner stay another team's, and it
    -- is not locked (which would hold up its firing).
    SELECT s.queue INTO v_queue FROM queue.schedules s WHERE s.name = queue_unschedule.name;
    IF NOT FOUND OR NOT queue.access_allows(queue.scope('read'), v_queue) THEN
        RETURN false;
    END IF;
    SELECT s.owner INTO v_owner FROM queue.schedules s WHERE s.name = queue_unschedule.name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM queue.check_schedule_owner(v_owner, queue_unschedule.name);
    DELETE FROM queue.schedules s WHERE s.name = queue_unschedule.name;
    RETURN true;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_unschedule(text) IS
'Delete a schedule by name; false when there is none. Jobs it already pushed stay.';

/*
 * queue_trigger: run a schedule now (any kind, enabled or not): push its
 * job and return the job id. Its regular next run does not change.
 */
CREATE FUNCTION @extschema@.queue_trigger(name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s     queue.schedules;
    v_job bigint;
BEGIN
    -- Unknown to a caller that may not read its queue, and then not locked.
    IF NOT EXISTS (SELECT FROM queue.schedules x WHERE x.name = queue_trigger.name
                                                  AND queue.access_allows(queue.scope('read'), x.queue)) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('schedule "%s" does not exist', queue_trigger.name),
            HINT = 'queue_schedules() lists the schedules.';
    END IF;
    SELECT * INTO s FROM queue.schedules WHERE schedules.name = queue_trigger.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('schedule "%s" does not exist', queue_trigger.name),
            HINT = 'queue_schedules() lists the schedules.';
    END IF;
    PERFORM queue.check_schedule_owner(s.owner, s.name);
    v_job := queue.push_for_schedule(s);
    UPDATE queue.schedules SET last_run_at = now(), last_job_id = v_job, last_error = NULL WHERE id = s.id;
    RETURN v_job;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_trigger(text) IS
'Run a schedule now: push its job and return the job id. The regular next run is unchanged.';

CREATE FUNCTION @extschema@.queue_schedules()
RETURNS TABLE (name text, kind text, schedule text, queue text, enabled boolean,
               last_run_at timestamptz, last_job_id bigint, next_run_at timestamptz,
               priority int, serial_group text, payload jsonb, owner name, last_error text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.name, s.kind, s.schedule, s.queue, s.enabled, s.last_run_at, s.last_job_id,
           s.next_run_at, s.priority, s.serial_group, s.payload, s.owner, s.last_error
      FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a, queue.schedules s
     WHERE queue.access_allows(a.patterns, s.queue)
     ORDER BY s.name;
$$;
COMMENT ON FUNCTION @extschema@.queue_schedules() IS
'Every schedule: name, kind, schedule, queue, enabled, last_run_at, last_job_id, next_run_at, priority, serial_group, payload, owner, last_error.';

/*
 * queue_timeline: the upcoming runs of all schedules within `horizon`,
 * soonest first, at most max_rows. Only the max_rows schedules that run
 * soonest can appear (each of them runs at least once before any other
 * schedule), so the work is max_rows^2 at worst, whatever the number of
 * schedules.
 */
CREATE FUNCTION @extschema@.queue_timeline(horizon interval DEFAULT '1 day', max_rows int DEFAULT 20)
RETURNS TABLE (name text, queue text, kind text, run_at timestamptz, is_due boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_horizon interval := queue_timeline.horizon;
    v_max     int := queue_timeline.max_rows;
    v_cutoff  timestamptz;
    v_scope   text[] := queue.scope('read');
BEGIN
    IF v_horizon IS NULL OR v_horizon < interval '0' OR v_max IS NULL OR v_max < 1 OR v_max > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid timeline arguments: horizon %s, max_rows %s',
                             coalesce(v_horizon::text, 'NULL'), coalesce(v_max::text, 'NULL')),
            HINT = 'horizon is a non-negative interval; max_rows is between 1 and 10000.';
    END IF;
    PERFORM queue.check_span('horizon', v_horizon, 'window');
    SELECT s.next_run_at INTO v_cutoff
      FROM queue.schedules s
     WHERE s.enabled AND s.next_run_at IS NOT NULL
       AND (v_scope IS NULL OR queue.access_allows(v_scope, s.queue))
     ORDER BY s.next_run_at OFFSET v_max - 1 LIMIT 1;
    RETURN QUERY
    SELECT s.name::text, s.queue::text, s.kind, r.run_at, r.run_at <= now()
      FROM queue.schedules s,
           LATERAL queue.schedule_upcoming(s.schedule, s.next_run_at, now(), now() + v_horizon, v_max) AS r(run_at)
     WHERE s.enabled AND s.next_run_at IS NOT NULL
       AND (v_scope IS NULL OR queue.access_allows(v_scope, s.queue))
       AND s.next_run_at <= coalesce(v_cutoff, 'infinity')
       AND s.next_run_at <= now() + v_horizon
     ORDER BY r.run_at, s.name
     LIMIT v_max;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_timeline(interval, int) IS
'Upcoming schedule runs within horizon, soonest first, at most max_rows; is_due marks runs whose time has come.';
