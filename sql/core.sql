-- The core queue: push, claim, ack, fail, touch, cancel, and the serial-group
-- election they share. Every public function here is SECURITY DEFINER with a
-- pinned search_path, refers to internal objects by schema, and never builds
-- SQL from text it was given.

------------------------------------------------------------------------------
-- Internal helpers
------------------------------------------------------------------------------

/*
 * queue.json_size: the size a jsonb payload, result or worker info is held
 * to its limit by: as stored or as printed, whichever is larger
 * (src/validate.rs). Numbers such as 1e131071 take a few bytes stored and
 * print as 131,072 digits.
 */
CREATE FUNCTION queue.json_size(jsonb) RETURNS int
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'queue_json_size';

/*
 * queue.group_elect: make the right job of a serial group its active job.
 *
 * A group has at most one active job (processing, retrying, or pending and
 * next in line), enforced by the unique index jobs_group_active. This is
 * called whenever the group may have changed: a push into the group, a
 * scheduled job becoming due, the active job finishing or being cancelled.
 *
 *  - A job that has started (processing, retrying, or pending again after a
 *    retry) keeps the group until it is final: nothing changes.
 *  - Otherwise the waiting job first in (priority, id) order becomes active,
 *    replacing a not-yet-started active job that it overtakes, and the queue
 *    of the new active job is woken.
 *
 * All electors of one group, and the claimers of its jobs, serialize on a
 * transaction-scoped advisory lock keyed by a keyed hash of the group name
 * (src/serial_group.rs).
 * Both lookups read small partial indexes: O(log n) whatever the group size.
 */
