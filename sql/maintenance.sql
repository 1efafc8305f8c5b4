-- Maintenance: the duties that keep the queue moving. Each duty is its own
-- small function that does one bounded batch and says how many rows it
-- touched. queue.maintenance_pass() runs each once; the background worker
-- calls it every tick (committing between calls while there is more to do),
-- and queue_tick() calls it by hand until nothing is left.

/*
 * queue.promote_due: scheduled and retrying jobs whose run_at has come
 * become pending, at most p_batch of them, oldest first. Each affected queue
 * is woken once. A scheduled job of a serial group enters as waiting and its
 * group is re-elected; a retrying job is already its group's active job and
 * simply stays so.
 */
CREATE FUNCTION queue.promote_due(p_batch int) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- jobs_due in run_at order, whatever the statistics say (a fresh table has
-- none): the group try-lock below then runs only on the rows the scan
-- visits up to its LIMIT, not on every due row before a sort.
SET enable_indexscan = on SET enable_bitmapscan = off SET enable_seqscan = off AS $$
DECLARE
    v_count  int;
    v_queues text[];
    v_groups text[];
BEGIN
    -- In SET, j.status is still the old status: a scheduled job of a group
    -- enters waiting (and its group is elected below), a retrying one stays
    -- its group's active job. The ids go through an array, not a join, so
    -- this is a primary-key lookup per job whatever LIMIT the planner guesses.
    -- RETURNING sees only the new row; the old status is told by attempts
    -- (a scheduled job has never run, a retrying one has: see jobs.sql).
    WITH promoted AS (
        UPDATE queue.jobs j
           SET status = 'pending',
               group_waiting = (j.serial_group IS NOT NULL AND j.status = 'scheduled')
         WHERE j.id = ANY (ARRAY(
                   SELECT id
                     FROM queue.jobs
                    WHERE status IN ('scheduled', 'retrying') AND run_at <= now()
                      -- A scheduled job of a group is elected below, under
                      -- its group's lock. A session holding that lock (an
                      -- open transaction that pushed into the group) must
                      -- not stall the pass, and every queue with it: such a
                      -- job waits for a later pass, as a claim skips it.
                      AND (serial_group IS NULL OR status = 'retrying'
                           OR queue.group_try_lock(queue.group_lock_key(serial_group)))
                    ORDER BY run_at
                    LIMIT p_batch
                      FOR UPDATE SKIP LOCKED))
        RETURNING j.queue, j.serial_group, j.group_waiting,
                  queue.tally(j.queue, j.priority,
                              CASE WHEN j.attempts > 0 THEN 'retrying' ELSE 'scheduled' END, 'pending')
    )
    SELECT count(*),
           array_agg(DISTINCT queue) FILTER (WHERE NOT group_waiting),
           array_agg(DISTINCT serial_group) FILTER (WHERE group_waiting)
      INTO v_count, v_queues, v_groups
      FROM promoted;
    PERFORM queue.announce(v_queues, v_groups);
    RETURN v_count;
END;
$$;

/*
 * queue.processing_jobs: the processing jobs, optionally only those whose
 * lease ends before p_lease_before. Through the lease book (src/leases.rs)
 * when it is ready: a primary-key probe per job it names, the rest of the
 * table unread. Otherwise (another database than queue.database, no
 * preloading, the book being rebuilt or overflowed) by a scan of the jobs
 * table. Planned per call (force_custom_plan) so that each path gets its
 * own plan: the test on v_ids folds away.
 */
CREATE FUNCTION queue.processing_jobs(p_lease_before timestamptz DEFAULT NULL)
RETURNS SETOF queue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF queue.leases_ready() THEN
        IF p_lease_before IS NULL THEN
            v_ids := queue.leased_ids();
        ELSE
            v_ids := ARRAY(SELECT d.id FROM queue.leases_due(p_lease_before, 2147483647) d);
        END IF;
    END IF;
    RETURN QUERY
    SELECT * FROM queue.jobs j
     WHERE (v_ids IS NULL OR j.id = ANY (v_ids))
       AND j.status = 'processing'
       AND (p_lease_before IS NULL OR j.lease_until < p_lease_before);
END;
$$;

