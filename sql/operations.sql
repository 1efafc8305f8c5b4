-- Operations: dead letters, clean-up, progress, worker heartbeats.

-- One row per worker process, written only by that worker: no shared row.
CREATE TABLE queue.workers (
    worker         text COLLATE "C" PRIMARY KEY,
    info           jsonb NOT NULL DEFAULT '{}',
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    -- Set by the maintenance pass when the worker has been silent for two
    -- minutes; cleared by its next heartbeat.
    stale_since    timestamptz,
    -- The role whose heartbeat made the row (NULL: made before 0.2.0).
    registered_by  oid
);

-- Per-queue settings, one row per queue that has any. Today: pausing. A
-- paused queue accepts pushes and lets running jobs finish, but queue_pop
-- hands out none of its jobs. Read by every claim (one primary-key probe of
-- a table of a few rows), written only by queue_pause and queue_resume.
CREATE TABLE queue.queue_settings (
    queue        text COLLATE "C" PRIMARY KEY,
    paused_at    timestamptz,           -- NULL: not paused
    paused_by    name,
    -- What a push into the queue uses when it does not say (NULL: the
    -- global default), set by queue_configure.
    priority     int,
    max_attempts int,
    timeout      interval,
    backoff_base interval,
    backoff_max  interval,
    -- How long the queue's final jobs are kept (NULL: queue.retention),
    -- captured by each push as the job's keep_for.
    retention    interval
);

/*
 * queue.mark_stale_workers: a maintenance duty. Workers silent for two
 * minutes are marked stale (queue_health reports them; queue_reap_workers
 * releases their jobs). Returns how many were newly marked.
 */
CREATE FUNCTION queue.mark_stale_workers() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count int;
BEGIN
    UPDATE queue.workers
       SET stale_since = now()
     WHERE stale_since IS NULL AND last_heartbeat < now() - interval '2 minutes';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

/*
 * queue.forget_jobs: delete jobs by id (never processing ones) and re-elect
 * the serial groups whose active job went with them. A deleted waiting job
 * that others depend on will never complete: its dependents are cancelled
 * as if it had been. Returns how many.
 */
