-- Observability: counters, metrics, the queue list, health, Prometheus.
--
-- Nothing here counts rows of queue.jobs on the way to an answer. Every
-- function that moves a job between statuses calls queue.tally (src/stats.rs);
-- the tallies reach queue.stats without a shared hot row, and the readers sum
-- a handful of rows per queue. queue_metrics reads the finished jobs of its
-- window, and for jobs already deleted the compact times in queue.job_times.

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

-- Counters by queue, priority and writer. slot 0 holds what the maintenance
-- worker flushed from shared memory; slot n > 0 is written by backend n just
-- before its commits, in databases the worker does not serve. Readers sum the
-- slots. Gauges (scheduled .. retrying) are net amounts; the rest only grow.
CREATE TABLE queue.stats (
    queue         text COLLATE "C" NOT NULL,
    priority      int NOT NULL,
    slot          int NOT NULL,
    scheduled     bigint NOT NULL DEFAULT 0,
    pending       bigint NOT NULL DEFAULT 0,
    processing    bigint NOT NULL DEFAULT 0,
    retrying      bigint NOT NULL DEFAULT 0,
    pushed        bigint NOT NULL DEFAULT 0,
    popped        bigint NOT NULL DEFAULT 0,
    completed     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    expired       bigint NOT NULL DEFAULT 0,
    cancelled     bigint NOT NULL DEFAULT 0,
    retried       bigint NOT NULL DEFAULT 0,
    deleted       bigint NOT NULL DEFAULT 0,
    last_activity timestamptz,
    -- Jobs waiting for their dependencies: a gauge, added after the others.
    blocked       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, priority, slot)
);

-- Run and wait times of final jobs that were deleted (retention, cleanup,
-- purge), so that queue_metrics stays exact over its window after their rows
-- are gone: one row per queue, minute and deleting statement, with one array
-- element per job (8 bytes instead of a whole row).
CREATE TABLE queue.job_times (
    queue           text COLLATE "C" NOT NULL,
    finished_minute timestamptz NOT NULL,
    completed       int NOT NULL,
    failed          int NOT NULL,
    expired         int NOT NULL,
    run_ms          float8[] NOT NULL,  -- finished_at - started_at
    wait_ms         float8[] NOT NULL   -- started_at - run_at
);
CREATE INDEX job_times_minute ON queue.job_times (finished_minute);

-- Throughput by queue, minute and writer, from the counters (not from job
-- rows). slot 0 is written by the maintenance flush, one upsert per active
-- queue and tick; slot n > 0 by backend n before its commits where its
-- tallies do not go through shared memory (as in queue.stats), so pushers
-- never share a row. Readers sum the slots. Kept for
-- queue.metrics_retention.
CREATE TABLE queue.stats_minutes (
    queue     text COLLATE "C" NOT NULL,
    minute    timestamptz NOT NULL,
    slot      int NOT NULL DEFAULT 0,
    pushed    bigint NOT NULL DEFAULT 0,
    popped    bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    expired   bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    retried   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute, slot)
);
CREATE INDEX stats_minutes_minute ON queue.stats_minutes (minute);

------------------------------------------------------------------------------
-- Internal helpers
------------------------------------------------------------------------------

/*
 * queue.metrics_retention: how long archived job times are kept
 * (GUC queue.metrics_retention).
 */
CREATE FUNCTION queue.metrics_retention() RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('queue.metrics_retention', true), ''), '7 days')::interval;
$$;

/*
 * queue.stats_apply: add counter amounts to one row of queue.stats, and with
 * p_minutes the throughput amounts to this minute's row of
 * queue.stats_minutes. p_counts is in the order of src/stats.rs (scheduled
 * first). Called by the flush (slot 0, which writes its minutes in bulk) and
 * before commit by backends whose tallies do not go through shared memory
 * (their own slot, with p_minutes), never concurrently for one row.
 */
CREATE FUNCTION queue.stats_apply(p_slot int, p_queue text, p_priority int, p_counts bigint[],
                                  p_last timestamptz, p_minutes boolean DEFAULT false) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO queue.stats AS s (queue, priority, slot, scheduled, pending, processing, retrying,
                                  pushed, popped, completed, failed, expired, cancelled, retried,
                                  deleted, last_activity, blocked)
    VALUES (p_queue, p_priority, p_slot, p_counts[1], p_counts[2], p_counts[3], p_counts[4],
            p_counts[5], p_counts[6], p_counts[7], p_counts[8], p_counts[9], p_counts[10],
            p_counts[11], p_counts[12], p_last, coalesce(p_counts[13], 0))
    ON CONFLICT (queue, priority, slot) DO UPDATE
       SET scheduled  = s.scheduled + excluded.scheduled,
           pending    = s.pending + excluded.pending,
           processing = s.processing + excluded.processing,
           retrying   = s.retrying + excluded.retrying,
           pushed     = s.pushed + excluded.pushed,
           popped     = s.popped + excluded.popped,
           completed  = s.completed + excluded.completed,
           failed     = s.failed + excluded.failed,
           expired    = s.expired + excluded.expired,
           cancelled  = s.cancelled + excluded.cancelled,
           retried    = s.retried + excluded.retried,
           deleted    = s.deleted + excluded.deleted,
           blocked    = s.blocked + excluded.blocked,
           last_activity = greatest(s.last_activity, excluded.last_activity);
    INSERT INTO queue.stats_minutes AS m
           (queue, minute, slot, pushed, popped, completed, failed, expired, cancelled, retried)
    SELECT p_queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'), p_slot,
           p_counts[5], p_counts[6], p_counts[7], p_counts[8], p_counts[9], p_counts[10], p_counts[11]
     WHERE p_minutes AND (p_counts[5] <> 0 OR p_counts[6] <> 0 OR p_counts[7] <> 0 OR p_counts[8] <> 0
                          OR p_counts[9] <> 0 OR p_counts[10] <> 0 OR p_counts[11] <> 0)
    ON CONFLICT (queue, minute, slot) DO UPDATE
       SET pushed = m.pushed + excluded.pushed, popped = m.popped + excluded.popped,
           completed = m.completed + excluded.completed, failed = m.failed + excluded.failed,
           expired = m.expired + excluded.expired, cancelled = m.cancelled + excluded.cancelled,
           retried = m.retried + excluded.retried;