/*
 * queue.rebuild_lease_book: fill the lease book of this database from the
 * jobs table when it asks for it (after a start, a CREATE EXTENSION, an
 * overflow, or every ten minutes as a safety net; src/leases.rs). The scan
 * is a statement of its own so that its snapshot comes after the clear.
 * Not while a prepared transaction holds changes to the jobs (see below).
 * Returns whether it rebuilt.
 */
CREATE FUNCTION queue.rebuild_lease_book() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT queue.leases_rebuild_due() THEN
        RETURN false;
    END IF;
    -- A prepared transaction that claimed or finished jobs makes its changes
    -- at COMMIT PREPARED, after a scan now would have missed them (the
    -- book is marked not ready at PREPARE). Until every prepared
    -- transaction holding a write lock on the jobs has ended, the book
    -- stays as it is and the readers go on scanning the table.
    IF EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'relation' AND l.pid IS NULL
                  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                  AND l.relation = 'queue.jobs'::regclass
                  AND l.mode = 'RowExclusiveLock') THEN
        RETURN false;
    END IF;
    IF NOT queue.leases_begin_rebuild() THEN
        RETURN false;
    END IF;
    PERFORM queue.lease_load(j.id, j.attempts, j.lease_until)
       FROM queue.jobs j
      WHERE j.status = 'processing';
    RETURN queue.leases_end_rebuild();
END;
$$;

/*
 * queue.expire_leases: processing jobs whose lease ran out. With attempts
 * left they go retrying after their backoff (the lost attempt counts);
 * otherwise they end expired, a dead letter, and free their serial group.
 * Returns {"retried": n, "expired": n}.
 *
 * The candidates come from the lease book when it is ready: its due
 * entries, each checked against its row under the row lock. Entries whose
 * job turned out not to be lapsed (acked meanwhile, lease extended) are
 * settled from the row; one whose row a finisher holds locked waits for the
 * next pass. Without the
 * book, the jobs table is scanned. Planned per call: see processing_jobs.
 */
CREATE FUNCTION queue.expire_leases(p_batch int) RETURNS jsonb
LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ids      bigint[];       -- due in the book; NULL: no book, scan
    v_attempts int[];
    v_leases   timestamptz[];
    v_retried  int;
    v_ending   bigint[];
    v_lapsed   bigint[];
    v_expired  bigint;
    v_id       bigint;
    v_job      queue.jobs;
    v_timeout  text := current_setting('lock_timeout');