CREATE FUNCTION queue.group_elect(p_group text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- As queue_pop: the next job of a group is read from jobs_group_next in order.
SET enable_indexscan = on SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_active_id       bigint;
    v_active_status   queue.job_status;
    v_active_started  boolean;
    v_active_priority int;
    v_next_id         bigint;
    v_next_priority   int;
    v_next_queue      text;
BEGIN
    PERFORM queue.group_lock(queue.group_lock_key(p_group));

    SELECT id, status, attempts > 0, priority
      INTO v_active_id, v_active_status, v_active_started, v_active_priority
      FROM queue.jobs
     WHERE serial_group = p_group
       AND (status IN ('processing', 'retrying') OR (status = 'pending' AND NOT group_waiting));
    IF v_active_id IS NOT NULL AND (v_active_status <> 'pending' OR v_active_started) THEN
        RETURN;
    END IF;

    SELECT id, priority, queue INTO v_next_id, v_next_priority, v_next_queue
      FROM queue.jobs
     WHERE serial_group = p_group AND status = 'pending' AND group_waiting
     ORDER BY priority, id
     LIMIT 1;
    IF v_next_id IS NULL
       OR (v_active_id IS NOT NULL AND (v_active_priority, v_active_id) < (v_next_priority, v_next_id)) THEN
        RETURN;
    END IF;

    -- Demote first: the unique index allows one active job at any moment.
    IF v_active_id IS NOT NULL THEN
        UPDATE queue.jobs SET group_waiting = true WHERE id = v_active_id;
    END IF;
    UPDATE queue.jobs SET group_waiting = false WHERE id = v_next_id;
    PERFORM queue.wake(v_next_queue);
END;
$$;

/*
 * queue.release_groups: jobs of these groups just became final (ack, fail,
 * expiry, cancel); make each group that has no active job left activate
 * its next one. Cheaper than queue.group_elect per group, and set-based for
 * batch acks: with no active job left, the next one is simply the first
 * waiting job in (priority, id) order. A group whose active job is still
 * there (a waiting job was cancelled) keeps it: it is already the best. The
 * group locks are taken in one global order (by key) so that concurrent
 * releasers cannot deadlock; the unique index jobs_group_active is the
 * guarantee.
 */
CREATE FUNCTION queue.release_groups(p_groups text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- As queue_pop: the next job of a group is read from jobs_group_next in order.
SET enable_indexscan = on SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_queues text[];
    v_queue  text;
BEGIN
    PERFORM queue.group_lock(k)
       FROM (SELECT DISTINCT queue.group_lock_key(g) AS k FROM unnest(p_groups) AS g ORDER BY 1) keys;
    WITH elected AS (
        UPDATE queue.jobs j
           SET group_waiting = false
         WHERE j.id = ANY (ARRAY(
                   SELECT n.id
                     FROM unnest(p_groups) AS g(name),
                          LATERAL (SELECT w.id FROM queue.jobs w
                                    WHERE w.serial_group = g.name AND w.status = 'pending'
                                      AND w.group_waiting
                                    ORDER BY w.priority, w.id
                                    LIMIT 1) n
                    WHERE NOT EXISTS (
                          SELECT 1 FROM queue.jobs a
                           WHERE a.serial_group = g.name
                             AND (a.status IN ('processing', 'retrying')
                                  OR (a.status = 'pending' AND NOT a.group_waiting)))))
        RETURNING j.queue
    )
    SELECT array_agg(DISTINCT queue) INTO v_queues FROM elected;
    FOREACH v_queue IN ARRAY coalesce(v_queues, '{}') LOOP
        PERFORM queue.wake(v_queue);
    END LOOP;
END;
$$;

/*
 * queue.announce: jobs became pending. Wake the queues of the ungrouped
 * ones and elect the serial groups of the grouped ones (each elected job
 * wakes its own queue).
 */
CREATE FUNCTION queue.announce(p_queues text[], p_groups text[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name text;
BEGIN
    FOREACH v_name IN ARRAY coalesce(p_queues, '{}') LOOP
        PERFORM queue.wake(v_name);
    END LOOP;
    FOREACH v_name IN ARRAY coalesce(p_groups, '{}') LOOP
        PERFORM queue.group_elect(v_name);
    END LOOP;
END;
$$;

/*
 * queue.check_tags: a push's tags, checked and normalized: at most 20, each
 * 1 to 64 bytes, no NULL (22023 otherwise); sorted without duplicates, and
 * NULL for an empty list, so that an untagged job stays out of the tag
 * indexes.
 */
CREATE FUNCTION queue.check_tags(p_tags text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_bad text;
BEGIN
    IF coalesce(array_ndims(p_tags), 1) > 1 OR array_position(p_tags, NULL) IS NOT NULL
       OR cardinality(p_tags) > 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('tags must be a list of at most 20 tags without NULL: %s', p_tags),
            HINT = 'Pass e.g. ARRAY[''billing'', ''customer:42''].';
    END IF;
    SELECT t INTO v_bad FROM unnest(p_tags) AS t WHERE octet_length(t) NOT BETWEEN 1 AND 64 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('a tag must be 1 to 64 bytes long: "%s"', left(v_bad, 80)),
            HINT = 'Tags are short labels to find jobs by, e.g. ''billing''.';
    END IF;
    RETURN nullif(ARRAY(SELECT DISTINCT t COLLATE "C" FROM unnest(p_tags) AS t ORDER BY 1), '{}');
END;
$$;

------------------------------------------------------------------------------
-- Priorities
------------------------------------------------------------------------------

/*
 * queue_priority: the number behind a named priority. Lower runs first.
 */
CREATE FUNCTION @extschema@.queue_priority(name text) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    CASE lower(btrim(name))
        WHEN 'critical' THEN RETURN -20;
        WHEN 'high'     THEN RETURN -10;
        WHEN 'normal'   THEN RETURN 0;
        WHEN 'low'      THEN RETURN 10;
        ELSE
            IF name ~ '^\s*[+-]?[0-9]{1,9}\s*$' THEN
                RETURN name::int;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown priority: "%s"', name),
                HINT = 'Use critical (-20), high (-10), normal (0), low (10), or an integer; lower runs first.';
    END CASE;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_priority(text) IS
'Number of a named priority: critical = -20, high = -10, normal = 0, low = 10 (integers in text pass through). Lower runs first.';

------------------------------------------------------------------------------
-- Push
------------------------------------------------------------------------------

/*
 * queue.push_general: queue_push for every push that is not plain (below),
 * and for a plain one where the table has triggers or row security. Every
 * argument is given (queue_push passes its own).
 *
 * A due job is `pending` and wakes the queue's listeners; a delayed one is
 * `scheduled` until the maintenance pass promotes it. With a dedupe_key, a
 * live job with the same (queue, dedupe_key) wins and its id is returned: the
 * unique index jobs_dedupe decides, so concurrent pushes agree. A job of a
 * serial group enters as waiting and the group election decides whether it
 * runs next. Options left NULL (priority, max_attempts, timeout,
 * backoff_base, backoff_max) take the queue's defaults (queue_configure),
 * else the global ones: 0, 3, 5 minutes, 10 seconds, 1 hour. The job also
 * takes the queue's retention, if it has one (keep_for).
 */
CREATE FUNCTION queue.push_general(
    queue text, payload jsonb, priority int,
    delay interval, run_at timestamptz,
    serial_group text, max_attempts int,
    timeout interval,
    backoff_base interval, backoff_max interval,
    retry_delays interval[], dedupe_key text,
    depends_on bigint[], run_anyway boolean, tags text[],
    batch bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    -- What this push must do besides the insert (queue.push_mode): 0 for
    -- almost every push.
    v_mode   int;
    v_run_at timestamptz;
    v_status queue.job_status;
    v_id     bigint;
    v_tallied bigint;
    v_deps   record;
    v_blocked int;
    v_configured boolean;
    v_keep_for interval;
BEGIN
    v_mode := queue.push_mode();
    -- The queue's defaults (queue_configure) for the options left NULL.
    -- Shared memory says when no queue has any (src/settings.rs), so the
    -- row is read only when some queue may have them. The global defaults
    -- are applied inline below.
    IF v_mode & 2 = 2 THEN
        SELECT coalesce(push_general.priority, s.priority), coalesce(push_general.max_attempts, s.max_attempts),
               coalesce(push_general.timeout, s.timeout), coalesce(push_general.backoff_base, s.backoff_base),
               coalesce(push_general.backoff_max, s.backoff_max), s.retention,
               EXISTS (SELECT FROM queue.queue_settings d
                        WHERE d.priority IS NOT NULL OR d.max_attempts IS NOT NULL OR d.timeout IS NOT NULL
                           OR d.backoff_base IS NOT NULL OR d.backoff_max IS NOT NULL OR d.retention IS NOT NULL)
          INTO priority, max_attempts, timeout, backoff_base, backoff_max, v_keep_for, v_configured
          FROM (SELECT) AS x LEFT JOIN queue.queue_settings s ON s.queue = push_general.queue;
        IF NOT v_configured THEN
            PERFORM queue.push_defaults_none_found();
        END IF;
    END IF;
    -- Every argument is checked by this one call (see queue.check_push_args).
    v_run_at := queue.check_push_args(push_general.queue, push_general.serial_group,
        queue.json_size(push_general.payload), push_general.delay, push_general.run_at,
        coalesce(push_general.max_attempts, 3), coalesce(push_general.timeout, '5 minutes'),
        coalesce(push_general.backoff_base, '10 seconds'), coalesce(push_general.backoff_max, '1 hour'),
        push_general.retry_delays, push_general.dedupe_key, coalesce(push_general.priority, 0));
    v_status := CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'pending' END;
    IF v_mode <> 0 OR push_general.tags IS NOT NULL OR push_general.batch IS NOT NULL
       OR push_general.depends_on IS NOT NULL THEN
        IF push_general.tags IS NOT NULL THEN
            push_general.tags := queue.check_tags(push_general.tags);
        END IF;
        IF push_general.batch IS NOT NULL THEN
            PERFORM queue.batch_join(push_general.batch);
        END IF;
        -- Per-queue access (sql/access.sql), when some rule exists.
        IF v_mode & 1 = 1 THEN
            PERFORM queue.scope('produce', push_general.queue, push_general.serial_group);
        END IF;
        -- Dependencies (sql/dependencies.sql) are locked before the job
        -- exists; with any left to wait for, or a dead one, the job enters
        -- blocked.
        IF cardinality(push_general.depends_on) > 0 THEN
            SELECT * INTO v_deps FROM queue.lock_deps(push_general.depends_on, coalesce(push_general.run_anyway, false));
            IF v_deps.blocked_by > 0 OR v_deps.dead IS NOT NULL THEN
                v_status := 'blocked';
                v_blocked := greatest(v_deps.blocked_by, 1);
            END IF;
        END IF;
    END IF;
    IF push_general.dedupe_key IS NULL THEN
        INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, payload,
                blocked_by, tags, batch_id, keep_for)
        VALUES (push_general.queue, v_status, coalesce(push_general.priority, 0),
                push_general.serial_group IS NOT NULL AND v_status = 'pending',
                push_general.serial_group, v_run_at, coalesce(push_general.max_attempts, 3), coalesce(push_general.timeout, '5 minutes'),
                coalesce(push_general.backoff_base, '10 seconds'), coalesce(push_general.backoff_max, '1 hour'), push_general.retry_delays,
                push_general.payload, coalesce(v_blocked, 0), push_general.tags, push_general.batch, v_keep_for)
        RETURNING j.id, queue.tally(j.queue, j.priority, NULL, v_status::text) INTO v_id, v_tallied;
    ELSE
        LOOP
            INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                    run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                    dedupe_key, payload, blocked_by, tags, batch_id, keep_for)
            VALUES (push_general.queue, v_status, coalesce(push_general.priority, 0),
                    push_general.serial_group IS NOT NULL AND v_status = 'pending',
                    push_general.serial_group, v_run_at, coalesce(push_general.max_attempts, 3), coalesce(push_general.timeout, '5 minutes'),
                    coalesce(push_general.backoff_base, '10 seconds'), coalesce(push_general.backoff_max, '1 hour'), push_general.retry_delays,
                    push_general.dedupe_key, push_general.payload, coalesce(v_blocked, 0), push_general.tags, push_general.batch, v_keep_for)
            ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL
                DO NOTHING
            RETURNING j.id, queue.tally(j.queue, j.priority, NULL, v_status::text) INTO v_id, v_tallied;
            EXIT WHEN v_id IS NOT NULL;
            -- A live duplicate exists (every job in queue.jobs is live). It
            -- may become final between the two statements; then the next
            -- round inserts.
            SELECT j.id INTO v_id FROM queue.jobs j
             WHERE j.queue = push_general.queue AND j.dedupe_key = push_general.dedupe_key;
            IF v_id IS NOT NULL THEN
                RETURN v_id;
            END IF;
        END LOOP;
    END IF;
    IF cardinality(push_general.depends_on) > 0 THEN
        PERFORM queue.add_edges(ARRAY[v_id], v_deps, coalesce(push_general.run_anyway, false));
    END IF;
    IF v_status = 'pending' AND push_general.serial_group IS NULL THEN
        PERFORM queue.wake(push_general.queue);
    ELSIF v_status = 'pending' THEN
        PERFORM queue.group_elect(push_general.serial_group);
    END IF;
    RETURN v_id;
END;
$$;

/*
 * queue_push: add one job. Returns its id.
 *
 * Written in Rust (src/push.rs). The plain push, due now with no serial
 * group, dedupe key, dependency, tag or batch, in a database with no access
 * rule and no queue default (queue.push_mode() = 0), is most pushes and
 * often a transaction of its own: it is stored without an INSERT statement,
 * its arguments checked by queue.check_push_args and the job counted and its
 * queue woken as queue.push_general does. Every other push is
 * queue.push_general, called with the same arguments.
 */
CREATE FUNCTION @extschema@.queue_push(
    queue text, payload jsonb DEFAULT '{}', priority int DEFAULT NULL,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL, backoff_max interval DEFAULT NULL,
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL, run_anyway boolean DEFAULT false, tags text[] DEFAULT NULL,
    batch bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'queue_push';
COMMENT ON FUNCTION @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint) IS
'Push one job and return its id. Options: priority (lower first), delay or run_at, serial_group (one job of the group runs at a time), max_attempts, timeout (lease), backoff_base/backoff_max or retry_delays, dedupe_key (a live job with the same key wins), depends_on (job ids: blocked until all completed; cancelled when one fails, unless run_anyway), tags (labels to find it by), batch (an open batch of queue_batch_open).';

/*
 * queue_push with a named priority ('critical', 'high', 'normal', 'low').
 * The priority has no default here, so plain calls resolve to the int form.
 */
CREATE FUNCTION @extschema@.queue_push(
    queue text, payload jsonb, priority text,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL, backoff_max interval DEFAULT NULL,
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL, run_anyway boolean DEFAULT false, tags text[] DEFAULT NULL,
    batch bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT @extschema@.queue_push($1, $2, @extschema@.queue_priority($3), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16);
$$;
COMMENT ON FUNCTION @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint) IS
'Push one job with a named priority (critical, high, normal, low); otherwise the same as queue_push with an integer priority.';

/*
 * queue_push_batch: push many payloads with the same options in one statement.
 * Returns the ids in the order of the payloads. With a dedupe_key every
 * payload goes through queue_push, so the key keeps its meaning.
 */
CREATE FUNCTION @extschema@.queue_push_batch(
    queue text, payloads jsonb[], priority int DEFAULT NULL,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL, backoff_max interval DEFAULT NULL,
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL, run_anyway boolean DEFAULT false, tags text[] DEFAULT NULL,
    batch bigint DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_queue  text := queue.check_queue_name(queue);
    v_group  text := queue.check_group_name(serial_group);
    v_run_at timestamptz;
    v_status queue.job_status;
    v_payload jsonb;
    v_deps   record;
    v_blocked int := 0;
    v_ids    bigint[];
    v_keep_for interval;
BEGIN
    IF payloads IS NULL OR array_position(payloads, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'payloads must not be NULL or contain NULL',
            HINT = 'Pass an array of JSON values, e.g. ARRAY[''{"n": 1}'', ''{"n": 2}'']::jsonb[].';
    END IF;
    -- The queue's defaults (queue_configure) for the options left NULL,
    -- else the global ones (as in queue_push).
    IF NOT queue.push_defaults_absent() THEN
        SELECT coalesce(priority, s.priority), coalesce(max_attempts, s.max_attempts),
               coalesce(timeout, s.timeout), coalesce(backoff_base, s.backoff_base),
               coalesce(backoff_max, s.backoff_max), s.retention
          INTO priority, max_attempts, timeout, backoff_base, backoff_max, v_keep_for
          FROM (SELECT) AS x LEFT JOIN queue.queue_settings s ON s.queue = v_queue;
    END IF;
    priority := coalesce(priority, 0);
    max_attempts := coalesce(max_attempts, 3);
    timeout := coalesce(timeout, '5 minutes');
    backoff_base := coalesce(backoff_base, '10 seconds');
    backoff_max := coalesce(backoff_max, '1 hour');
    -- The names were checked above, the payloads here (the largest one's size).
    v_run_at := queue.check_push_args(v_queue, v_group,
        coalesce((SELECT max(queue.json_size(p)) FROM unnest(payloads) AS p), 0), delay, run_at,
        max_attempts, timeout, backoff_base, backoff_max, retry_delays, dedupe_key, priority);
    PERFORM queue.scope('produce', v_queue, v_group);
    IF tags IS NOT NULL THEN
        tags := queue.check_tags(tags);
    END IF;
    IF batch IS NOT NULL THEN
        PERFORM queue.batch_join(batch);
    END IF;

    IF dedupe_key IS NOT NULL THEN
        FOREACH v_payload IN ARRAY payloads LOOP
            RETURN NEXT @extschema@.queue_push(v_queue, v_payload, priority, NULL, v_run_at,
                v_group, max_attempts, timeout, backoff_base, backoff_max, retry_delays, dedupe_key,
                depends_on, run_anyway, tags, batch);
        END LOOP;
        RETURN;
    END IF;

    v_status := CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'pending' END;
    -- Every payload waits for the same dependencies (a fan-out).
    IF cardinality(depends_on) > 0 THEN
        SELECT * INTO v_deps FROM queue.lock_deps(depends_on, coalesce(run_anyway, false));
        IF v_deps.blocked_by > 0 OR v_deps.dead IS NOT NULL THEN
            v_status := 'blocked';
            v_blocked := greatest(v_deps.blocked_by, 1);
        END IF;
    END IF;
    WITH inserted AS (
        INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, payload,
                blocked_by, tags, batch_id, keep_for)
        SELECT v_queue, v_status, priority, v_group IS NOT NULL AND v_status = 'pending', v_group,
               v_run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, p.payload,
               v_blocked, tags, batch, v_keep_for
          FROM unnest(payloads) WITH ORDINALITY AS p(payload, n)
         ORDER BY p.n
        RETURNING j.id
    )
    SELECT array_agg(inserted.id ORDER BY inserted.id) INTO v_ids FROM inserted;
    IF cardinality(depends_on) > 0 AND v_ids IS NOT NULL THEN
        PERFORM queue.add_edges(v_ids, v_deps, coalesce(run_anyway, false));
    END IF;
    RETURN QUERY SELECT unnest(coalesce(v_ids, '{}'));

    PERFORM queue.tally(v_queue, priority, NULL, v_status::text, cardinality(payloads));
    IF v_status = 'pending' AND cardinality(payloads) > 0 THEN
        IF v_group IS NULL THEN
            PERFORM queue.wake(v_queue);
        ELSE
            PERFORM queue.group_elect(v_group);
        END IF;
    END IF;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint) IS
'Push many payloads with the same options in one statement; returns their ids in payload order.';

CREATE FUNCTION @extschema@.queue_push_batch(
    queue text, payloads jsonb[], priority text,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT NULL,
    timeout interval DEFAULT NULL,
    backoff_base interval DEFAULT NULL, backoff_max interval DEFAULT NULL,
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL,
    depends_on bigint[] DEFAULT NULL, run_anyway boolean DEFAULT false, tags text[] DEFAULT NULL,
    batch bigint DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT @extschema@.queue_push_batch($1, $2, @extschema@.queue_priority($3), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16);
$$;
COMMENT ON FUNCTION @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint) IS
'Push many payloads with a named priority (critical, high, normal, low).';

------------------------------------------------------------------------------
-- Claim
------------------------------------------------------------------------------

/*
 * queue_pop: claim up to `batch` jobs of a queue, in (priority, id) order.
 *
 * THE claim query reads jobs_claim (pending, not waiting behind a serial
 * group) in index order and locks with SKIP LOCKED, so concurrent workers
 * take different jobs and never wait on each other. A job of a serial group
 * is only taken if this transaction gets its group's advisory lock at once;
 * a group busy with an election is skipped like a locked row. Each claimed
 * job becomes `processing` with a lease of its timeout and its attempt
 * counter incremented. The locked rows go to the UPDATE through an array,
 * not a join: with a parameter as LIMIT the planner guesses thousands of
 * rows and would hash-join them against a scan of the whole table. The
 * array holds their ctids, not their ids: a TID scan reads each row where
 * the subquery just locked it, where `id = ANY(array)` would descend the
 * primary key once more per job (W4 +4%, run side by side with the id
 * form). A ctid is stable while this transaction holds the row lock. A row
 * the subquery could only lock in a version newer than the statement's
 * snapshot is not visible to the UPDATE and stays pending, unclaimed: the
 * batch comes back short, never wrong.
 *
 * When nothing is claimable the caller is about to sleep on LISTEN: the
 * second round marks the queue as having a sleeper and claims once more with
 * a fresh snapshot, so a job committed in between is either seen now or
 * wakes the worker (src/wakeup.rs). The claim is written once, in a loop, so
 * that plpgsql plans it once per session, and it keeps that generic plan
 * (see plan_cache_mode below).
 */
CREATE FUNCTION @extschema@.queue_pop(queue text, worker text DEFAULT NULL, batch int DEFAULT 1,
                                      wait interval DEFAULT NULL)
RETURNS SETOF queue.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The generic plan of the claim is the right one (jobs_claim in order, then
-- the primary key), but with `LIMIT batch` unknown its estimated cost is far
-- above a custom plan's, so the plan cache would plan the claim afresh on
-- every call: 18% of the backend's time in W3. Always use the generic plan.
SET plan_cache_mode = force_generic_plan
-- The plans must read their index in (priority, id) order whatever the
-- statistics or the session's settings say: statistics taken while the table
-- was nearly empty once gave a worker's session a bitmap scan of the queue's
-- whole index range and a sort, so that each claim read every waiting job
-- (pg_test/client/test_claim_plans.py). Scans are disabled, not sorts: a
-- disabled node left in a plan (the final sort) lifts its cost past
-- jit_above_cost, and JIT then compiles every claim (100 ms).
SET enable_indexscan = on SET enable_bitmapscan = off SET enable_seqscan = off
-- No JIT: the generic plan guesses that `LIMIT batch` takes a tenth of the
-- queue, so past about a million waiting jobs its estimate passes
-- jit_above_cost and every claim compiled its expressions first: 8 ms of a
-- 0.2 ms claim at 10M waiting (bench/README.md, "Depth").
SET jit = off AS $$
DECLARE
    v_queue   text := queue.check_queue_name(queue_pop.queue);
    v_batch   int  := queue.check_claim(queue_pop.worker, queue_pop.batch);
    v_now     timestamptz := now();
    v_until   timestamptz;
    v_round   int := 0;
    v_claimed bigint;
BEGIN
    IF queue.rules_exist() THEN
        PERFORM queue.scope('work', v_queue);
    END IF;
    IF wait IS NOT NULL THEN
        v_until := clock_timestamp() + queue.check_span('wait', wait, 'delay');
    END IF;
    -- Round 0 claims. Round 1 marks a sleeper (src/wakeup.rs) and, for a
    -- wait, registers this backend as a waiter, both before the snapshot of
    -- its claim. Later rounds sleep until a commit wakes this backend or
    -- the wait is over, then register and claim again.
    LOOP
        IF v_round = 1 THEN
            PERFORM queue.note_sleeper(v_queue);
            IF v_until IS NOT NULL THEN
                PERFORM queue.wait_register(v_queue);
            END IF;
        ELSIF v_round > 1 THEN
            EXIT WHEN NOT queue.wait_sleep(v_until);
            PERFORM queue.wait_register(v_queue);
            -- The claim starts now, not when the transaction began.
            v_now := clock_timestamp();
        END IF;
        -- A waiting call claims only when something may be claimable, so
        -- that while it sleeps it holds no lock that writers or the recount
        -- of the counters would notice (an ACCESS SHARE lock, no more). A
        -- paused queue hands out nothing (queue_pause); each round reads
        -- the pause afresh, and queue_resume wakes the sleepers.
        IF NOT EXISTS (SELECT FROM queue.queue_settings s WHERE s.queue = v_queue AND s.paused_at IS NOT NULL)
           AND (v_until IS NULL OR EXISTS (SELECT FROM queue.jobs c
                                            WHERE c.queue = v_queue AND c.status = 'pending'
                                              AND NOT c.group_waiting)) THEN
            RETURN QUERY
            WITH claimed AS (
                UPDATE queue.jobs j
                   SET status      = 'processing',
                       attempts    = j.attempts + 1,
                       started_at  = v_now,
                       lease_until = v_now + j.timeout,
                       worker      = queue_pop.worker
                 WHERE j.ctid = ANY (ARRAY(
                           SELECT c.ctid
                             FROM queue.jobs c
                            WHERE c.queue = v_queue
                              AND c.status = 'pending'
                              AND NOT c.group_waiting
                              AND (c.serial_group IS NULL
                                   OR queue.group_try_lock(queue.group_lock_key(c.serial_group)))
                            ORDER BY c.priority, c.id
                            LIMIT v_batch
                              FOR UPDATE SKIP LOCKED))
                RETURNING j.id, j.queue, j.payload, j.priority, j.serial_group, j.attempts,
                          j.max_attempts, j.lease_until, j.created_at,
                          queue.tally(j.queue, j.priority, 'pending', 'processing', 1, j.id, j.attempts, j.lease_until)
            )
            SELECT c.id, c.queue, c.payload, c.priority, c.serial_group, c.attempts,
                   c.max_attempts, c.lease_until, c.created_at
              FROM claimed c ORDER BY c.priority, c.id;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
        ELSE
            v_claimed := 0;
        END IF;
        EXIT WHEN v_claimed > 0 OR (v_round = 1 AND v_until IS NULL);
        v_round := v_round + 1;
    END LOOP;
    IF v_until IS NOT NULL THEN
        -- A full batch: there may be more, pass the wake-up on.
        PERFORM queue.wait_done(v_queue, coalesce(v_claimed, 0) = v_batch);
    END IF;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_pop(text, text, int, interval) IS
'Claim up to batch jobs of a queue in (priority, id) order (FOR UPDATE SKIP LOCKED). Each returned job is processing with a lease of its timeout; attempt is the claim counter to pass to ack / fail / touch. With wait, when nothing is claimable the call sleeps until a job of the queue becomes claimable or the wait ends (no LISTEN needed: works through a transaction-mode pooler).';

/*
 * queue.ack_claims: complete the claims a worker finished, each with its
 * claim's attempt and result as queue_ack does (stale, unknown and, under
 * access rules, forbidden claims are skipped), in one statement of
 * queue.finish_claims: one index probe per id and one commit for all of them.
 * The shared step of queue_ack_batch and queue_ack_pop. Arrays of more
 * than one dimension, attempts or results that do not run parallel to the
 * ids, and an oversized result are refused (22023) before anything
 * changes. Returns the ids completed.
 */
CREATE FUNCTION queue.ack_claims(p_ids bigint[], p_attempts int[], p_results jsonb[])
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_acks    int := coalesce(cardinality(p_ids), 0);
    v_ids     bigint[] := p_ids;
    v_allowed bigint[];
BEGIN
    IF coalesce(array_ndims(p_ids), 1) > 1 OR coalesce(array_ndims(p_attempts), 1) > 1
       OR coalesce(array_ndims(p_results), 1) > 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the ids, attempts and results of acks must be one-dimensional arrays',
            HINT = 'Pass one entry per finished job, e.g. ARRAY[1, 2] with attempts ARRAY[1, 1].';
    END IF;
    IF (p_attempts IS NOT NULL AND cardinality(p_attempts) <> v_acks)
       OR (p_results IS NOT NULL AND cardinality(p_results) <> v_acks) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('ack attempts (%s) and results (%s) must have one entry per ack id (%s)',
                             coalesce(cardinality(p_attempts)::text, 'NULL'),
                             coalesce(cardinality(p_results)::text, 'NULL'), v_acks),
            HINT = 'Give each finished job its claim''s attempt (and result), in the order of the ids.';
    END IF;
    IF v_acks = 0 THEN
        RETURN '{}';
    END IF;
    IF v_acks = 1 THEN
        -- One finished job, what a worker running one job at a time sends
        -- with its next claim: queue_ack's own move (its size check, access
        -- check and release steps), without the join of ids to attempts and
        -- results and the aggregates a batch needs (a quarter of a
        -- queue_ack_pop call's instructions; bench/README.md, "One ack").
        -- (Each array's own lower bound: '[5:5]={7}' is one id too.)
        v_ids := ARRAY[p_ids[array_lower(p_ids, 1)]];
        RETURN CASE WHEN @extschema@.queue_ack(v_ids[1], p_results[array_lower(p_results, 1)],
                                               p_attempts[array_lower(p_attempts, 1)])
                    THEN v_ids ELSE '{}' END;
    END IF;
    IF p_results IS NOT NULL THEN
        PERFORM queue.check_size('result', (SELECT max(queue.json_size(r)) FROM unnest(p_results) r), 'result');
    END IF;
    IF queue.rules_exist() THEN
        -- Forbidden ids become NULL, which matches no job; positions stay.
        v_allowed := queue.allowed_ids(queue.caller(), 'work', p_ids);
        v_ids := ARRAY(SELECT CASE WHEN x.id = ANY (v_allowed) THEN x.id END
                         FROM unnest(p_ids) WITH ORDINALITY AS x(id, n) ORDER BY x.n);
    END IF;
    RETURN queue.finish_claims(v_ids, p_attempts, p_results);
END;
$$;

/*
 * queue_ack_batch: complete many claims at once, each with its own attempt
 * and result, in one statement and one commit: what a worker running many
 * handlers sends instead of one queue_ack (and one commit) per job.
 * Returns the ids completed; the others were stale or unknown.
 */
CREATE FUNCTION @extschema@.queue_ack_batch(ids bigint[], attempts int[] DEFAULT NULL, results jsonb[] DEFAULT NULL)
RETURNS bigint[]
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT queue.ack_claims(ids, attempts, results);
$$;
COMMENT ON FUNCTION @extschema@.queue_ack_batch(bigint[], int[], jsonb[]) IS
'Complete many claimed jobs in one statement: ids with their claims'' attempts and optional results, in parallel arrays (a NULL attempt accepts any claim). Stale or unknown claims are skipped. Returns the ids completed.';

/*
 * queue_ack_pop: a worker's next step in one call and one commit: complete
 * the jobs it finished, each with its claim's attempt and result exactly as
 * queue_ack_batch does (stale or unknown claims are skipped), then claim up
 * to batch more exactly as queue_pop does. An ack and a pop cost two
 * commits and two round trips; this costs one of each. A finished
 * serial-group job hands its group on inside the call, so the next job of
 * the group can be the one claimed.
 *
 * It never waits: the acks would stay uncommitted while it slept, holding
 * their rows, their groups and the xmin horizon. A worker that gets nothing
 * back waits with queue_pop(..., wait) or LISTEN next. Mismatched arrays
 * are refused before anything changes; any error undoes the acks too.
 */
CREATE FUNCTION @extschema@.queue_ack_pop(queue text, worker text DEFAULT NULL, batch int DEFAULT 1,
                                          ack_ids bigint[] DEFAULT NULL, ack_attempts int[] DEFAULT NULL,
                                          ack_results jsonb[] DEFAULT NULL)
RETURNS SETOF queue.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM queue.ack_claims(ack_ids, ack_attempts, ack_results);
    RETURN QUERY SELECT * FROM @extschema@.queue_pop(queue_ack_pop.queue, queue_ack_pop.worker, queue_ack_pop.batch);
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_ack_pop(text, text, int, bigint[], int[], jsonb[]) IS
'Complete the jobs a worker finished (ack_ids with their ack_attempts and optional ack_results, as queue_ack_batch does; stale claims are skipped) and claim up to batch more (as queue_pop does), in one call and one commit. Never waits.';

------------------------------------------------------------------------------
-- Finish
------------------------------------------------------------------------------

/*
 * queue.finish_jobs: jobs become final. Those of p_ids whose status is one
 * of p_from (and, given p_attempt, whose claim is that attempt) leave
 * queue.jobs and are appended to queue.finished_jobs with p_status, the
 * time and p_result. A failure records p_error as the last error, as
 * queue_fail does on every attempt (NULL when none was given); other final
 * statuses keep the job's last error unless p_error is given. One
 * statement: the DELETE takes the row locks and re-checks the status under
 * them, so two concurrent finishers of one job cannot both move it. A job
 * that became final no longer holds its serial group, so the groups of the
 * moved jobs are released here (a group whose active job is another one
 * keeps it). Returns how many moved. With queue.keep_completed off,
 * completed jobs are deleted instead of moved, leaving their times in
 * queue.job_times. Every path to a final status goes through here, except
 * the single queue_ack, which writes the same move and the same delete out
 * for speed.
 */
CREATE FUNCTION queue.finish_jobs(p_ids bigint[], p_from queue.job_status[], p_status queue.job_status,
                                  p_attempt int, p_result jsonb, p_error text,
                                  p_cascade boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql
-- With one id the custom plan looks cheaper than the generic one (which
-- guesses ten), so the plan cache would plan this statement again on every
-- single ack: 170 µs a call. The generic plan is the right one for any
-- number of ids (a primary-key probe per id).
SET plan_cache_mode = force_generic_plan
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_finished bigint;
    v_groups   text[];
    v_parents  bigint[];
    v_batches  bigint[];
BEGIN
    IF p_status = 'completed' AND NOT queue.keep_completed() THEN
        WITH gone AS (
            DELETE FROM queue.jobs j
             WHERE j.id = ANY (p_ids) AND j.status = ANY (p_from)
               AND (p_attempt IS NULL OR j.attempts = p_attempt)
            RETURNING j.id, j.queue, j.serial_group, j.run_at, j.started_at, j.has_children, j.batch_id,
                      queue.tally(j.queue, j.priority, j.status::text, 'completed', 1, j.id, j.attempts)
        ), archived AS (
            -- The same record queue.delete_jobs leaves for a deleted final
            -- job, so that queue_metrics counts this job like any other.
            INSERT INTO queue.job_times (queue, finished_minute, completed, failed, expired, run_ms, wait_ms)
            SELECT g.queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'), count(*), 0, 0,
                   array_agg(date_part('epoch', now() - g.started_at) * 1000), array_agg(date_part('epoch', g.started_at - g.run_at) * 1000)
              FROM gone g
             WHERE g.started_at IS NOT NULL
             GROUP BY g.queue
        )
        SELECT count(*), array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL),
               array_agg(g.id) FILTER (WHERE g.has_children),
               array_agg(g.batch_id) FILTER (WHERE g.batch_id IS NOT NULL)
          INTO v_finished, v_groups, v_parents, v_batches
          FROM gone g;
    ELSE
        WITH moved AS (
            DELETE FROM queue.jobs j
             WHERE j.id = ANY (p_ids) AND j.status = ANY (p_from)
               AND (p_attempt IS NULL OR j.attempts = p_attempt)
            RETURNING j.*, queue.tally(j.queue, j.priority, j.status::text, p_status::text, 1, j.id, j.attempts)
        ), kept AS (
            INSERT INTO queue.finished_jobs
                   (id, queue, status, priority, group_waiting, serial_group, run_at, lease_until,
                    attempts, max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                    dedupe_key, payload, last_error, result, progress, worker,
                    created_at, started_at, finished_at, has_children, tags, batch_id, keep_for)
            SELECT m.id, m.queue, p_status, m.priority, false, m.serial_group, m.run_at, NULL,
                   m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
                   m.dedupe_key, m.payload,
                   CASE WHEN p_status = 'failed' THEN p_error ELSE coalesce(p_error, m.last_error) END,
                   p_result, m.progress, m.worker,
                   m.created_at, m.started_at, now(), m.has_children, m.tags, m.batch_id, m.keep_for
              FROM moved m
            RETURNING id, serial_group, has_children, batch_id
        )
        SELECT count(*), array_agg(DISTINCT k.serial_group) FILTER (WHERE k.serial_group IS NOT NULL),
               array_agg(k.id) FILTER (WHERE k.has_children),
               array_agg(k.batch_id) FILTER (WHERE k.batch_id IS NOT NULL)
          INTO v_finished, v_groups, v_parents, v_batches
          FROM kept k;
    END IF;
    IF v_groups IS NOT NULL THEN
        PERFORM queue.release_groups(v_groups);
    END IF;
    -- Jobs that others depend on resolve their edges (sql/dependencies.sql);
    -- queue.release_children's own cancellations pass p_cascade false.
    IF v_parents IS NOT NULL AND p_cascade THEN
        PERFORM queue.release_children(v_parents, p_status);
    END IF;
    -- Jobs of batches count their batch down (sql/batches.sql).
    IF v_batches IS NOT NULL THEN
        PERFORM queue.batch_progress(v_batches, p_status);
    END IF;
    RETURN v_finished;
END;
$$;

/*
 * queue.finish_claims: complete claims, each id with its own attempt and
 * result (p_attempts and p_results NULL or parallel to p_ids; a NULL
 * attempt accepts the current claim). The move of queue.finish_jobs for
 * the batched acks of queue_ack_batch and queue_ack_pop, written apart
 * because its ids join their attempts and results: each id drives a
 * primary-key probe (unnest pads a missing array with NULLs). finish_jobs
 * keeps its single index scan over the id array, which single acks and
 * queue_ack(ids) need: folding both into one statement cost single acks a
 * third more in executor set-up alone. Returns the ids completed.
 */
CREATE FUNCTION queue.finish_claims(p_ids bigint[], p_attempts int[], p_results jsonb[])
RETURNS bigint[]
LANGUAGE plpgsql
-- The generic plan is right for any number of ids (see finish_jobs).
SET plan_cache_mode = force_generic_plan
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_finished bigint[];
    v_groups   text[];
    v_parents  bigint[];
    v_batches  bigint[];
BEGIN
    IF NOT queue.keep_completed() THEN
        WITH gone AS (
            DELETE FROM queue.jobs j
             USING unnest(p_ids, p_attempts) AS a(id, attempt)
             WHERE j.id = a.id AND j.status = 'processing'
               AND (a.attempt IS NULL OR j.attempts = a.attempt)
            RETURNING j.id, j.queue, j.serial_group, j.run_at, j.started_at, j.has_children, j.batch_id,
                      queue.tally(j.queue, j.priority, 'processing', 'completed', 1, j.id, j.attempts)
        ), archived AS (
            -- As queue.finish_jobs leaves it for a job it deletes.
            INSERT INTO queue.job_times (queue, finished_minute, completed, failed, expired, run_ms, wait_ms)
            SELECT g.queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'), count(*), 0, 0,
                   array_agg(date_part('epoch', now() - g.started_at) * 1000), array_agg(date_part('epoch', g.started_at - g.run_at) * 1000)
              FROM gone g
             WHERE g.started_at IS NOT NULL
             GROUP BY g.queue
        )
        SELECT coalesce(array_agg(g.id), '{}'),
               array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL),
               array_agg(g.id) FILTER (WHERE g.has_children),
               array_agg(g.batch_id) FILTER (WHERE g.batch_id IS NOT NULL)
          INTO v_finished, v_groups, v_parents, v_batches
          FROM gone g;
    ELSE
        WITH moved AS (
            DELETE FROM queue.jobs j
             USING unnest(p_ids, p_attempts, p_results) AS a(id, attempt, result)
             WHERE j.id = a.id AND j.status = 'processing'
               AND (a.attempt IS NULL OR j.attempts = a.attempt)
            RETURNING j.*, a.result AS given_result,
                      queue.tally(j.queue, j.priority, 'processing', 'completed', 1, j.id, j.attempts)
        ), kept AS (
            INSERT INTO queue.finished_jobs
                   (id, queue, status, priority, group_waiting, serial_group, run_at, lease_until,
                    attempts, max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                    dedupe_key, payload, last_error, result, progress, worker,
                    created_at, started_at, finished_at, has_children, tags, batch_id, keep_for)
            SELECT m.id, m.queue, 'completed', m.priority, false, m.serial_group, m.run_at, NULL,
                   m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
                   m.dedupe_key, m.payload, m.last_error, m.given_result, m.progress, m.worker,
                   m.created_at, m.started_at, now(), m.has_children, m.tags, m.batch_id, m.keep_for
              FROM moved m
            RETURNING id, serial_group, has_children, batch_id
        )
        SELECT coalesce(array_agg(k.id), '{}'),
               array_agg(DISTINCT k.serial_group) FILTER (WHERE k.serial_group IS NOT NULL),
               array_agg(k.id) FILTER (WHERE k.has_children),
               array_agg(k.batch_id) FILTER (WHERE k.batch_id IS NOT NULL)
          INTO v_finished, v_groups, v_parents, v_batches
          FROM kept k;
    END IF;
    IF v_groups IS NOT NULL THEN
        PERFORM queue.release_groups(v_groups);
    END IF;
    IF v_parents IS NOT NULL THEN
        PERFORM queue.release_children(v_parents, 'completed');
    END IF;
    IF v_batches IS NOT NULL THEN
        PERFORM queue.batch_progress(v_batches, 'completed');
    END IF;
    RETURN v_finished;
END;
$$;

/*
 * queue_ack: complete a claimed job. False (and no change) when the job
 * is unknown, not processing, or `attempt` is stale. Frees its serial group.
 *
 * The move and the delete of queue.finish_jobs written out for one job: a
 * single ack is the commonest statement a worker sends, and the nested
 * function call (with its generic-plan setting) cost about 8% of W3 in
 * sequential runs. With a scalar id the plan cache keeps the generic plan
 * by itself.
 */
CREATE FUNCTION @extschema@.queue_ack(id bigint, result jsonb DEFAULT NULL, attempt int DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_group  text;
    v_parent boolean;
    v_batch  bigint;
BEGIN
    IF result IS NOT NULL THEN
        PERFORM queue.check_size('result', queue.json_size(result), 'result');
    END IF;
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN false;
    END IF;
    IF NOT queue.keep_completed() THEN
        -- queue.finish_jobs's delete, written out for one job as the move
        -- below is: through the nested call (arrays, aggregates, its own
        -- settings) an ack that keeps nothing cost more than one that keeps
        -- the job (bench/README.md, "Completed jobs not kept").
        WITH gone AS (
            DELETE FROM queue.jobs j
             WHERE j.id = queue_ack.id AND j.status = 'processing'
               AND (attempt IS NULL OR j.attempts = attempt)
            RETURNING j.queue, j.serial_group, j.run_at, j.started_at, j.has_children, j.batch_id,
                      queue.tally(j.queue, j.priority, 'processing', 'completed', 1, j.id, j.attempts)
        ), archived AS (
            -- The record finish_jobs leaves for a job it deletes.
            INSERT INTO queue.job_times (queue, finished_minute, completed, failed, expired, run_ms, wait_ms)
            SELECT g.queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'), 1, 0, 0,
                   ARRAY[date_part('epoch', now() - g.started_at) * 1000],
                   ARRAY[date_part('epoch', g.started_at - g.run_at) * 1000]
              FROM gone g
             WHERE g.started_at IS NOT NULL
        )
        SELECT g.serial_group, g.has_children, g.batch_id INTO v_group, v_parent, v_batch FROM gone g;
    ELSE
        WITH moved AS (
            DELETE FROM queue.jobs j
             WHERE j.id = queue_ack.id AND j.status = 'processing'
               AND (attempt IS NULL OR j.attempts = attempt)
            RETURNING j.*, queue.tally(j.queue, j.priority, 'processing', 'completed', 1, j.id, j.attempts)
        )
        INSERT INTO queue.finished_jobs
               (id, queue, status, priority, group_waiting, serial_group, run_at, lease_until,
                attempts, max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                dedupe_key, payload, last_error, result, progress, worker,
                created_at, started_at, finished_at, has_children, tags, batch_id, keep_for)
        SELECT m.id, m.queue, 'completed', m.priority, false, m.serial_group, m.run_at, NULL,
               m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
               m.dedupe_key, m.payload, m.last_error, queue_ack.result, m.progress, m.worker,
               m.created_at, m.started_at, now(), m.has_children, m.tags, m.batch_id, m.keep_for
          FROM moved m
        RETURNING serial_group, has_children, batch_id INTO v_group, v_parent, v_batch;
    END IF;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_group IS NOT NULL THEN
        PERFORM queue.release_groups(ARRAY[v_group]);
    END IF;
    IF v_parent THEN
        PERFORM queue.release_children(ARRAY[id], 'completed');
    END IF;
    IF v_batch IS NOT NULL THEN
        PERFORM queue.batch_progress(ARRAY[v_batch], 'completed');
    END IF;
    RETURN true;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_ack(bigint, jsonb, int) IS
'Complete a claimed job, optionally storing a result. Returns false and changes nothing when the job is unknown, not processing, or attempt is stale.';

/*
 * queue_ack(ids): complete many current claims at once. Returns how many.
 */
CREATE FUNCTION @extschema@.queue_ack(ids bigint[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue.rules_exist() THEN
        ids := queue.allowed_ids(queue.caller(), 'work', ids);
    END IF;
    RETURN queue.finish_jobs(ids, '{processing}', 'completed', NULL, NULL, NULL);
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_ack(bigint[]) IS
'Complete many claimed jobs at once; returns how many were processing and are now completed.';

/*
 * queue_fail: record a failed attempt. With attempts left the job goes
 * `retrying` after its backoff (or `retry_in`), or straight back to `pending`
 * when the delay is zero; with none left, or `permanent`, it is `failed`
 * (a dead letter). Returns the new status, or NULL when nothing changed
 * (unknown job, not processing, stale attempt).
 */
CREATE FUNCTION @extschema@.queue_fail(id bigint, error text DEFAULT NULL, attempt int DEFAULT NULL,
                                       retry_in interval DEFAULT NULL, permanent boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_job   queue.jobs;
    v_delay interval;
BEGIN
    PERFORM queue.check_span('retry_in', retry_in, 'delay');
    PERFORM queue.check_size('error', pg_column_size(error), 'error');
    -- Checked before the row lock: a confined role must not hold another
    -- queue's job locked (stalling its worker's ack and its lease expiry)
    -- nor learn from taking the lock that the id exists.
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_job FROM queue.jobs j
     WHERE j.id = queue_fail.id AND j.status = 'processing'
       AND (attempt IS NULL OR j.attempts = attempt)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- The attempt's error joins the job's history (queue_job's "errors").
    INSERT INTO queue.job_errors AS e (job_id, attempt, error) VALUES (v_job.id, v_job.attempts, error)
    ON CONFLICT ON CONSTRAINT job_errors_pkey DO UPDATE SET at = now(), error = excluded.error;
    IF coalesce(permanent, false) OR v_job.attempts >= v_job.max_attempts THEN
        PERFORM queue.finish_jobs(ARRAY[v_job.id], '{processing}', 'failed', NULL, NULL, error);
        RETURN 'failed';
    END IF;

    v_delay := coalesce(retry_in, queue.retry_delay(v_job.attempts, v_job.backoff_base,
                                                    v_job.backoff_max, v_job.retry_delays));
    IF v_delay <= interval '0' THEN
        -- Due at once: back in line now. A grouped job stays its group's
        -- active job (status pending, not waiting).
        UPDATE queue.jobs j
           SET status = 'pending', last_error = error, run_at = now(), lease_until = NULL
         WHERE j.id = v_job.id;
        PERFORM queue.tally(v_job.queue, v_job.priority, 'processing', 'pending', 1, v_job.id, v_job.attempts);
        PERFORM queue.wake(v_job.queue);
        RETURN 'pending';
    END IF;
    UPDATE queue.jobs j
       SET status = 'retrying', last_error = error, run_at = now() + v_delay, lease_until = NULL
     WHERE j.id = v_job.id;
    PERFORM queue.tally(v_job.queue, v_job.priority, 'processing', 'retrying', 1, v_job.id, v_job.attempts);
    RETURN 'retrying';
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_fail(bigint, text, int, interval, boolean) IS
'Fail a claimed job: retrying with backoff while attempts remain (retry_in overrides the delay once), failed when none remain or permanent. Returns the new status, NULL when nothing changed.';

/*
 * queue_release: give a claimed job back without burning an attempt, e.g.
 * when a worker stops before its handler finished. The job is pending again
 * at once (a grouped job stays its group's active job, as after a fail due
 * at once) and its queue is woken. Attempt numbers stay unique per claim, so
 * that a stale worker can never act on a later claim: instead the job's
 * max_attempts grows by one, and the give-back costs it no attempt.
 */
CREATE FUNCTION @extschema@.queue_release(id bigint, attempt int DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_job queue.jobs;
BEGIN
    -- Checked before the row lock: a confined role must not hold another
    -- queue's job locked (stalling its worker's ack and its lease expiry)
    -- nor learn from taking the lock that the id exists.
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN false;
    END IF;
    SELECT * INTO v_job FROM queue.jobs j
     WHERE j.id = queue_release.id AND j.status = 'processing'
       AND (attempt IS NULL OR j.attempts = attempt)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE queue.jobs j
       SET status = 'pending', run_at = now(), lease_until = NULL, max_attempts = j.max_attempts + 1
     WHERE j.id = v_job.id;
    PERFORM queue.tally(v_job.queue, v_job.priority, 'processing', 'pending', 1, v_job.id, v_job.attempts);
    PERFORM queue.wake(v_job.queue);
    RETURN true;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_release(bigint, int) IS
'Give a claimed job back (a worker stopping): pending again at once, its queue woken, without burning an attempt (max_attempts grows by one; attempt numbers stay unique per claim). With attempt, only that claim. Returns false when nothing changed.';

/*
 * queue_touch: heartbeat of a claimed job. Its lease now runs to
 * now() + extend (default: the job's timeout).
 */
CREATE FUNCTION @extschema@.queue_touch(id bigint, extend interval DEFAULT NULL, attempt int DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_none bigint;
BEGIN
    PERFORM queue.check_span('extend', extend, 'lease');
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN false;
    END IF;
    -- The lease moved: tell the lease book (no counter changes).
    UPDATE queue.jobs j
       SET lease_until = now() + coalesce(extend, j.timeout)
     WHERE j.id = queue_touch.id AND j.status = 'processing'
       AND (attempt IS NULL OR j.attempts = attempt)
    RETURNING queue.tally(j.queue, j.priority, 'processing', 'processing', 0, j.id, j.attempts, j.lease_until)
         INTO v_none;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_touch(bigint, interval, int) IS
'Extend the lease of a claimed job to now() + extend (default: its timeout). False when the job is not processing or attempt is stale.';

/*
 * queue_cancel: cancel a job that is still waiting (scheduled, pending,
 * retrying, blocked). A processing job is not cancelled: its worker holds
 * it. Its dependents are cancelled with it (queue.release_children).
 */
CREATE FUNCTION @extschema@.queue_cancel(id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue.rules_exist()
       AND NOT queue.job_allowed(queue.caller(), 'produce', queue_cancel.id) THEN
        RETURN false;
    END IF;
    RETURN queue.finish_jobs(ARRAY[queue_cancel.id], '{scheduled,pending,retrying,blocked}', 'cancelled',
                             NULL, NULL, NULL) > 0;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_cancel(bigint) IS
'Cancel a waiting job (scheduled, pending, retrying or blocked); the jobs that depend on it are cancelled too (unless pushed with run_anyway). False for processing, final or unknown jobs.';

------------------------------------------------------------------------------
-- Looking at jobs
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.queue_peek(queue text, n int DEFAULT 1)
RETURNS SETOF queue.waiting_job
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue text := queue.check_queue_name(queue_peek.queue);
    v_n     int  := queue.check_count('n', queue_peek.n, 10000, 'n is how many of the next jobs to show.');
BEGIN
    PERFORM queue.scope('read', v_queue);
    RETURN QUERY
    SELECT j.id, j.queue, j.payload, j.priority, j.serial_group, j.attempts, j.run_at, j.created_at
      FROM queue.jobs j
     WHERE j.queue = v_queue AND j.status = 'pending' AND NOT j.group_waiting
     ORDER BY j.priority, j.id
     LIMIT v_n;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_peek(text, int) IS
'The next n jobs queue_pop would claim, in claim order, without claiming them.';

CREATE FUNCTION @extschema@.queue_job(id bigint)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(j) - 'group_waiting' - 'has_children'
           || jsonb_build_object('waiting_for_group', j.group_waiting,
                                 'depends_on', (SELECT jsonb_agg(d.parent ORDER BY d.parent)
                                                  FROM queue.job_deps d WHERE d.child = j.id),
                                 'errors', coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', e.attempt, 'at', e.at,
                                                                                         'error', e.error)
                                                                      ORDER BY e.attempt)
                                                       FROM queue.job_errors e WHERE e.job_id = j.id), '[]'))
      FROM queue.all_jobs j
     WHERE j.id = $1
       AND queue.access_allows(queue.scope('read'), j.queue);
$$;
COMMENT ON FUNCTION @extschema@.queue_job(bigint) IS
'Everything about one job as jsonb (status, attempts, payload, result, last_error, errors: the error of every failed attempt, progress, times, worker); NULL for an unknown id.';