$$;

/*
 * queue.stats_rows: the counters of every (queue, priority), or of one
 * queue's: queue.stats plus what shared memory and this transaction hold
 * unflushed. The shared advisory lock keeps a flush from moving amounts
 * between the two sources while they are read (the flush takes it
 * exclusively), so nothing is seen twice or not at all. For one queue the
 * rows come from the primary key, whatever the number of queues; a custom
 * plan each call, so that the NULL test folds away.
 */
CREATE FUNCTION queue.stats_rows(p_queue text DEFAULT NULL)
RETURNS TABLE (queue text, priority int, scheduled bigint, pending bigint, processing bigint,
               retrying bigint, pushed bigint, popped bigint, completed bigint, failed bigint,
               expired bigint, cancelled bigint, retried bigint, deleted bigint,
               last_activity timestamptz, blocked bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    PERFORM queue.counters_lock(true);
    RETURN QUERY
    SELECT r.queue::text, r.priority,
           sum(r.scheduled)::bigint, sum(r.pending)::bigint, sum(r.processing)::bigint,
           sum(r.retrying)::bigint, sum(r.pushed)::bigint, sum(r.popped)::bigint,
           sum(r.completed)::bigint, sum(r.failed)::bigint, sum(r.expired)::bigint,
           sum(r.cancelled)::bigint, sum(r.retried)::bigint, sum(r.deleted)::bigint,
           max(r.last_activity), sum(r.blocked)::bigint
      FROM (SELECT s.queue, s.priority, s.scheduled, s.pending, s.processing, s.retrying,
                   s.pushed, s.popped, s.completed, s.failed, s.expired, s.cancelled,
                   s.retried, s.deleted, s.last_activity, s.blocked
              FROM queue.stats s
             WHERE p_queue IS NULL OR s.queue = p_queue COLLATE "C"
            UNION ALL
            SELECT u.queue, u.priority, u.counts[1], u.counts[2], u.counts[3], u.counts[4],
                   u.counts[5], u.counts[6], u.counts[7], u.counts[8], u.counts[9],
                   u.counts[10], u.counts[11], u.counts[12], u.last_activity, u.counts[13]
              FROM queue.stats_unflushed() u
             WHERE p_queue IS NULL OR u.queue = p_queue) r
     GROUP BY r.queue, r.priority;
END;
$$;

/*
 * queue.stats_sums: the counters of every queue the scope allows, summed
 * by queue (p_by_queue) or by priority, in one pass over queue.stats and
 * shared memory: what queue_list and queue_stats(NULL) need, without
 * grouping by (queue, priority) first. At 10,000 queues x 10 priorities
 * that first grouping was most of their time. The lock as in stats_rows.
 */
CREATE FUNCTION queue.stats_sums(p_scope text[], p_by_queue boolean)
RETURNS TABLE (queue text, priority int, scheduled bigint, pending bigint, processing bigint,
               retrying bigint, pushed bigint, popped bigint, completed bigint, failed bigint,
               expired bigint, cancelled bigint, retried bigint, deleted bigint,
               last_activity timestamptz, blocked bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    PERFORM queue.counters_lock(true);
    RETURN QUERY
    SELECT CASE WHEN p_by_queue THEN r.queue::text END, CASE WHEN NOT p_by_queue THEN r.priority END,
           sum(r.scheduled)::bigint, sum(r.pending)::bigint, sum(r.processing)::bigint,
           sum(r.retrying)::bigint, sum(r.pushed)::bigint, sum(r.popped)::bigint,
           sum(r.completed)::bigint, sum(r.failed)::bigint, sum(r.expired)::bigint,
           sum(r.cancelled)::bigint, sum(r.retried)::bigint, sum(r.deleted)::bigint,
           max(r.last_activity), sum(r.blocked)::bigint
      FROM (SELECT s.queue, s.priority, s.scheduled, s.pending, s.processing, s.retrying,
                   s.pushed, s.popped, s.completed, s.failed, s.expired, s.cancelled,
                   s.retried, s.deleted, s.last_activity, s.blocked
              FROM queue.stats s
            UNION ALL
            SELECT u.queue, u.priority, u.counts[1], u.counts[2], u.counts[3], u.counts[4],
                   u.counts[5], u.counts[6], u.counts[7], u.counts[8], u.counts[9],
                   u.counts[10], u.counts[11], u.counts[12], u.last_activity, u.counts[13]
              FROM queue.stats_unflushed() u) r
     WHERE p_scope IS NULL OR queue.access_allows(p_scope, r.queue)
     GROUP BY 1, 2;
END;
$$;

/*
 * queue.recount_stats: set the gauges from the jobs themselves. Needed once
 * after a server start (shared memory, and any tallies not yet flushed,
 * are gone) and after tallies were lost. The SHARE lock waits for the
 * transactions writing jobs and holds new ones back while it counts, so the
 * count and the counters meet at one instant.
 *
 * Waiting for that lock queues every later writer behind it, so it must
 * never wait on a transaction that will not end soon: while any transaction
 * that holds a write lock on queue.jobs has been open for more than 20 ms
 * (a worker with its claim open, a prepared transaction, a long batch), the
 * recount is put off to a later tick without waiting at all, and returns
 * -1; queue_health says a recount is pending meanwhile. Otherwise it waits
 * at most 10 ms (lock_timeout), which is all a writer can be held back.
 *
 * Every row of queue.jobs is a live job (final ones are in
 * queue.finished_jobs), so one pass over the table counts them: 0.14-0.32 s
 * at 1M waiting. While history shared the table, the count read the four
 * partial indexes of live jobs instead; on the live table alone that is no
 * faster (0.12-0.22 s in the same session) and needs the visibility map
 * to be current. No JIT: compiling costs more than this one scan.
 */
CREATE FUNCTION queue.recount_stats() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off AS $$
DECLARE
    v_timeout text := current_setting('lock_timeout');
    v_rows    int;
BEGIN
    IF EXISTS (
        SELECT 1
          FROM pg_locks l
          LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.relation = 'queue.jobs'::regclass AND l.granted
           AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareRowExclusiveLock',
                          'ExclusiveLock', 'AccessExclusiveLock')
           AND l.pid IS DISTINCT FROM pg_backend_pid()
           -- a prepared transaction has no backend: always long
           AND (l.pid IS NULL OR a.xact_start < clock_timestamp() - interval '20 milliseconds')) THEN
        RETURN -1;
    END IF;
    -- Both waits are bounded: a reader holding the stats lock in a
    -- transaction that then writes jobs would otherwise deadlock with us.
    PERFORM set_config('lock_timeout', '10ms', true);
    LOCK TABLE queue.jobs IN SHARE MODE;
    PERFORM queue.counters_lock(false);
    PERFORM set_config('lock_timeout', v_timeout, true);
    PERFORM queue.stats_forget_gauges();
    UPDATE queue.stats
       SET scheduled = 0, pending = 0, processing = 0, retrying = 0, blocked = 0
     WHERE scheduled <> 0 OR pending <> 0 OR processing <> 0 OR retrying <> 0 OR blocked <> 0;
    INSERT INTO queue.stats AS s (queue, priority, slot, scheduled, pending, processing, retrying, blocked)
    SELECT j.queue, j.priority, 0,
           count(*) FILTER (WHERE j.status = 'scheduled'),
           count(*) FILTER (WHERE j.status = 'pending'),
           count(*) FILTER (WHERE j.status = 'processing'),
           count(*) FILTER (WHERE j.status = 'retrying'),
           count(*) FILTER (WHERE j.status = 'blocked')
      FROM queue.jobs j
     GROUP BY j.queue, j.priority
    ON CONFLICT (queue, priority, slot) DO UPDATE
       SET scheduled = excluded.scheduled, pending = excluded.pending,
           processing = excluded.processing, retrying = excluded.retrying,
           blocked = excluded.blocked;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

/*
 * queue.stats_pass: the counters' duty, run by the maintenance worker in a
 * short transaction of its own after each pass (and by queue_tick): recount
 * the gauges if shared memory asks for it, then move the shared-memory
 * counters into queue.stats. Skips the flush while a reader holds the lock;
 * the counters simply wait for the next tick. Returns rows flushed.
 */
CREATE FUNCTION queue.stats_pass() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- No JIT, as for the maintenance pass: it runs every tick.
SET jit = off AS $$
DECLARE
    v_rows   int;
    v_folded int;
BEGIN
    IF queue.stats_recount_needed() THEN
        BEGIN
            PERFORM queue.recount_stats();
        EXCEPTION WHEN OTHERS THEN
            -- lock_timeout behind a transaction that just began: next tick.
            RAISE WARNING 'queue: recounting the job gauges failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
        END;
    END IF;
    IF NOT queue.counters_try_lock() THEN
        RETURN 0;
    END IF;
    -- The amounts moved are also this minute's throughput (counts[5] is
    -- pushed, then popped, completed, failed, expired, cancelled, retried).
    WITH taken AS MATERIALIZED (
        SELECT t.* FROM queue.stats_take() t
    ), applied AS (
        SELECT count(*) AS n
          FROM (SELECT queue.stats_apply(0, t.queue, t.priority, t.counts, t.last_activity) FROM taken t) a
    ), minutes AS (
        INSERT INTO queue.stats_minutes AS m
               (queue, minute, pushed, popped, completed, failed, expired, cancelled, retried)
        SELECT t.queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'),
               sum(t.counts[5]), sum(t.counts[6]), sum(t.counts[7]), sum(t.counts[8]),
               sum(t.counts[9]), sum(t.counts[10]), sum(t.counts[11])
          FROM taken t
         GROUP BY t.queue
        HAVING sum(t.counts[5]) + sum(t.counts[6]) + sum(t.counts[7]) + sum(t.counts[8])
               + sum(t.counts[9]) + sum(t.counts[10]) + sum(t.counts[11]) > 0
        ON CONFLICT (queue, minute, slot) DO UPDATE
           SET pushed = m.pushed + excluded.pushed, popped = m.popped + excluded.popped,
               completed = m.completed + excluded.completed, failed = m.failed + excluded.failed,
               expired = m.expired + excluded.expired, cancelled = m.cancelled + excluded.cancelled,
               retried = m.retried + excluded.retried
    )
    SELECT a.n INTO v_rows FROM applied a;
    -- Rows backends wrote because the shared table was full (one per key
    -- and backend) are folded into slot 0 now and then, so that they do
    -- not pile up; rows a committing backend holds are left for next time.
    -- At most 500 rows a pass: a backend that upserts a row this pass
    -- deletes waits for the pass to commit, so the pass stays short, and
    -- a full one has the next tick fold on.
    IF queue.stats_fold_due() THEN
        WITH gone AS (
            DELETE FROM queue.stats s
             WHERE s.ctid = ANY (ARRAY(SELECT x.ctid FROM queue.stats x WHERE x.slot <> 0
                                        LIMIT 500 FOR UPDATE SKIP LOCKED))
            RETURNING s.*
        )
        SELECT coalesce(sum(f.n), 0) INTO v_folded
          FROM (SELECT count(*) AS n,
                       queue.stats_apply(0, g.queue, g.priority,
                       ARRAY[sum(g.scheduled), sum(g.pending), sum(g.processing), sum(g.retrying),
                             sum(g.pushed), sum(g.popped), sum(g.completed), sum(g.failed),
                             sum(g.expired), sum(g.cancelled), sum(g.retried), sum(g.deleted),
                             sum(g.blocked)]::bigint[],
                       max(g.last_activity))
                  FROM gone g
                 GROUP BY g.queue, g.priority) f;
        IF v_folded >= 500 THEN
            PERFORM queue.stats_fold_unfinished();
        END IF;
    END IF;
    DELETE FROM queue.stats_minutes WHERE minute < now() - queue.metrics_retention();
    -- Errors go with the longest retention in use: a queue that keeps its
    -- jobs longer keeps their errors too.
    DELETE FROM queue.job_errors
     WHERE at < now() - greatest(queue.retention(), (SELECT max(s.retention) FROM queue.queue_settings s));
    RETURN v_rows;