CREATE FUNCTION queue.forget_jobs(p_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_gone  record;
    v_group text;
BEGIN
    SELECT * INTO v_gone FROM queue.delete_jobs(p_ids);
    FOREACH v_group IN ARRAY coalesce(v_gone.groups, '{}') LOOP
        PERFORM queue.group_elect(v_group);
    END LOOP;
    IF v_gone.parents IS NOT NULL THEN
        PERFORM queue.release_children(v_gone.parents, 'cancelled');
    END IF;
    IF v_gone.batches IS NOT NULL THEN
        PERFORM queue.batch_progress(v_gone.batches, NULL);
    END IF;
    RETURN v_gone.deleted;
END;
$$;

/*
 * queue.revive_jobs: dead jobs (failed, expired) back to pending with their
 * attempts reset, exactly once: the status condition is re-checked under the
 * row lock, so a second concurrent retry finds nothing. Jobs of a serial
 * group come back waiting and their group is re-elected. The dependents
 * they cancelled come back blocked (queue.revive_children). A live job with
 * the same dedupe_key makes the retry fail (23505) rather than duplicate it.
 */
CREATE FUNCTION queue.revive_jobs(p_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count  bigint;
    v_queues text[];
    v_groups text[];
    v_parents bigint[];
    v_batches bigint[];
BEGIN
    WITH dead AS (
        DELETE FROM queue.finished_jobs j
         WHERE j.id = ANY (p_ids) AND j.status IN ('failed', 'expired')
        RETURNING j.*
    ), revived AS (
        -- Back into the live table under its own id; attempts, times, worker,
        -- result and progress start afresh, the last error stays for reference.
        INSERT INTO queue.jobs AS j
               (id, queue, status, priority, group_waiting, serial_group, run_at,
                max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                dedupe_key, payload, last_error, created_at, has_children, tags, batch_id, keep_for)
        SELECT d.id, d.queue, 'pending', d.priority, d.serial_group IS NOT NULL, d.serial_group, now(),
               d.max_attempts, d.timeout, d.backoff_base, d.backoff_max, d.retry_delays,
               d.dedupe_key, d.payload, d.last_error, d.created_at, d.has_children, d.tags, d.batch_id, d.keep_for
          FROM dead d
        -- (or 'expired': the counters treat every final status alike here)
        RETURNING j.id, j.queue, j.serial_group, j.batch_id, queue.tally(j.queue, j.priority, 'failed', 'pending')
    )
    SELECT count(*), array_agg(DISTINCT queue) FILTER (WHERE serial_group IS NULL),
           array_agg(DISTINCT serial_group) FILTER (WHERE serial_group IS NOT NULL),
           array_agg(id), array_agg(batch_id) FILTER (WHERE batch_id IS NOT NULL)
      INTO v_count, v_queues, v_groups, v_parents, v_batches FROM revived;
    PERFORM queue.announce(v_queues, v_groups);
    IF v_batches IS NOT NULL THEN
        PERFORM queue.batch_revived(v_batches, 'failed');
    END IF;
    -- Dependents, also those pushed after the job died (cancelled at once):
    -- a later statement, so that a push that held the dead row's lock is
    -- seen. The revived jobs that have any are flagged for their finish.
    IF v_count > 0 AND EXISTS (SELECT FROM queue.job_deps) THEN
        v_parents := ARRAY(SELECT DISTINCT d.parent FROM queue.job_deps d WHERE d.parent = ANY (v_parents));
        IF cardinality(v_parents) > 0 THEN
            UPDATE queue.jobs j SET has_children = true WHERE j.id = ANY (v_parents) AND NOT j.has_children;
            PERFORM queue.revive_children(v_parents);
        END IF;
    END IF;
    RETURN v_count;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION USING ERRCODE = 'unique_violation',
        MESSAGE = 'a live job with the same dedupe_key exists; the dead job was not retried',
        HINT = 'Let the live job finish, or queue_delete the dead one.';
END;
$$;

-- The row queue_dead returns (a type, so that its `queue` column may share
-- the name of the `queue` parameter).
CREATE TYPE queue.dead_job AS (
    id bigint, queue text, status text, attempts int, max_attempts int, last_error text,
    payload jsonb, serial_group text, created_at timestamptz, finished_at timestamptz);

CREATE FUNCTION @extschema@.queue_dead(queue text DEFAULT NULL, max_rows int DEFAULT 100, tag text DEFAULT NULL)
RETURNS SETOF queue.dead_job
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue text := queue.check_queue_filter(queue_dead.queue);
    v_max   int  := queue.check_count('max_rows', queue_dead.max_rows, 100000,
                                      'max_rows is how many dead jobs to list, newest first.');
    v_scope text[] := queue.scope('read', v_queue);
BEGIN
    RETURN QUERY
    SELECT j.id, j.queue::text, j.status::text, j.attempts, j.max_attempts, j.last_error, j.payload,
           j.serial_group::text, j.created_at, j.finished_at
      FROM queue.finished_jobs j
     WHERE j.status IN ('failed', 'expired') AND (v_queue IS NULL OR j.queue = v_queue)
       AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))
       AND (queue_dead.tag IS NULL OR j.tags @> ARRAY[queue_dead.tag::text COLLATE "C"])
     ORDER BY j.finished_at DESC, j.id DESC
     LIMIT v_max;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_dead(text, int, text) IS
'Dead letters (failed and expired jobs), newest first, with their last error; of one queue or all, of one tag or all.';

-- The row queue_jobs returns.
CREATE TYPE queue.listed_job AS (
    id bigint, queue text, status text, priority int, serial_group text, attempt int, max_attempts int,
    run_at timestamptz, created_at timestamptz, started_at timestamptz, finished_at timestamptz,
    worker text, last_error text, payload jsonb, tags text[]);

/*
 * queue_jobs: browse jobs of any status, newest first, for tools and
 * dashboards (queuectl jobs, the job browser). Keyset paging: pass the
 * smallest id of a page as before_id for the next. A merge of the two
 * tables' primary keys read backwards: cheap for the first pages, a scan
 * of the skipped rows for a rare status deep in history. Not for workers.
 */
CREATE FUNCTION @extschema@.queue_jobs(queue text DEFAULT NULL, status text DEFAULT NULL,
                                       max_rows int DEFAULT 50, before_id bigint DEFAULT NULL,
                                       tag text DEFAULT NULL)
RETURNS SETOF queue.listed_job
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue  text := queue.check_queue_filter(queue_jobs.queue);
    v_max    int  := queue.check_count('max_rows', queue_jobs.max_rows, 10000,
                                       'max_rows is how many jobs to list, newest first.');
    v_scope  text[] := queue.scope('read', v_queue);
    v_status queue.job_status;