BEGIN
    IF queue.leases_ready() THEN
        SELECT coalesce(array_agg(d.id), '{}'), array_agg(d.attempt), array_agg(d.lease_until)
          INTO v_ids, v_attempts, v_leases
          FROM queue.leases_due(now(), p_batch) d;
        IF cardinality(v_ids) = 0 THEN
            RETURN jsonb_build_object('retried', 0, 'expired', 0);
        END IF;
    END IF;

    -- Every lapsed lease gets its error; those with attempts left go
    -- retrying here, the others stay processing for the moment and are
    -- moved to history as expired by queue.finish_jobs just below.
    WITH lapsed AS (
        UPDATE queue.jobs j
           SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'processing'
                             ELSE 'retrying' END::queue.job_status,
               run_at = CASE WHEN j.attempts >= j.max_attempts THEN j.run_at
                             ELSE now() + queue.retry_delay(j.attempts, j.backoff_base,
                                                            j.backoff_max, j.retry_delays) END,
               last_error = format('lease expired: attempt %s was claimed at %s and not finished by %s',
                                   j.attempts, j.started_at, j.lease_until),
               lease_until = CASE WHEN j.attempts >= j.max_attempts THEN j.lease_until END
         WHERE j.id = ANY (ARRAY(
                   SELECT id
                     FROM queue.jobs
                    WHERE (v_ids IS NULL OR id = ANY (v_ids))
                      AND status = 'processing' AND lease_until < now()
                      -- One that ends expired releases its group under the
                      -- group's lock: skipped while a session holds it (see
                      -- queue.promote_due), expired by a later pass.
                      AND (serial_group IS NULL OR attempts < max_attempts
                           OR queue.group_try_lock(queue.group_lock_key(serial_group)))
                      -- One whose end reaches further ends alone, below.
                      AND (attempts < max_attempts OR NOT (has_children OR batch_id IS NOT NULL))
                    ORDER BY lease_until
                    LIMIT p_batch
                      FOR UPDATE SKIP LOCKED))
        RETURNING j.id, j.status, j.attempts, j.last_error,
                  CASE WHEN j.status = 'retrying'
                       THEN queue.tally(j.queue, j.priority, 'processing', 'retrying', 1, j.id, j.attempts) END
    ), noted AS (
        INSERT INTO queue.job_errors AS e (job_id, attempt, error)
        SELECT l.id, l.attempts, l.last_error FROM lapsed l
        ON CONFLICT ON CONSTRAINT job_errors_pkey DO UPDATE SET at = now(), error = excluded.error
    )
    SELECT count(*) FILTER (WHERE status = 'retrying'),
           coalesce(array_agg(id) FILTER (WHERE status = 'processing'), '{}'),
           coalesce(array_agg(id), '{}')
      INTO v_retried, v_ending, v_lapsed
      FROM lapsed;
    v_expired := queue.finish_jobs(v_ending, '{processing}', 'expired', NULL, NULL, NULL);

    -- A last attempt whose end reaches further (its dependents are
    -- cancelled, their groups released; its batch counts down) takes locks
    -- beyond its own row and group, which any session may hold (an open
    -- transaction that pushed into a dependent's group or into the batch).
    -- Each ends in a subtransaction of its own that waits at most 50 ms for
    -- a lock; one that cannot is left for a later pass, so that it never
    -- holds up the expiry of every other lease.
    FOR v_id IN
        SELECT id
          FROM queue.jobs
         WHERE (v_ids IS NULL OR id = ANY (v_ids))
           AND status = 'processing' AND lease_until < now()
           AND attempts >= max_attempts AND (has_children OR batch_id IS NOT NULL)
         ORDER BY lease_until
         LIMIT p_batch
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '50ms', true);
            SELECT * INTO v_job FROM queue.jobs j
             WHERE j.id = v_id AND j.status = 'processing' AND j.lease_until < now()
               AND (j.serial_group IS NULL OR queue.group_try_lock(queue.group_lock_key(j.serial_group)))
               FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                UPDATE queue.jobs j
                   SET last_error = format('lease expired: attempt %s was claimed at %s and not finished by %s',
                                           j.attempts, j.started_at, j.lease_until)
                 WHERE j.id = v_id
                RETURNING j.* INTO v_job;
                INSERT INTO queue.job_errors AS e (job_id, attempt, error)
                VALUES (v_id, v_job.attempts, v_job.last_error)
                ON CONFLICT ON CONSTRAINT job_errors_pkey DO UPDATE SET at = now(), error = excluded.error;
                v_expired := v_expired + queue.finish_jobs(ARRAY[v_id], '{processing}', 'expired', NULL, NULL, NULL);
                v_lapsed := v_lapsed || v_id;
            END IF;
            PERFORM set_config('lock_timeout', v_timeout, true);
        EXCEPTION WHEN lock_not_available THEN
            NULL; -- rolled back, lock_timeout with it: a later pass
        END;
    END LOOP;

    IF v_ids IS NOT NULL THEN
        -- The due entries of jobs that did not lapse here are settled from
        -- their rows, at once (src/leases.rs, lease_settle). A job still
        -- processing is read again under a share lock, so that its lease
        -- cannot move while the entry takes it; one its worker holds locked
        -- is left as it is for the next pass. A job no longer processing
        -- was ended by a committed transaction and needs no lock: a new
        -- claim of it has another attempt, which the settle does not touch.
        -- The lapsed jobs are left out: their end is this transaction's,
        -- noted at its commit, and undone if it rolls back.
        PERFORM queue.lease_settle(d.id, d.attempt, d.lease_until, l.attempts, l.lease_until)
           FROM unnest(v_ids, v_attempts, v_leases) AS d(id, attempt, lease_until)
           LEFT JOIN queue.jobs j ON j.id = d.id AND j.status = 'processing'
           LEFT JOIN LATERAL (SELECT x.attempts, x.lease_until
                                FROM queue.jobs x
                               WHERE x.id = j.id AND x.status = 'processing'
                                 FOR SHARE SKIP LOCKED) l ON true
          WHERE (j.id IS NULL OR l.attempts IS NOT NULL) AND d.id <> ALL (v_lapsed);
    END IF;
    RETURN jsonb_build_object('retried', v_retried, 'expired', v_expired);