END;
$$;

/*
 * queue.priority_label: the name of a named priority, else the number.
 */
CREATE FUNCTION queue.priority_label(p int) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p WHEN -20 THEN 'critical' WHEN -10 THEN 'high' WHEN 0 THEN 'normal'
                  WHEN 10 THEN 'low' ELSE p::text END;
$$;

/*
 * queue.oldest_pending: push time of the oldest claimable job of these
 * (queue, priority) pairs: one probe of jobs_claim per pair, in id order,
 * so its cost does not depend on how many jobs wait.
 */
CREATE FUNCTION queue.oldest_pending(p_queues text[], p_priorities int[]) RETURNS timestamptz
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(o.created_at)
      FROM unnest(p_queues, p_priorities) AS k(queue, priority),
           LATERAL (SELECT j.created_at FROM queue.jobs j
                     WHERE j.queue = k.queue AND j.priority = k.priority
                       AND j.status = 'pending' AND NOT j.group_waiting
                     ORDER BY j.id LIMIT 1) o;
$$;

/*
 * queue.oldest_pending_any: push time of the oldest claimable job of every
 * queue the scope allows. Jobs are numbered in push order, so the first
 * pending one by id is the oldest: the first 1,000 live jobs by id are
 * read (the primary key), whatever the number of queues. Only when none of
 * them is claimable and in scope (many delayed or running jobs older than
 * every pending one) does it probe each (queue, priority) with pending
 * jobs, as queue.oldest_pending does: one probe per (queue, priority).
 */