BEGIN
    IF status IS NOT NULL THEN
        IF NOT status = ANY (enum_range(NULL::queue.job_status)::text[]) THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown job status: %s', status),
                HINT = 'A status is one of ' || array_to_string(enum_range(NULL::queue.job_status)::text[], ', ') || '.';
        END IF;
        v_status := status::queue.job_status;
    END IF;
    RETURN QUERY
    SELECT j.id, j.queue::text, j.status::text, j.priority, j.serial_group::text, j.attempts, j.max_attempts,
           j.run_at, j.created_at, j.started_at, j.finished_at, j.worker, j.last_error, j.payload,
           j.tags::text[]
      FROM queue.all_jobs j
     WHERE (v_queue IS NULL OR j.queue = v_queue)
       AND (v_status IS NULL OR j.status = v_status)
       AND (queue_jobs.tag IS NULL OR j.tags @> ARRAY[queue_jobs.tag::text COLLATE "C"])
       AND (before_id IS NULL OR j.id < before_id)
       AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))
     ORDER BY j.id DESC
     LIMIT v_max;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_jobs(text, text, int, bigint, text) IS
'Jobs of one queue or all, of one status or all, of one tag or all, newest first (keyset paging with before_id): id, queue, status, priority, serial_group, attempt, max_attempts, run_at, created_at, started_at, finished_at, worker, last_error, payload, tags. For tools, not for workers.';

CREATE FUNCTION @extschema@.queue_retry(id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT queue.revive_jobs(ARRAY[$1]) > 0
                      WHERE queue.job_allowed(queue.caller(), 'produce', $1)), false);
$$;
COMMENT ON FUNCTION @extschema@.queue_retry(bigint) IS
'Put a dead job (failed or expired) back to pending with its attempts reset. True once; false for any other job, also for the second of two concurrent retries.';

CREATE FUNCTION @extschema@.queue_retry_all(queue text, tag text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_retry_all.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    RETURN queue.revive_jobs(ARRAY(
        SELECT j.id FROM queue.finished_jobs j
         WHERE j.queue = v_queue AND j.status IN ('failed', 'expired')
           AND (queue_retry_all.tag IS NULL OR j.tags @> ARRAY[queue_retry_all.tag::text COLLATE "C"])));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_retry_all(text, text) IS
'Put every dead job of a queue (of one tag, if given) back to pending; returns how many.';

CREATE FUNCTION @extschema@.queue_delete(id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT queue.forget_jobs(ARRAY[$1]) > 0
                      WHERE queue.job_allowed(queue.caller(), 'produce', $1)), false);
$$;
COMMENT ON FUNCTION @extschema@.queue_delete(bigint) IS
'Delete one job that is not processing (a processing job belongs to its worker). False for unknown or processing jobs.';

CREATE FUNCTION @extschema@.queue_purge_dead(queue text DEFAULT NULL, older_than interval DEFAULT NULL,
                                             tag text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue text := queue.check_queue_filter(queue_purge_dead.queue);
    v_older interval := queue.check_span('older_than', queue_purge_dead.older_than, 'window');
    v_scope text[]   := queue.scope('produce', v_queue);
BEGIN
    RETURN queue.forget_jobs(ARRAY(
        SELECT j.id FROM queue.finished_jobs j
         WHERE j.status IN ('failed', 'expired')
           AND (v_queue IS NULL OR j.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))
           AND (v_older IS NULL OR j.finished_at < now() - v_older)
           AND (queue_purge_dead.tag IS NULL OR j.tags @> ARRAY[queue_purge_dead.tag::text COLLATE "C"])));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_purge_dead(text, interval, text) IS
'Delete dead jobs (failed, expired), of one queue or all, of one tag or all, optionally only those finished longer ago than older_than; returns how many.';

