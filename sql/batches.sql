-- Batches: open one, push jobs into it from any number of transactions,
-- close it; when every job of a closed batch is final, the batch pushes its
-- callback jobs exactly once, with the batch's summary in their payload
-- (docs/workflows.md).
--
-- The exactly-once rests on two locks of the batch row. A push into the
-- batch and every finish of one of its jobs take FOR KEY SHARE, the close
-- takes FOR UPDATE: the close waits for pushes and finishes in flight and
-- then counts the jobs, so every job is either counted final by the close
-- or counts the batch down after it. After the close, the finishes update
-- the row: its row lock orders the last two, and only the one that brings
-- `pending` to 0 pushes the callbacks.

/*
 * queue.check_callback: a callback spec of queue_batch_open, checked now so
 * that the push at the batch's end cannot fail: an object with a valid
 * `queue` the caller may push to, an optional object `payload` and an
 * optional `priority` (an integer or a name). Returns it normalized, or
 * NULL for none.
 */
CREATE FUNCTION queue.check_callback(p_what text, p_spec jsonb) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue    text;
    v_priority int;
    v_number   numeric;
BEGIN
    IF p_spec IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_spec) <> 'object' OR jsonb_typeof(p_spec -> 'queue') IS DISTINCT FROM 'string'
       OR coalesce(jsonb_typeof(p_spec -> 'payload'), 'object') <> 'object'
       OR EXISTS (SELECT FROM jsonb_object_keys(p_spec) k WHERE k NOT IN ('queue', 'payload', 'priority')) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s must be an object {"queue": text, "payload": object, "priority": int or name}: %s',
                             p_what, left(p_spec::text, 200)),
            HINT = 'E.g. ''{"queue": "reports", "payload": {"report": 7}}''; the batch summary is added to the payload as "batch".';
    END IF;
    v_queue := queue.check_queue_name(p_spec ->> 'queue');
    -- A number must be an int, as a push's priority is (not rounded).
    IF jsonb_typeof(p_spec -> 'priority') = 'number' THEN
        v_number := (p_spec ->> 'priority')::numeric;
        IF v_number <> trunc(v_number) OR v_number NOT BETWEEN -2147483648 AND 2147483647 THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('%s priority must be an integer or a name: %s', p_what, p_spec -> 'priority'),
                HINT = 'Use critical (-20), high (-10), normal (0), low (10), or an integer; lower runs first.';
        END IF;
    END IF;
    v_priority := CASE jsonb_typeof(p_spec -> 'priority')
                      WHEN 'number' THEN v_number::int
                      WHEN 'string' THEN @extschema@.queue_priority(p_spec ->> 'priority')
                  END;
    PERFORM queue.check_size(p_what, queue.json_size(p_spec), 'payload');
    PERFORM queue.scope('produce', v_queue);
    RETURN jsonb_build_object('queue', v_queue, 'payload', coalesce(p_spec -> 'payload', '{}'))
           || CASE WHEN v_priority IS NULL THEN '{}' ELSE jsonb_build_object('priority', v_priority) END;
END;
$$;

/*
 * queue.batch_join: a push into batch p_batch may go on: the batch is open
 * and, for a confined caller, its own (another team's batch is unknown).
 * Locks the batch row FOR KEY SHARE until the push commits, so a close
 * waits for it and counts its job.
 */