CREATE FUNCTION queue.oldest_pending_any(p_scope text[]) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_seen   int;
    v_oldest timestamptz;
BEGIN
    SELECT count(*),
           min(f.created_at) FILTER (WHERE f.status = 'pending' AND NOT f.group_waiting
                                       AND (p_scope IS NULL OR queue.access_allows(p_scope, f.queue)))
      INTO v_seen, v_oldest
      FROM (SELECT j.status, j.group_waiting, j.created_at, j.queue
              FROM queue.jobs j ORDER BY j.id LIMIT 1000) f;
    IF v_oldest IS NOT NULL OR v_seen < 1000 THEN
        RETURN v_oldest;
    END IF;
    RETURN (SELECT queue.oldest_pending(array_agg(r.queue), array_agg(r.priority))
              FROM queue.stats_rows() r
             WHERE r.pending > 0 AND (p_scope IS NULL OR queue.access_allows(p_scope, r.queue)));
END;
$$;

------------------------------------------------------------------------------
-- Public functions
------------------------------------------------------------------------------

/*
 * queue_stats: counts of one queue (or all): the waiting and running gauges,
 * the cumulative totals, waiting jobs by priority, and the age of the oldest
 * claimable job. Reads the counters, never counts job rows: constant time
 * whatever the depth or history.
 */