CREATE FUNCTION @extschema@.queue_cleanup(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_scope text[] := queue.scope('produce');
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'older_than must not be NULL',
            HINT = 'Final jobs (completed, failed, expired, cancelled) finished longer ago than this are deleted.';
    END IF;
    PERFORM queue.check_span('older_than', older_than, 'window');
    RETURN queue.forget_jobs(ARRAY(
        SELECT j.id FROM queue.finished_jobs j
         WHERE j.finished_at < now() - older_than
           AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_cleanup(interval) IS
'Delete final jobs (completed, failed, expired, cancelled) that finished longer ago than older_than; returns how many.';

CREATE FUNCTION @extschema@.queue_clear(queue text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_clear.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    RETURN queue.forget_jobs(ARRAY(
        SELECT j.id FROM queue.jobs j
         WHERE j.queue = v_queue AND j.status IN ('pending', 'scheduled', 'retrying', 'blocked')));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_clear(text) IS
'Delete the waiting jobs of a queue (pending, scheduled, retrying, blocked), never processing ones; returns how many. Jobs of other queues that depend on them are cancelled.';

/*
 * queue_progress: a running job reports how far it is. The job must be
 * processing; given the claim's attempt, only that claim can report (a
 * worker whose lease ran out and whose job was claimed again changes
 * nothing). Without it, whatever claim is current gets the report.
 */
CREATE FUNCTION @extschema@.queue_progress(id bigint, current int, total int, message text DEFAULT NULL,
                                           attempt int DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    IF current IS NULL OR total IS NULL OR total < 1 OR current < 0 OR current > total THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid progress %s of %s', coalesce(current::text, 'NULL'), coalesce(total::text, 'NULL')),
            HINT = 'total is at least 1 and current is between 0 and total.';
    END IF;
    PERFORM queue.check_size('message', pg_column_size(message), 'info');
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN false;
    END IF;
    UPDATE queue.jobs j
       SET progress = jsonb_build_object('current', current, 'total', total,
                                         'percent', round(100.0 * current / total, 1),
                                         'message', message, 'updated_at', now())
     WHERE j.id = queue_progress.id AND j.status = 'processing'
       AND (attempt IS NULL OR j.attempts = attempt);
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_progress(bigint, int, int, text, int) IS
'Record the progress of a processing job (current of total, optional message); shown by queue_job. Given attempt, only that claim may report. False when the job is not processing or attempt is stale.';

CREATE FUNCTION @extschema@.queue_heartbeat(worker text, info jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    IF worker IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'worker must not be NULL',
            HINT = 'Name the worker as it names itself to queue_pop.';
    END IF;
    PERFORM queue.check_key('worker', worker);
    PERFORM queue.check_size('info', queue.json_size(info), 'info');
    -- A worker's row is its registrant's: a confined role may not take over
    -- (or keep alive) another role's worker of the same name.
    INSERT INTO queue.workers AS w (worker, info, registered_by) VALUES (worker, coalesce(info, '{}'), queue.caller())
    ON CONFLICT ON CONSTRAINT workers_pkey
    DO UPDATE SET last_heartbeat = now(), stale_since = NULL, info = coalesce(excluded.info, w.info),
                  registered_by = coalesce(w.registered_by, excluded.registered_by)
     WHERE w.registered_by IS NOT DISTINCT FROM excluded.registered_by OR w.registered_by IS NULL
        OR queue.scope('work') IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('worker "%s" is registered by another role', worker),
            HINT = 'Give each worker a name of its own, e.g. its queue, host and process id.';
    END IF;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_heartbeat(text, jsonb) IS
'A worker says it is alive (and anything about itself in info). Use the name it passes to queue_pop.';

CREATE FUNCTION @extschema@.queue_workers(stale_after interval DEFAULT '2 minutes')
RETURNS TABLE (worker text, last_heartbeat timestamptz, healthy boolean, running_jobs bigint,
               info jsonb, started_at timestamptz, stale_since timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_stale interval := queue.check_span('stale_after', queue_workers.stale_after, 'window');
BEGIN
    RETURN QUERY
    WITH running AS (
        SELECT j.worker, count(*) AS jobs FROM queue.processing_jobs() j GROUP BY j.worker
    )
    SELECT w.worker::text, w.last_heartbeat, w.last_heartbeat >= now() - v_stale,
           coalesce(r.jobs, 0), w.info, w.started_at, w.stale_since
      FROM queue.workers w
      LEFT JOIN running r ON r.worker = w.worker
     ORDER BY w.worker;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_workers(interval) IS
'Every worker that sent a heartbeat: last heartbeat, healthy (heartbeat within stale_after), its processing jobs, info.';

/*
 * queue_reap_workers: drop workers whose last heartbeat is older than
 * stale_after and release their processing jobs as failed attempts
 * ("worker lost"), so nothing waits for the lease. Returns how many jobs
 * were released.
 */
CREATE FUNCTION @extschema@.queue_reap_workers(stale_after interval DEFAULT '5 minutes') RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_worker text;
    v_job    record;
    v_count  bigint := 0;
    v_scope  text[] := queue.scope('work');
BEGIN
    IF stale_after IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'stale_after must not be NULL',
            HINT = 'Workers silent for longer than this are dropped and their jobs released.';
    END IF;
    PERFORM queue.check_span('stale_after', stale_after, 'window');
    -- A confined reaper drops a silent worker only when none of its running
    -- jobs is outside the reaper's queues, and the worker is its own or runs
    -- one of them: another team's workers stay for that team to reap.
    FOR v_worker IN
        DELETE FROM queue.workers w
         WHERE w.last_heartbeat < now() - stale_after
           AND (v_scope IS NULL
                OR (NOT EXISTS (SELECT FROM queue.processing_jobs() j
                                 WHERE j.worker = w.worker AND NOT queue.access_allows(v_scope, j.queue))
                    AND (w.registered_by = queue.caller()
                         OR EXISTS (SELECT FROM queue.processing_jobs() j WHERE j.worker = w.worker))))
        RETURNING w.worker
    LOOP
        FOR v_job IN
            SELECT j.id, j.attempts FROM queue.processing_jobs() j
             WHERE j.worker = v_worker AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))
        LOOP
            IF @extschema@.queue_fail(v_job.id, format('worker lost: %s stopped sending heartbeats', v_worker),
                                      attempt => v_job.attempts) IS NOT NULL THEN
                v_count := v_count + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_reap_workers(interval) IS
'Drop workers silent for longer than stale_after and release their processing jobs as failed attempts (''worker lost''); returns how many jobs were released.';

/*
 * queue_pause: stop handing out a queue's jobs. Pushes go on and jobs
 * already claimed run to their end; queue_pop (waiting ones included)
 * claims nothing of the queue until queue_resume. A claim whose statement
 * began before the pause committed may still return its jobs; every claim
 * that starts later sees the pause. A queue can be paused before it has
 * any job. Returns false when it was paused already.
 */
CREATE FUNCTION @extschema@.queue_pause(queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_pause.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    INSERT INTO queue.queue_settings AS s (queue, paused_at, paused_by)
    VALUES (v_queue, now(), pg_get_userbyid(queue.caller()))
    ON CONFLICT ON CONSTRAINT queue_settings_pkey
    DO UPDATE SET paused_at = excluded.paused_at, paused_by = excluded.paused_by
     WHERE s.paused_at IS NULL;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_pause(text) IS
'Pause a queue: pushes are accepted and running jobs finish, but queue_pop hands out none of its jobs until queue_resume. False when it was already paused.';

/*
 * queue_resume: hand out a paused queue's jobs again, and wake its workers
 * (LISTEN and waiting pops) as a push would. Returns false when the queue
 * was not paused.
 */
CREATE FUNCTION @extschema@.queue_resume(queue text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_resume.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    -- A row with nothing else in it goes (as in queue_configure).
    DELETE FROM queue.queue_settings s
     WHERE s.queue = v_queue AND s.paused_at IS NOT NULL AND s.priority IS NULL AND s.max_attempts IS NULL
       AND s.timeout IS NULL AND s.backoff_base IS NULL AND s.backoff_max IS NULL AND s.retention IS NULL;
    IF NOT FOUND THEN
        UPDATE queue.queue_settings s SET paused_at = NULL, paused_by = NULL
         WHERE s.queue = v_queue AND s.paused_at IS NOT NULL;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    PERFORM queue.wake(v_queue);
    RETURN true;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_resume(text) IS
'Resume a paused queue: its jobs are handed out again and its workers are woken. False when it was not paused.';

/*
 * queue_configure: a queue's defaults for what a push does not say
 * (priority, max_attempts, timeout, backoff_base, backoff_max) and how long
 * its final jobs are kept (retention). A value given replaces the queue's;
 * NULL keeps it; reset clears every value not given, back to the global
 * default. The merge happens in the upsert itself, so two concurrent calls
 * both take effect. The values are checked as a push with them would be
 * (22023), before anything changes. Jobs already pushed keep what they were
 * pushed with, the retention included: a push captures it, so that the
 * retention pass finds each final job's deadline in an index instead of
 * joining every one to its queue's settings. Returns the queue's settings,
 * as queue_settings() lists them.
 */
CREATE FUNCTION @extschema@.queue_configure(queue text, priority int DEFAULT NULL, max_attempts int DEFAULT NULL,
                                            timeout interval DEFAULT NULL, backoff_base interval DEFAULT NULL,
                                            backoff_max interval DEFAULT NULL, retention interval DEFAULT NULL,
                                            reset boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_queue text := queue.check_queue_name(queue);
    v_row   queue.queue_settings;
BEGIN
    PERFORM queue.scope('produce', v_queue);
    PERFORM queue.check_span('retention', retention, 'window');
    -- Pushes read the settings from now on (src/settings.rs), before this
    -- change can commit.
    PERFORM queue.push_defaults_may_exist();
    INSERT INTO queue.queue_settings AS s (queue, priority, max_attempts, timeout, backoff_base, backoff_max, retention)
    VALUES (v_queue, priority, max_attempts, timeout, backoff_base, backoff_max, retention)
    ON CONFLICT ON CONSTRAINT queue_settings_pkey DO UPDATE
       SET priority     = CASE WHEN reset THEN excluded.priority ELSE coalesce(excluded.priority, s.priority) END,
           max_attempts = CASE WHEN reset THEN excluded.max_attempts ELSE coalesce(excluded.max_attempts, s.max_attempts) END,
           timeout      = CASE WHEN reset THEN excluded.timeout ELSE coalesce(excluded.timeout, s.timeout) END,
           backoff_base = CASE WHEN reset THEN excluded.backoff_base ELSE coalesce(excluded.backoff_base, s.backoff_base) END,
           backoff_max  = CASE WHEN reset THEN excluded.backoff_max ELSE coalesce(excluded.backoff_max, s.backoff_max) END,
           retention    = CASE WHEN reset THEN excluded.retention ELSE coalesce(excluded.retention, s.retention) END
    RETURNING s.* INTO v_row;
    -- The checks of a push that leaves every one of these to the queue
    -- (an error undoes the upsert).
    PERFORM queue.check_push_args(v_queue, NULL, 0, NULL, NULL,
        coalesce(v_row.max_attempts, 3), coalesce(v_row.timeout, '5 minutes'),
        coalesce(v_row.backoff_base, '10 seconds'), coalesce(v_row.backoff_max, '1 hour'),
        NULL, NULL, coalesce(v_row.priority, 0));
    -- A row with nothing left in it goes: the claim's pause probe stays small.
    DELETE FROM queue.queue_settings s
     WHERE s.queue = v_queue AND s.paused_at IS NULL AND s.priority IS NULL AND s.max_attempts IS NULL
       AND s.timeout IS NULL AND s.backoff_base IS NULL AND s.backoff_max IS NULL AND s.retention IS NULL;
    RETURN jsonb_build_object('queue', v_queue, 'paused', v_row.paused_at IS NOT NULL,
                              'priority', v_row.priority, 'max_attempts', v_row.max_attempts,
                              'timeout', v_row.timeout, 'backoff_base', v_row.backoff_base,
                              'backoff_max', v_row.backoff_max, 'retention', v_row.retention);
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_configure(text, int, int, interval, interval, interval, interval, boolean) IS
'Set a queue''s defaults for what a push does not say: priority, max_attempts, timeout, backoff_base, backoff_max, and how long its final jobs are kept (retention, instead of queue.retention; for jobs pushed from now on). NULL keeps a value; reset => true clears those not given. Returns the queue''s settings.';

/*
 * queue_settings: the settings of every queue that has any (paused, since
 * when, by whom, and the defaults and retention queue_configure set), for the queues the
 * caller may read.
 */
CREATE FUNCTION @extschema@.queue_settings()
RETURNS TABLE (queue text, paused boolean, paused_at timestamptz, paused_by name, priority int,
               max_attempts int, timeout interval, backoff_base interval, backoff_max interval,
               retention interval)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.queue, s.paused_at IS NOT NULL, s.paused_at, s.paused_by, s.priority,
           s.max_attempts, s.timeout, s.backoff_base, s.backoff_max, s.retention
      FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a, queue.queue_settings s
     WHERE queue.access_allows(a.patterns, s.queue)
     ORDER BY s.queue;
$$;
COMMENT ON FUNCTION @extschema@.queue_settings() IS
'The settings of every queue that has any: queue, paused, paused_at, paused_by, the push defaults of queue_configure (priority, max_attempts, timeout, backoff_base, backoff_max) and its retention (NULL: the global default).';