END;
$$;

/*
 * queue.retention: how long final jobs are kept (GUC queue.retention).
 */
CREATE FUNCTION queue.retention() RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('queue.retention', true), ''), '7 days')::interval;
$$;

/*
 * queue.delete_jobs: delete these jobs, live or final, never processing
 * ones (a processing job belongs to its worker). Final jobs that ran leave
 * their run and wait times in queue.job_times, so queue_metrics does not
 * change when history is deleted; deleted waiting jobs leave the counters.
 * Returns how many were deleted, the serial groups they belonged to, and
 * the deleted waiting jobs that others depend on (parents), whose
 * dependents the caller must cancel, and the batches of the deleted waiting
 * jobs (one entry per job), which the caller must count down. The edges
 * into deleted jobs go too.
 */
CREATE FUNCTION queue.delete_jobs(p_ids bigint[], OUT deleted bigint, OUT groups text[], OUT parents bigint[],
                                  OUT batches bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_gone bigint[];
BEGIN
    WITH gone_live AS (
        DELETE FROM queue.jobs j
         WHERE j.id = ANY (p_ids) AND j.status <> 'processing'
        RETURNING j.id, j.serial_group, j.has_children, j.batch_id,
                  queue.tally(j.queue, j.priority, j.status::text, NULL)
    ), gone_final AS (
        DELETE FROM queue.finished_jobs j
         WHERE j.id = ANY (p_ids)
        RETURNING j.id, j.queue, j.status, j.serial_group, j.run_at, j.started_at, j.finished_at,
                  queue.tally(j.queue, j.priority, j.status::text, NULL)
    ), archived AS (
        INSERT INTO queue.job_times (queue, finished_minute, completed, failed, expired, run_ms, wait_ms)
        SELECT g.queue, date_bin('1 minute', g.finished_at, timestamptz '2000-01-01 00:00:00+00'),
               count(*) FILTER (WHERE g.status = 'completed'),
               count(*) FILTER (WHERE g.status = 'failed'),
               count(*) FILTER (WHERE g.status = 'expired'),
               array_agg(date_part('epoch', g.finished_at - g.started_at) * 1000),
               array_agg(date_part('epoch', g.started_at - g.run_at) * 1000)
          FROM gone_final g
         WHERE g.status IN ('completed', 'failed', 'expired') AND g.started_at IS NOT NULL
         GROUP BY 1, 2
    ), gone AS (
        SELECT l.id, l.serial_group, l.has_children, l.batch_id FROM gone_live l
        UNION ALL
        SELECT f.id, f.serial_group, false, NULL::bigint FROM gone_final f
    )
    SELECT count(*), array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL),
           array_agg(g.id) FILTER (WHERE g.has_children), array_agg(g.id),
           array_agg(g.batch_id) FILTER (WHERE g.batch_id IS NOT NULL)
      INTO deleted, groups, parents, v_gone, batches
      FROM gone g;
    IF deleted > 0 AND EXISTS (SELECT FROM queue.job_deps) THEN
        DELETE FROM queue.job_deps d WHERE d.child = ANY (v_gone);
    END IF;
END;
$$;

/*
 * queue.prune_finished: delete at most p_batch final jobs whose retention
 * ran out (any of them: the next pass takes the rest), and archived job
 * times older than queue.metrics_retention.
 *
 * Two kinds of final jobs, each found through its own index, oldest first:
 * - those of a queue with a retention of its own (keep_for, captured at
 *   push): finished_jobs_keep, one range per distinct keep_for, found by
 *   skipping from one value to the next (a handful of values, whatever the
 *   number of jobs);
 * - the others (keep_for NULL), older than queue.retention: the
 *   finished_at index. Jobs kept longer than queue.retention stay behind
 *   at the old end of that index, so the scan starts where the previous
 *   pass of this session stopped (queue_prune.from, a session setting of
 *   the maintenance worker), and not at the start of the index, where it
 *   would step over every kept job on every pass. Every ten minutes a pass
 *   starts from the beginning instead, for what came in behind the mark (a
 *   transaction that ran longer than the retention, a restored dump); so
 *   does every pass while no job has a keep_for (nothing to step over).
 */