CREATE FUNCTION @extschema@.queue_stats(queue text DEFAULT NULL, tag text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue  text := queue.check_queue_filter(queue_stats.queue);
    v_scope  text[] := queue.scope('read', v_queue);
    v_stats  jsonb;
    v_oldest timestamptz;
BEGIN
    -- One tag's jobs, counted from the jobs themselves through the tag
    -- indexes (O(jobs with the tag), history within the retention): the
    -- counters are kept per queue and priority, not per tag.
    IF queue_stats.tag IS NOT NULL THEN
        SELECT jsonb_build_object(
                   'queue', v_queue, 'tag', queue_stats.tag,
                   'total', count(*),
                   'blocked', count(*) FILTER (WHERE j.status = 'blocked'),
                   'scheduled', count(*) FILTER (WHERE j.status = 'scheduled'),
                   'pending', count(*) FILTER (WHERE j.status = 'pending'),
                   'processing', count(*) FILTER (WHERE j.status = 'processing'),
                   'retrying', count(*) FILTER (WHERE j.status = 'retrying'),
                   'completed', count(*) FILTER (WHERE j.status = 'completed'),
                   'failed', count(*) FILTER (WHERE j.status = 'failed'),
                   'expired', count(*) FILTER (WHERE j.status = 'expired'),
                   'cancelled', count(*) FILTER (WHERE j.status = 'cancelled'))
          INTO v_stats
          FROM queue.all_jobs j
         WHERE j.tags @> ARRAY[queue_stats.tag::text COLLATE "C"]
           AND (v_queue IS NULL OR j.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue));
        RETURN v_stats;
    END IF;
    -- One queue: its rows by priority (the primary key). All queues: the
    -- sums by priority, and the oldest claimable job found by id.
    WITH c AS (
        SELECT * FROM queue.stats_rows(v_queue) r
         WHERE v_queue IS NOT NULL AND r.queue = v_queue
           AND (v_scope IS NULL OR queue.access_allows(v_scope, r.queue))
        UNION ALL
        SELECT * FROM queue.stats_sums(v_scope, false) r
         WHERE v_queue IS NULL
    )
    SELECT jsonb_build_object(
               'queue', v_queue,
               'total_size', coalesce(sum(c.pending + c.scheduled + c.retrying), 0),
               'pending', coalesce(sum(c.pending), 0),
               'scheduled', coalesce(sum(c.scheduled), 0),
               'processing', coalesce(sum(c.processing), 0),
               'retrying', coalesce(sum(c.retrying), 0),
               'blocked', coalesce(sum(c.blocked), 0),
               'completed', coalesce(sum(c.completed), 0),
               'failed', coalesce(sum(c.failed), 0),
               'expired', coalesce(sum(c.expired), 0),
               'cancelled', coalesce(sum(c.cancelled), 0),
               'retried', coalesce(sum(c.retried), 0),
               'deleted', coalesce(sum(c.deleted), 0),
               'total_pushed', coalesce(sum(c.pushed), 0),
               'total_popped', coalesce(sum(c.popped), 0),
               'priority_breakdown', coalesce(
                   (SELECT jsonb_object_agg(queue.priority_label(b.priority), b.waiting ORDER BY b.priority)
                      FROM (SELECT c2.priority, sum(c2.pending + c2.scheduled + c2.retrying) AS waiting
                              FROM c c2 GROUP BY c2.priority) b
                     WHERE b.waiting > 0), '{}'),
               'last_activity', max(c.last_activity)),
           CASE WHEN v_queue IS NULL THEN queue.oldest_pending_any(v_scope)
                ELSE queue.oldest_pending(array_agg(c.queue) FILTER (WHERE c.pending > 0),
                                          array_agg(c.priority) FILTER (WHERE c.pending > 0))
           END
      INTO v_stats, v_oldest
      FROM c;
    -- One queue: whether it is paused; all queues: how many are.
    RETURN v_stats || jsonb_build_object('oldest_pending_age',
        round(extract(epoch FROM now() - v_oldest), 3))
        || CASE WHEN v_queue IS NOT NULL
                THEN jsonb_build_object('paused', EXISTS (
                         SELECT FROM queue.queue_settings s WHERE s.queue = v_queue AND s.paused_at IS NOT NULL))
                ELSE jsonb_build_object('paused_queues', (
                         SELECT count(*) FROM queue.queue_settings s
                          WHERE s.paused_at IS NOT NULL
                            AND (v_scope IS NULL OR queue.access_allows(v_scope, s.queue))))
           END;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_stats(text, text) IS
'With tag: the jobs of that tag by status (live, and history within the retention), counted through the tag indexes. Otherwise counts of one queue, or of all with NULL: total_size (= pending + scheduled + retrying), each status (blocked: waiting for dependencies), cumulative completed/failed/expired/cancelled/retried/deleted, total_pushed, total_popped, priority_breakdown of waiting jobs, oldest_pending_age (seconds), last_activity; paused (one queue) or paused_queues (all). Constant time.';

/*
 * queue_size: jobs still waiting (pending + scheduled + retrying), from the
 * counters: constant time at any depth, and it includes this transaction's
 * own pushes.
 */
CREATE FUNCTION @extschema@.queue_size(queue text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_size.queue);
    v_size  bigint;
BEGIN
    PERFORM queue.scope('read', v_queue);
    SELECT coalesce(sum(r.pending + r.scheduled + r.retrying), 0) INTO v_size
      FROM queue.stats_rows(v_queue) r
     WHERE r.queue = v_queue;
    RETURN v_size;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_size(text) IS
'Jobs still waiting in a queue: pending + scheduled + retrying (from the counters, constant time).';

/*
 * queue_list: every queue that ever had a job, with its counts and whether
 * it is paused.
 */
CREATE FUNCTION @extschema@.queue_list()
RETURNS TABLE (queue text, total_size bigint, pending bigint, scheduled bigint, processing bigint,
               retrying bigint, completed bigint, failed bigint, expired bigint, cancelled bigint,
               total_pushed bigint, total_popped bigint, last_activity timestamptz, paused boolean)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.queue, r.pending + r.scheduled + r.retrying, r.pending, r.scheduled, r.processing,
           r.retrying, r.completed, r.failed, r.expired, r.cancelled, r.pushed, r.popped,
           r.last_activity, p.queue IS NOT NULL
      FROM queue.stats_sums(queue.scope('read'), true) r
      LEFT JOIN queue.queue_settings p ON p.queue = r.queue COLLATE "C" AND p.paused_at IS NOT NULL
     ORDER BY r.queue;
$$;
COMMENT ON FUNCTION @extschema@.queue_list() IS
'Every queue that ever had a job, with total_size, each status count, cumulative totals, last_activity and paused.';