CREATE FUNCTION queue.batch_join(p_batch bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state text;
BEGIN
    SELECT b.state INTO v_state FROM queue.batches b
     WHERE b.id = (queue.batch_visible(p_batch)).id
       FOR KEY SHARE;
    IF v_state IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('batch %s is %s', p_batch, coalesce(v_state, 'unknown')),
            HINT = 'Push into a batch of queue_batch_open before queue_batch_close.';
    END IF;
END;
$$;

/*
 * queue.batch_summary: what a callback's payload carries as "batch".
 */
CREATE FUNCTION queue.batch_summary(b queue.batches) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('id', b.id, 'total', b.total, 'completed', b.completed,
                              'failed', b.failed, 'cancelled', b.cancelled);
$$;

/*
 * queue.push_callback: push a batch's callback job: the spec's queue,
 * payload (with the batch summary added as "batch") and priority, the
 * queue's other defaults and retention. Not queue_push: it runs in the transaction of
 * whatever finished the batch's last job, under that role, and must neither
 * depend on that role's rights (the batch's opener was checked) nor fail.
 */
CREATE FUNCTION queue.push_callback(p_spec jsonb, p_summary jsonb) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id     bigint;
    v_tally  bigint;
    v_queue  text := p_spec ->> 'queue';
BEGIN
    INSERT INTO queue.jobs AS j (queue, status, priority, run_at, max_attempts, timeout,
                                 backoff_base, backoff_max, payload, keep_for)
    SELECT v_queue, 'pending', coalesce((p_spec ->> 'priority')::int, s.priority, 0), now(),
           coalesce(s.max_attempts, 3), coalesce(s.timeout, '5 minutes'),
           coalesce(s.backoff_base, '10 seconds'), coalesce(s.backoff_max, '1 hour'),
           coalesce(p_spec -> 'payload', '{}') || jsonb_build_object('batch', p_summary), s.retention
      FROM (SELECT) AS x LEFT JOIN queue.queue_settings s ON s.queue = v_queue
    RETURNING j.id, queue.tally(j.queue, j.priority, NULL, 'pending') INTO v_id, v_tally;
    PERFORM queue.wake(v_queue);
    RETURN v_id;
END;
$$;

/*
 * queue.batch_fire: the batch's last job is final (the caller holds the row
 * lock): push on_complete, and on_failure when any job failed or expired,
 * and mark the batch done with the callbacks' ids.
 */
CREATE FUNCTION queue.batch_fire(p_batch bigint) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b queue.batches;
BEGIN
    SELECT * INTO b FROM queue.batches WHERE id = p_batch;
    UPDATE queue.batches
       SET state = 'done', finished_at = now(),
           complete_job = CASE WHEN b.on_complete IS NOT NULL
                               THEN queue.push_callback(b.on_complete, queue.batch_summary(b)) END,
           failure_job = CASE WHEN b.on_failure IS NOT NULL AND b.failed > 0
                              THEN queue.push_callback(b.on_failure, queue.batch_summary(b)) END
     WHERE id = p_batch;
END;
$$;

/*
 * queue.batch_progress: jobs of these batches (one entry per job) became
 * final with p_status, or left (p_status NULL: deleted while waiting, counted
 * as cancelled). Open batches are only locked against a concurrent close
 * (which then counts these jobs final); closed ones count down, and the
 * finish that brings one to 0 pushes its callbacks. A batch cancelled after
 * its close counts down too (its report stays exact), but pushes nothing.
 */
CREATE FUNCTION queue.batch_progress(p_batches bigint[], p_status queue.job_status) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r       record;
    v_left  int;
    v_state text;
BEGIN
    FOR r IN
        SELECT b.id, count(*)::int AS n
          FROM unnest(p_batches) AS b(id)
         GROUP BY b.id
         ORDER BY b.id
    LOOP
        PERFORM FROM queue.batches b WHERE b.id = r.id FOR KEY SHARE;
        UPDATE queue.batches b
           SET pending   = b.pending - r.n,
               completed = b.completed + CASE WHEN p_status = 'completed' THEN r.n ELSE 0 END,
               failed    = b.failed + CASE WHEN p_status IN ('failed', 'expired') THEN r.n ELSE 0 END,
               cancelled = b.cancelled + CASE WHEN p_status IS NULL OR p_status = 'cancelled' THEN r.n ELSE 0 END
         WHERE b.id = r.id AND (b.state = 'closed' OR b.state = 'cancelled' AND b.total IS NOT NULL)
        RETURNING b.pending, b.state INTO v_left, v_state;
        IF v_left = 0 AND v_state = 'closed' THEN
            PERFORM queue.batch_fire(r.id);
        END IF;
    END LOOP;
END;
$$;

/*
 * queue.batch_revived: dead (or dependency-cancelled) jobs of these batches
 * run again (queue_retry): a closed batch waits for them once more (a
 * cancelled one counts them, as batch_progress does). A done batch has
 * pushed its callbacks already and is left as it is.
 */
CREATE FUNCTION queue.batch_revived(p_batches bigint[], p_from queue.job_status) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE queue.batches b
       SET pending   = b.pending + r.n,
           failed    = b.failed - CASE WHEN p_from IN ('failed', 'expired') THEN r.n ELSE 0 END,
           cancelled = b.cancelled - CASE WHEN p_from = 'cancelled' THEN r.n ELSE 0 END
      FROM (SELECT x.id, count(*)::int AS n FROM unnest(p_batches) AS x(id) GROUP BY x.id) r
     WHERE b.id = r.id AND (b.state = 'closed' OR b.state = 'cancelled' AND b.total IS NOT NULL);
END;
$$;

/*
 * queue.batch_visible: the batch p_batch as the caller may see it: a
 * confined role sees only the batches it opened; NULL otherwise.
 */
CREATE FUNCTION queue.batch_visible(p_batch bigint) RETURNS queue.batches
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT b FROM queue.batches b
     WHERE b.id = p_batch
       AND (b.created_by = queue.caller() OR queue.access_patterns(queue.caller(), 'produce') IS NULL);
$$;

------------------------------------------------------------------------------
-- Public functions
------------------------------------------------------------------------------

/*
 * queue_batch_open: a new, open batch. on_complete is pushed when every job
 * of the batch is final after queue_batch_close; on_failure too when any
 * of them failed or expired. Each is {"queue", "payload", "priority"}, and
 * the batch summary joins the payload as "batch".
 */
CREATE FUNCTION @extschema@.queue_batch_open(on_complete jsonb DEFAULT NULL, on_failure jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO queue.batches (on_complete, on_failure, created_by)
    VALUES (queue.check_callback('on_complete', $1), queue.check_callback('on_failure', $2), queue.caller())
    RETURNING id;
$$;
COMMENT ON FUNCTION @extschema@.queue_batch_open(jsonb, jsonb) IS
'Open a batch and return its id; push jobs into it with queue_push(..., batch => id), then queue_batch_close. on_complete / on_failure: {"queue", "payload", "priority"} of the job pushed when all its jobs are final (on_failure only when any failed).';

/*
 * queue_batch_close: no more jobs join the batch. Waits for pushes into it
 * that are in flight, counts its jobs, and when all are final already
 * pushes the callbacks now. Returns the batch as queue_batch reports it;
 * 22023 when the batch is not open.
 */
CREATE FUNCTION @extschema@.queue_batch_close(id bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_state text;
BEGIN
    SELECT b.state INTO v_state FROM queue.batches b
     WHERE b.id = (queue.batch_visible(id)).id
       FOR UPDATE;
    IF v_state IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('batch %s is %s', id, coalesce(v_state, 'unknown')),
            HINT = 'Only an open batch can be closed.';
    END IF;
    -- A later statement than the lock: pushes and finishes that held the
    -- row before it are committed and seen.
    UPDATE queue.batches b
       SET state = 'closed', closed_at = now(),
           total = c.total, pending = c.pending, completed = c.completed,
           failed = c.failed, cancelled = c.cancelled
      FROM (SELECT count(*)::int AS total,
                   count(*) FILTER (WHERE j.status NOT IN ('completed', 'failed', 'expired', 'cancelled'))::int AS pending,
                   count(*) FILTER (WHERE j.status = 'completed')::int AS completed,
                   count(*) FILTER (WHERE j.status IN ('failed', 'expired'))::int AS failed,
                   count(*) FILTER (WHERE j.status = 'cancelled')::int AS cancelled
              FROM queue.all_jobs j WHERE j.batch_id = id) c
     WHERE b.id = id;
    IF (SELECT b.pending FROM queue.batches b WHERE b.id = id) = 0 THEN
        PERFORM queue.batch_fire(id);
    END IF;
    RETURN @extschema@.queue_batch(id);
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_batch_close(bigint) IS
'Close a batch: no more jobs join it, and once all its jobs are final its callbacks are pushed, once (now, if they already are). Returns queue_batch(id).';

/*
 * queue_batch_cancel: cancel the batch's waiting jobs (and their
 * dependents); running ones finish, and no callback is pushed. False when
 * the batch is done or cancelled already.
 */
CREATE FUNCTION @extschema@.queue_batch_cancel(id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_state text;
BEGIN
    SELECT b.state INTO v_state FROM queue.batches b
     WHERE b.id = (queue.batch_visible(id)).id
       FOR UPDATE;
    IF v_state IS NULL OR v_state IN ('done', 'cancelled') THEN
        RETURN false;
    END IF;
    UPDATE queue.batches b SET state = 'cancelled', finished_at = now() WHERE b.id = id;
    PERFORM queue.finish_jobs(ARRAY(SELECT j.id FROM queue.jobs j WHERE j.batch_id = id),
                              '{scheduled,pending,retrying,blocked}', 'cancelled', NULL, NULL, NULL);
    RETURN true;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_batch_cancel(bigint) IS
'Cancel a batch: its waiting jobs are cancelled, running ones finish, no callback is pushed. False when it is done or cancelled already.';

/*
 * queue_batch: a batch's state and counts. Open: counted from its jobs (the
 * batch index); closed or done: the counts kept since the close, with how
 * many of the pending ones are running. NULL for an unknown batch (or one
 * a confined caller did not open).
 */
CREATE FUNCTION @extschema@.queue_batch(id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    b       queue.batches := queue.batch_visible(id);
    v_live  record;
BEGIN
    IF b.id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT count(*)::int AS live, count(*) FILTER (WHERE j.status = 'processing')::int AS running
      INTO v_live FROM queue.jobs j WHERE j.batch_id = b.id;
    IF b.state = 'open' OR b.state = 'cancelled' AND b.total IS NULL THEN
        SELECT count(*)::int, count(*) FILTER (WHERE j.status = 'completed')::int,
               count(*) FILTER (WHERE j.status IN ('failed', 'expired'))::int,
               count(*) FILTER (WHERE j.status = 'cancelled')::int
          INTO b.total, b.completed, b.failed, b.cancelled
          FROM queue.finished_jobs j WHERE j.batch_id = b.id;
        b.total := b.total + v_live.live;
        b.pending := v_live.live;
    END IF;
    RETURN jsonb_build_object(
        'id', b.id, 'state', b.state, 'total', b.total, 'pending', b.pending,
        'running', v_live.running, 'completed', b.completed, 'failed', b.failed,
        'cancelled', b.cancelled,
        'progress', CASE WHEN b.total > 0 THEN round((b.total - b.pending)::numeric / b.total, 4) END,
        'on_complete', b.on_complete, 'on_failure', b.on_failure,
        'complete_job', b.complete_job, 'failure_job', b.failure_job,
        'created_at', b.created_at, 'closed_at', b.closed_at, 'finished_at', b.finished_at);
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_batch(bigint) IS
'A batch: id, state (open, closed, done, cancelled), total, pending, running, completed, failed (or expired), cancelled, progress (share final), its callbacks and the ids of those pushed, times. NULL for an unknown batch.';

/*
 * queue_batches: the batches the caller may see (a confined role: those it
 * opened), newest first, optionally of one state, with the counts kept
 * since their close (NULL while open: queue_batch(id) counts an open batch
 * from its jobs). Read by primary key in id order; a dashboard's list.
 * The row is a type, so that its `state` column may share the name of the
 * `state` parameter.
 */
CREATE TYPE queue.listed_batch AS (
    id bigint, state text, total int, pending int, completed int, failed int, cancelled int,
    created_at timestamptz, closed_at timestamptz, finished_at timestamptz,
    complete_job bigint, failure_job bigint);

CREATE FUNCTION @extschema@.queue_batches(state text DEFAULT NULL, max_rows int DEFAULT 100)
RETURNS SETOF queue.listed_batch
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_max int := queue.check_count('max_rows', max_rows, 100000, 'max_rows is how many batches to list, newest first.');
    v_own boolean := queue.access_patterns(queue.caller(), 'produce') IS NOT NULL;
BEGIN
    IF state IS NOT NULL AND state NOT IN ('open', 'closed', 'done', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('unknown batch state: "%s"', left(state, 100)),
            HINT = 'A batch is open, closed, done or cancelled; NULL lists every batch.';
    END IF;
    RETURN QUERY
    SELECT b.id, b.state::text, b.total, b.pending, b.completed, b.failed, b.cancelled,
           b.created_at, b.closed_at, b.finished_at, b.complete_job, b.failure_job
      FROM queue.batches b
     WHERE (state IS NULL OR b.state = state)
       AND (NOT v_own OR b.created_by = queue.caller())
     ORDER BY b.id DESC
     LIMIT v_max;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_batches(text, int) IS
'The batches the caller may see, newest first (of one state: open, closed, done, cancelled): id, state, counts kept since the close (NULL while open), times, the callback jobs pushed.';