CREATE FUNCTION queue.prune_finished(p_batch int) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count  bigint := 0;
    v_cutoff timestamptz := now() - queue.retention();
    v_from   timestamptz;
    v_swept  timestamptz;
    v_kept_ids bigint[] := '{}';
    v_ids    bigint[];
    v_last   timestamptz;
    v_limit  int;
    v_kept   boolean;
BEGIN
    -- Jobs with a retention of their own, per distinct keep_for.
    v_kept := EXISTS (SELECT FROM queue.finished_jobs WHERE keep_for IS NOT NULL);
    IF v_kept THEN
        v_kept_ids := ARRAY(
            WITH RECURSIVE kept(keep_for) AS (
                (SELECT f.keep_for FROM queue.finished_jobs f
                  WHERE f.keep_for IS NOT NULL ORDER BY f.keep_for LIMIT 1)
                UNION ALL
                SELECT (SELECT f.keep_for FROM queue.finished_jobs f
                         WHERE f.keep_for IS NOT NULL AND f.keep_for > k.keep_for
                         ORDER BY f.keep_for LIMIT 1)
                  FROM kept k WHERE k.keep_for IS NOT NULL
            )
            SELECT d.id
              FROM kept k,
                   LATERAL (SELECT f.id FROM queue.finished_jobs f
                             WHERE f.keep_for = k.keep_for AND f.finished_at < now() - k.keep_for
                               AND f.keep_for IS NOT NULL
                             ORDER BY f.finished_at LIMIT p_batch) d
             WHERE k.keep_for IS NOT NULL
             LIMIT p_batch);
    END IF;

    -- The others, from this session's mark on.
    v_limit := p_batch - cardinality(v_kept_ids);
    IF v_limit > 0 THEN
        v_from := nullif(current_setting('queue_prune.from', true), '')::timestamptz;
        v_swept := nullif(current_setting('queue_prune.swept', true), '')::timestamptz;
        IF NOT v_kept OR v_from IS NULL OR v_swept IS NULL OR v_swept < now() - interval '10 minutes' THEN
            v_from := '-infinity';
            PERFORM set_config('queue_prune.swept', now()::text, false);
        END IF;
        SELECT array_agg(f.id), max(f.finished_at) INTO v_ids, v_last
          FROM (SELECT f.id, f.finished_at FROM queue.finished_jobs f
                 WHERE f.finished_at >= v_from AND f.finished_at < v_cutoff AND f.keep_for IS NULL
                 ORDER BY f.finished_at
                 LIMIT v_limit) f;
        -- Everything before v_last (a full batch: more may share its time)
        -- or before the cutoff less a minute (less than a batch: the slack
        -- is for commits still under way) goes with this pass.
        PERFORM set_config('queue_prune.from',
            (CASE WHEN coalesce(cardinality(v_ids), 0) >= v_limit THEN v_last
                  ELSE v_cutoff - interval '1 minute' END)::text, false);
    END IF;
    -- Both kinds in one deletion.
    v_ids := v_kept_ids || coalesce(v_ids, '{}');
    IF cardinality(v_ids) > 0 THEN
        SELECT d.deleted INTO v_count FROM queue.delete_jobs(v_ids) d;
    END IF;
    DELETE FROM queue.job_times
     WHERE finished_minute < now() - queue.metrics_retention();
    RETURN v_count;
END;
$$;

/*
 * queue.maintenance_pass: every duty once (promote, expire leases, prune,
 * mark stale workers), one bounded batch each. A duty
 * that fails is logged as a WARNING and rolled back alone (its own
 * subtransaction); the others still run, so one bad row never stops the
 * queue. "more" is true when some duty filled its batch.
 */
CREATE FUNCTION queue.maintenance_pass(p_batch int DEFAULT 1000) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- No JIT for any statement of the pass, as for the claim (queue_pop): with
-- `LIMIT p_batch` unknown, a generic plan over a deep table passes
-- jit_above_cost and would compile on every tick.
SET jit = off AS $$
DECLARE
    v_promoted int := 0;
    v_leases   jsonb := '{"retried": 0, "expired": 0}';
    v_deleted  int := 0;
    v_stale    int := 0;
    v_errors   int := 0;