/*
 * queue_metrics: how the jobs that finished in the window ran. The window
 * starts at the minute boundary at or before now() - since. Run time is
 * finished_at - started_at of the last attempt; wait time is started_at -
 * run_at, i.e. from the push (or, for a delayed or retried job, from the
 * moment it was due) to its last start. Percentiles are exact (nearest
 * rank) over every job of the window, deleted ones included.
 */
CREATE FUNCTION @extschema@.queue_metrics(queue text DEFAULT NULL, since interval DEFAULT '1 hour')
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue  text := queue.check_queue_filter(queue_metrics.queue);
    v_scope  text[] := queue.scope('read', v_queue);
    v_from   timestamptz;
    v_window record;
BEGIN
    IF since IS NULL OR since <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('since must be a positive interval: %s', coalesce(since::text, 'NULL')),
            HINT = 'Pass how far back to look, e.g. ''1 hour''.';
    END IF;
    PERFORM queue.check_span('since', since, 'window');
    v_from := date_bin('1 minute', now() - since, timestamptz '2000-01-01 00:00:00+00');

    -- One pass over the window: the final jobs still kept, and the archived
    -- times of deleted ones.
    WITH live AS (
        SELECT j.status, date_part('epoch', j.finished_at - j.started_at) * 1000 AS run_ms,
               date_part('epoch', j.started_at - j.run_at) * 1000 AS wait_ms
          FROM queue.finished_jobs j
         WHERE j.status IN ('completed', 'failed', 'expired') AND j.finished_at >= v_from
           AND j.started_at IS NOT NULL AND (v_queue IS NULL OR j.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, j.queue))
    ), archived AS (
        SELECT t.completed, t.failed, t.expired, t.run_ms, t.wait_ms
          FROM queue.job_times t
         WHERE t.finished_minute >= v_from AND (v_queue IS NULL OR t.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, t.queue))
    ), times AS (
        SELECT l.run_ms, l.wait_ms FROM live l
        UNION ALL
        SELECT u.run_ms, u.wait_ms FROM archived a, unnest(a.run_ms, a.wait_ms) AS u(run_ms, wait_ms)
    )
    SELECT (SELECT count(*) FILTER (WHERE status = 'completed') FROM live)
               + (SELECT coalesce(sum(completed), 0) FROM archived) AS completed,
           (SELECT count(*) FILTER (WHERE status = 'failed') FROM live)
               + (SELECT coalesce(sum(failed), 0) FROM archived) AS failed,
           (SELECT count(*) FILTER (WHERE status = 'expired') FROM live)
               + (SELECT coalesce(sum(expired), 0) FROM archived) AS expired,
           avg(run_ms) AS avg_run, percentile_disc(0.95) WITHIN GROUP (ORDER BY run_ms) AS p95_run,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY run_ms) AS p99_run,
           avg(wait_ms) AS avg_wait, percentile_disc(0.95) WITHIN GROUP (ORDER BY wait_ms) AS p95_wait,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY wait_ms) AS p99_wait
      INTO v_window
      FROM times;

    RETURN jsonb_build_object(
        'queue', v_queue,
        'since', v_from,
        'executions', v_window.completed + v_window.failed + v_window.expired,
        'completed', v_window.completed,
        'failed', v_window.failed,
        'expired', v_window.expired,
        'success_rate', round(v_window.completed::numeric
                              / nullif(v_window.completed + v_window.failed + v_window.expired, 0), 4),
        'avg_run_ms', round(v_window.avg_run::numeric, 3),
        'p95_run_ms', round(v_window.p95_run::numeric, 3),
        'p99_run_ms', round(v_window.p99_run::numeric, 3),
        'avg_wait_ms', round(v_window.avg_wait::numeric, 3),
        'p95_wait_ms', round(v_window.p95_wait::numeric, 3),
        'p99_wait_ms', round(v_window.p99_wait::numeric, 3),
        'throughput_per_minute', round((v_window.completed + v_window.failed + v_window.expired)
                                       / (extract(epoch FROM now() - v_from) / 60), 3));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_metrics(text, interval) IS
'How jobs that finished since now() - since (from the minute boundary) ran: executions, completed, failed, expired, success_rate, avg/p95/p99 run time and wait time (ms, exact), throughput_per_minute. Deleted jobs still count.';

/*
 * queue_throughput: jobs pushed, completed and failed per queue and minute
 * over the window (starting at the minute boundary at or before now() -
 * since), from queue.stats_minutes: constant time per minute and queue,
 * whatever the depth, plus what shared memory holds and no flush has
 * moved yet, in the current minute. Minutes without activity have no row.
 */
CREATE FUNCTION @extschema@.queue_throughput(queue text DEFAULT NULL, since interval DEFAULT '1 hour')
RETURNS TABLE (queue_name text, minute timestamptz, pushed bigint, completed bigint, failed bigint, retried bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue text := queue.check_queue_filter(queue_throughput.queue);
    v_scope text[] := queue.scope('read', v_queue);
BEGIN
    IF since IS NULL OR since <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('since must be a positive interval: %s', coalesce(since::text, 'NULL')),
            HINT = 'Pass how far back to look, e.g. ''1 hour''.';
    END IF;
    PERFORM queue.check_span('since', since, 'window');
    -- What shared memory holds and no flush has moved yet belongs to this
    -- minute; the shared lock keeps a flush from moving it meanwhile, so
    -- nothing is counted twice (as in queue.stats_rows).
    PERFORM queue.counters_lock(true);
    RETURN QUERY
    SELECT r.queue, r.minute, sum(r.pushed)::bigint, sum(r.completed)::bigint, sum(r.failed)::bigint,
           sum(r.retried)::bigint
      FROM (SELECT m.queue::text AS queue, m.minute, m.pushed, m.completed, m.failed, m.retried
              FROM queue.stats_minutes m
             WHERE m.minute >= date_bin('1 minute', now() - since, timestamptz '2000-01-01 00:00:00+00')
            UNION ALL
            SELECT u.queue, date_bin('1 minute', now(), timestamptz '2000-01-01 00:00:00+00'),
                   u.counts[5], u.counts[7], u.counts[8], u.counts[11]
              FROM queue.stats_unflushed() u
             WHERE u.counts[5] <> 0 OR u.counts[7] <> 0 OR u.counts[8] <> 0 OR u.counts[11] <> 0) r
     WHERE (v_queue IS NULL OR r.queue = v_queue)
       AND (v_scope IS NULL OR queue.access_allows(v_scope, r.queue))
     GROUP BY r.queue, r.minute
     ORDER BY r.queue, r.minute;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_throughput(text, interval) IS
'Jobs pushed, completed, failed and retried per queue (queue_name) and minute over the window (default the last hour), from the counters, not by counting rows; minutes without activity have no row.';

/*
 * queue_health: is the queue being served? Workers running, the last
 * maintenance pass, backlog, the oldest claimable job, leases overdue for
 * recovery, stale workers. "healthy" is false with a reason per problem.
 */
CREATE FUNCTION @extschema@.queue_health()
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_shm      record;
    v_workers  jsonb;
    v_counts   record;
    v_overdue  bigint;
    v_stale    text[];
    v_horizon  jsonb;
    -- A pass is late after ten ticks and five seconds.
    v_late     interval := coalesce(nullif(current_setting('queue.tick', true), ''), '1s')::interval * 10
                           + interval '5 seconds';
    v_problems text[] := '{}';
BEGIN
    SELECT * INTO v_shm FROM queue.stats_health();
    SELECT jsonb_object_agg(w.name, EXISTS (
               SELECT 1 FROM pg_stat_activity a
                WHERE a.backend_type = 'queue ' || w.name AND a.datname = current_database()))
      INTO v_workers
      FROM unnest(ARRAY['maintenance', 'scheduler', 'notifier']) AS w(name);
    SELECT coalesce(sum(r.pending + r.scheduled + r.retrying), 0) AS backlog,
           coalesce(sum(r.processing), 0) AS processing,
           queue.oldest_pending_any(NULL) AS oldest
      INTO v_counts FROM queue.stats_sums(NULL, false) r;
    -- Leases that ran out more than a minute ago: the maintenance pass
    -- should have recovered them. Found through the lease book.
    SELECT count(*) INTO v_overdue FROM queue.processing_jobs(now() - interval '1 minute');
    SELECT array_agg(w.worker::text ORDER BY w.worker) INTO v_stale
      FROM queue.workers w WHERE w.stale_since IS NOT NULL;
    -- The oldest snapshot that holds back cleanup of the queue's tables:
    -- while it is open, vacuum keeps every dead row of every claim and ack
    -- since, and the live table and its indexes grow (README, Running it in production).
    SELECT jsonb_build_object('pid', h.pid, 'application', h.application, 'kind', h.kind,
                              'age_seconds', round(extract(epoch FROM h.age), 3))
      INTO v_horizon
      FROM (SELECT a.pid, a.application_name AS application, 'transaction' AS kind,
                   clock_timestamp() - coalesce(a.xact_start, a.backend_start) AS age
              FROM pg_stat_activity a
             WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()
               AND (a.datname = current_database() OR a.backend_type = 'walsender')
            UNION ALL
            SELECT NULL, p.gid, 'prepared transaction', clock_timestamp() - p.prepared
              FROM pg_prepared_xacts p WHERE p.database = current_database()
            UNION ALL
            SELECT NULL, r.slot_name, 'replication slot', NULL
              FROM pg_replication_slots r WHERE r.xmin IS NOT NULL OR r.catalog_xmin IS NOT NULL
             ORDER BY age DESC NULLS FIRST
             LIMIT 1) h;

    IF NOT v_shm.preloaded THEN
        v_problems := v_problems || 'the background workers are not running: add queue to shared_preload_libraries'::text;
    ELSIF NOT v_shm.served THEN
        v_problems := v_problems || coalesce(queue.service_problem(), 'the background workers are starting');
    ELSE
        IF EXISTS (SELECT 1 FROM jsonb_each(v_workers) e WHERE e.value = 'false') THEN
            v_problems := v_problems || format('a background worker is not running: %s', v_workers);
        END IF;
        IF v_shm.last_tick IS NULL OR v_shm.last_tick < now() - v_late THEN
            v_problems := v_problems || format('no maintenance pass since %s', coalesce(v_shm.last_tick::text, 'start'));
        END IF;
    END IF;
    IF v_overdue > 0 THEN
        v_problems := v_problems || format('%s processing jobs are more than a minute past their lease', v_overdue);
    END IF;
    IF v_stale IS NOT NULL THEN
        v_problems := v_problems || format('stale workers: %s', array_to_string(v_stale, ', '));
    END IF;
    IF (v_horizon ->> 'age_seconds')::numeric > 300 THEN
        v_problems := v_problems || format('a %s (%s) has held back cleanup of the queue''s tables for %s s',
            v_horizon ->> 'kind', coalesce(v_horizon ->> 'application', v_horizon ->> 'pid'),
            coalesce(v_horizon ->> 'age_seconds', 'unknown'));
    END IF;

    RETURN jsonb_build_object(
        'healthy', cardinality(v_problems) = 0,
        'problems', to_jsonb(v_problems),
        'workers_running', v_workers,
        'last_tick', v_shm.last_tick,
        'backlog', v_counts.backlog,
        'processing', v_counts.processing,
        'oldest_pending_age', round(extract(epoch FROM now() - v_counts.oldest), 3),
        'overdue_leases', v_overdue,
        'stale_workers', coalesce(to_jsonb(v_stale), '[]'),
        'oldest_snapshot', v_horizon,
        'counters', jsonb_build_object('lost_tallies', v_shm.lost_tallies,
                                       'recount_pending', v_shm.recount_pending),
        'lease_book', (SELECT to_jsonb(b) FROM queue.leases_health() b),
        'paused_queues', (SELECT coalesce(jsonb_agg(s.queue ORDER BY s.queue), '[]')
                            FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a, queue.queue_settings s
                           WHERE s.paused_at IS NOT NULL AND queue.access_allows(a.patterns, s.queue)));
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_health() IS
'Whether the queue is served: healthy, problems, workers_running, last_tick, backlog, processing, oldest_pending_age (seconds), overdue_leases, stale_workers, oldest_snapshot (what holds back cleanup: pid, application, kind, age_seconds; a problem past 5 minutes), counters, lease_book, paused_queues. Constant time.';

/*
 * queue_prometheus: the counters in Prometheus text exposition format, for a
 * scrape endpoint (e.g. postgres_exporter or sql_exporter running it).
 * Queue names need no escaping: they are [A-Za-z0-9_.:-] only.
 */
CREATE FUNCTION @extschema@.queue_prometheus()
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_healthy boolean := (@extschema@.queue_health() ->> 'healthy')::boolean;
    v_scope   text[] := queue.scope('read');
    v_text    text;
BEGIN
    -- One statement, lines ordered by (family, queue, line): linear in the
    -- number of queues (appending to arrays in a loop was quadratic).
    WITH r AS (
        SELECT s.queue, sum(s.pending) AS pending, sum(s.scheduled) AS scheduled,
               sum(s.processing) AS processing, sum(s.retrying) AS retrying,
               sum(s.blocked) AS blocked, sum(s.pushed) AS pushed, sum(s.popped) AS popped, sum(s.completed) AS completed,
               sum(s.failed) AS failed, sum(s.expired) AS expired, sum(s.cancelled) AS cancelled,
               sum(s.retried) AS retried, sum(s.deleted) AS deleted,
               queue.oldest_pending(array_agg(s.queue) FILTER (WHERE s.pending > 0),
                                    array_agg(s.priority) FILTER (WHERE s.pending > 0)) AS oldest
          FROM queue.stats_rows() s
         WHERE v_scope IS NULL OR queue.access_allows(v_scope, s.queue)
         GROUP BY s.queue
    ), lines (family, queue, n, line) AS (
        VALUES (0, '', 0, '# HELP queue_up Whether the background workers serve this database and tick (1) or not (0).'),
               (0, '', 1, '# TYPE queue_up gauge'),
               (0, '', 2, format('queue_up %s', CASE WHEN v_healthy THEN 1 ELSE 0 END)),
               (1, '', 0, '# HELP queue_jobs Jobs waiting or running, by queue and status.'),
               (1, '', 1, '# TYPE queue_jobs gauge'),
               (2, '', 0, '# HELP queue_jobs_total Jobs pushed, claimed, retried, finished and deleted, by queue and event.'),
               (2, '', 1, '# TYPE queue_jobs_total counter'),
               (3, '', 0, '# HELP queue_oldest_pending_age_seconds Age of the oldest claimable job of the queue.'),
               (3, '', 1, '# TYPE queue_oldest_pending_age_seconds gauge')
        UNION ALL
        SELECT 1, r.queue, 2 + g.n, format('queue_jobs{queue="%s",status="%s"} %s', r.queue, g.status, g.value)
          FROM r, LATERAL (VALUES (0, 'pending', r.pending), (1, 'scheduled', r.scheduled),
                                  (2, 'processing', r.processing), (3, 'retrying', r.retrying),
                                  (4, 'blocked', r.blocked)) g(n, status, value)
        UNION ALL
        SELECT 2, r.queue, 2 + e.n, format('queue_jobs_total{queue="%s",event="%s"} %s', r.queue, e.event, e.value)
          FROM r, LATERAL (VALUES (0, 'pushed', r.pushed), (1, 'popped', r.popped), (2, 'completed', r.completed),
                                  (3, 'failed', r.failed), (4, 'expired', r.expired), (5, 'cancelled', r.cancelled),
                                  (6, 'retried', r.retried), (7, 'deleted', r.deleted)) e(n, event, value)
        UNION ALL
        SELECT 3, r.queue, 2, format('queue_oldest_pending_age_seconds{queue="%s"} %s', r.queue,
                                     coalesce(round(extract(epoch FROM now() - r.oldest), 3), 0))
          FROM r
    )
    SELECT string_agg(l.line, E'\n' ORDER BY l.family, l.queue <> '', l.queue, l.n) INTO v_text FROM lines l;
    RETURN v_text || E'\n';
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_prometheus() IS
'The counters in Prometheus text exposition format: queue_up, queue_jobs{queue,status}, queue_jobs_total{queue,event}, queue_oldest_pending_age_seconds{queue}.';

-- A new installation starts from zero, whatever an earlier one in this
-- database left in shared memory.
SELECT queue.stats_forget_database();
-- Push defaults may come with restored rows: pushes read the table until
-- one finds none (src/settings.rs).
SELECT queue.push_defaults_forget();

-- Tell the launcher, when this transaction commits, that this database has
-- the extension now: its services start within a second or so.
SELECT queue.announce_database();