BEGIN
    BEGIN
        v_promoted := queue.promote_due(p_batch);
    EXCEPTION WHEN OTHERS THEN
        v_errors := v_errors + 1;
        RAISE WARNING 'queue: promoting due jobs failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    BEGIN
        PERFORM queue.rebuild_lease_book();
    EXCEPTION WHEN OTHERS THEN
        v_errors := v_errors + 1;
        RAISE WARNING 'queue: rebuilding the lease book failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    BEGIN
        v_leases := queue.expire_leases(p_batch);
    EXCEPTION WHEN OTHERS THEN
        v_errors := v_errors + 1;
        RAISE WARNING 'queue: expiring leases failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    BEGIN
        v_deleted := queue.prune_finished(p_batch);
    EXCEPTION WHEN OTHERS THEN
        v_errors := v_errors + 1;
        RAISE WARNING 'queue: deleting old jobs failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    BEGIN
        v_stale := queue.mark_stale_workers();
    EXCEPTION WHEN OTHERS THEN
        v_errors := v_errors + 1;
        RAISE WARNING 'queue: marking stale workers failed: % (SQLSTATE %)', SQLERRM, SQLSTATE;
    END;
    RETURN jsonb_build_object(
        'promoted', v_promoted,
        'retried', (v_leases ->> 'retried')::int,
        'expired', (v_leases ->> 'expired')::int,
        'deleted', v_deleted,
        'stale_workers', v_stale,
        'errors', v_errors,
        'more', v_promoted >= p_batch OR (v_leases ->> 'retried')::int
                + (v_leases ->> 'expired')::int >= p_batch OR v_deleted >= p_batch);
END;
$$;

/*
 * queue_tick: by hand, the same code the background services run: the
 * maintenance pass until no duty has more to do, then the scheduler pass
 * (fire due schedules). Returns what it did. Without shared_preload_libraries
 * this is how delayed jobs, leases and schedules move (e.g. from cron).
 */
CREATE FUNCTION @extschema@.queue_tick() RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pass  jsonb;
    v_total jsonb := '{"promoted": 0, "retried": 0, "expired": 0, "deleted": 0, "stale_workers": 0, "errors": 0}';
    v_key   text;
BEGIN
    -- The duties rely on each statement seeing what committed before it (the
    -- lease book's settling, the recount); a transaction snapshot would not.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_transaction_state',
            MESSAGE = format('queue_tick() runs only in READ COMMITTED, not in %s',
                             upper(current_setting('transaction_isolation'))),
            HINT = 'Call it in a transaction of its own at the default isolation level.';
    END IF;
    -- Each pass would fail with a warning of its own and the call return
    -- counts: refuse at once instead.
    IF current_setting('transaction_read_only')::boolean THEN
        RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction',
            MESSAGE = CASE WHEN pg_is_in_recovery() THEN 'queue_tick() cannot run on a standby'
                           ELSE 'queue_tick() cannot run in a read-only transaction' END,
            HINT = CASE WHEN pg_is_in_recovery()
                        THEN 'Jobs are promoted, expired and scheduled on the primary: run it there.'
                        ELSE 'Call it in a read-write transaction.' END;
    END IF;
    LOOP
        v_pass := queue.maintenance_pass();
        FOREACH v_key IN ARRAY ARRAY['promoted', 'retried', 'expired', 'deleted', 'stale_workers', 'errors'] LOOP
            v_total := jsonb_set(v_total, ARRAY[v_key],
                                 to_jsonb((v_total ->> v_key)::int + (v_pass ->> v_key)::int));
        END LOOP;
        EXIT WHEN NOT (v_pass ->> 'more')::boolean;
    END LOOP;
    PERFORM queue.stats_pass();
    LOOP
        v_pass := queue.scheduler_pass();
        v_total := v_total || jsonb_build_object('fired',
            coalesce((v_total ->> 'fired')::int, 0) + (v_pass ->> 'fired')::int);
        EXIT WHEN NOT (v_pass ->> 'more')::boolean;
    END LOOP;
    RETURN v_total;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_tick() IS
'Run the background services'' passes by hand: promote due jobs, expire leases, delete old final jobs, fire due schedules. Returns counts: promoted, retried, expired, deleted, errors, fired.';

-- A new installation starts a new book: job ids start again at 1, and the
-- entries of a dropped installation must not stand for them.
SELECT queue.leases_reset();
