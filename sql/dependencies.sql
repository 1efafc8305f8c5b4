-- Job dependencies: a job pushed with depends_on runs only once every job it
-- depends on has completed (docs/workflows.md).
--
-- The invariant lives in the rows: a child is `blocked` exactly while its
-- blocked_by count is above 0, and blocked is in no claim index, so the
-- claim never sees it. Each edge (queue.job_deps) is resolved once, by the
-- statement that moves its parent to a final status, and the count moves in
-- the same statement under the child's row lock: two parents finishing at
-- once serialize on that lock and the child is released exactly once.
-- A parent is flagged (has_children) by the push of its first child, under
-- the parent's row lock, so a finish that races a push either sees the flag
-- or finishes first, and then the push finds the parent final. Jobs that
-- use none of this carry blocked_by = 0 and has_children = false and pay
-- nothing more.

/*
 * queue.lock_deps: what a push's dependencies mean for the child, before
 * the child exists. Takes the dependencies as given (one-dimensional, no
 * NULL, at most 100,000 of them; 22023 otherwise), locks the live
 * ones in id order (so two pushes never deadlock on them) and flags them as
 * having children. A dependency that is not live must be final: completed
 * (or ended otherwise, with run_anyway) resolves at once; failed, expired
 * or cancelled without run_anyway means the child is cancelled at once
 * (dead names the first such). An id that is neither live nor final, or
 * of a queue a confined caller may neither produce into nor work, is
 * refused (22023), so that ids reveal nothing of another team's jobs.
 */
CREATE FUNCTION queue.lock_deps(p_parents bigint[], p_run_anyway boolean,
                                OUT parents bigint[], OUT resolved boolean[], OUT blocked_by int,
                                OUT dead bigint, OUT dead_status text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_live    bigint[];
    v_flag    bigint[];
    v_final   record;
    v_unknown bigint;
    v_dead    bigint[];
    v_round   int := 0;
BEGIN
    IF coalesce(array_ndims(p_parents), 1) > 1 OR array_position(p_parents, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'depends_on must be a one-dimensional array of job ids without NULL',
            HINT = 'Pass the ids queue_push returned for the jobs this one waits for, e.g. ARRAY[41, 42].';
    END IF;
    parents := ARRAY(SELECT DISTINCT p FROM unnest(p_parents) AS p ORDER BY 1);
    PERFORM queue.check_count('depends_on', cardinality(parents), 100000,
        'A job may depend on at most 100,000 jobs; let it depend on a job that depends on the rest.');
    IF queue.rules_exist() THEN
        -- Live or final: a dependency may be either. Depending on a job
        -- locks it and marks it (below), which would stall its claim while
        -- this push's transaction lasts: a confined role may depend only on
        -- jobs of queues it may produce into or work, not merely read.
        SELECT min(p) INTO v_unknown
          FROM (SELECT queue.access_patterns(queue.caller(), 'produce') AS produce,
                       queue.access_patterns(queue.caller(), 'work') AS work OFFSET 0) a,
               unnest(parents) AS p
         WHERE NOT EXISTS (SELECT FROM queue.all_jobs j
                            WHERE j.id = p AND (queue.access_allows(a.produce, j.queue)
                                                OR queue.access_allows(a.work, j.queue)));
        IF v_unknown IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('depends_on names an unknown job: %s', v_unknown),
                HINT = 'A dependency must be a job of a queue you may produce into or work, live or still in history.';
        END IF;
    END IF;
    LOOP
        -- Live dependencies, locked so that none can finish before this
        -- transaction commits (a finish waits, then sees the flag).
        SELECT coalesce(array_agg(l.id), '{}'), array_agg(l.id) FILTER (WHERE NOT l.has_children)
          INTO v_live, v_flag
          FROM (SELECT j.id, j.has_children FROM queue.jobs j
                 WHERE j.id = ANY (parents) ORDER BY j.id FOR NO KEY UPDATE) l;
        IF v_flag IS NOT NULL THEN
            UPDATE queue.jobs j SET has_children = true WHERE j.id = ANY (v_flag);
        END IF;
        -- The others must be final. A later statement, so a finish that
        -- committed while the lock above waited is seen here.
        resolved := '{}';
        blocked_by := 0;
        dead := NULL;
        v_dead := '{}';
        v_unknown := NULL;
        -- Each is locked (FOR KEY SHARE) against a retry that would revive
        -- it before this push's edges are seen.
        FOR v_final IN
            SELECT p.id, f.status
              FROM unnest(parents) WITH ORDINALITY AS p(id, n)
              LEFT JOIN LATERAL (SELECT f.status FROM queue.finished_jobs f
                                  WHERE f.id = p.id FOR KEY SHARE) f ON true
             WHERE p.id <> ALL (v_live)
             ORDER BY p.n
        LOOP
            IF v_final.status IS NULL THEN
                v_unknown := coalesce(v_unknown, v_final.id);
            ELSIF v_final.status <> 'completed' AND NOT p_run_anyway THEN
                v_dead := v_dead || v_final.id;
                IF dead IS NULL THEN
                    dead := v_final.id;
                    dead_status := v_final.status::text;
                END IF;
            END IF;
        END LOOP;
        -- A dependency being retried at this moment is neither: look again.
        EXIT WHEN v_unknown IS NULL OR v_round = 2;
        v_round := v_round + 1;
    END LOOP;
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('depends_on names an unknown job: %s', v_unknown),
            HINT = 'A dependency must be a job of a queue you may produce into or work, live or still in history (with queue.keep_completed off, a completed job leaves none).';
    END IF;
    -- Resolved: completed, or ended with run_anyway. A dead edge stays
    -- open: it blocks the child again if the child is revived.
    resolved := ARRAY(SELECT p <> ALL (v_live) AND p <> ALL (v_dead) FROM unnest(parents) AS p);
    blocked_by := cardinality(v_live);
END;
$$;

/*
 * queue.add_edges: the edges from the dependencies queue.lock_deps locked
 * to newly pushed children (blocked, or pushed as usual when nothing
 * blocks them). Children with a dead dependency are cancelled at once,
 * naming it, and that edge remembers why, so that retrying the dependency
 * brings them back.
 */
CREATE FUNCTION queue.add_edges(p_children bigint[], p_deps record, p_run_anyway boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO queue.job_deps (parent, child, run_anyway, resolved, cancelled_child)
    SELECT p.id, c.id, p_run_anyway, p.resolved, p.id IS NOT DISTINCT FROM p_deps.dead
      FROM unnest(p_deps.parents::bigint[], p_deps.resolved::boolean[]) AS p(id, resolved),
           unnest(p_children) AS c(id);
    IF p_deps.dead IS NOT NULL THEN
        PERFORM queue.finish_jobs(p_children, '{blocked}', 'cancelled', NULL, NULL,
            format('dependency %s ended %s', p_deps.dead, p_deps.dead_status), false);
    END IF;
END;
$$;

/*
 * queue.unblock: resolve the open edges of these parents (all of them when
 * the parents completed, only the run_anyway ones when they ended
 * otherwise) and count them down on their blocked children, one statement
 * for both tables. A child reaching 0 becomes pending (scheduled while its
 * run_at is ahead) and joins its serial group's line, and its queue is
 * woken: in this transaction, so it is claimable once the last
 * dependency's finish commits. The child's row lock orders two parents
 * finishing at once: the second decrement re-reads the first's result.
 * O(edges of these parents), no scan.
 */
CREATE FUNCTION queue.unblock(p_parents bigint[], p_run_anyway_only boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queues text[];
    v_groups text[];
BEGIN
    WITH edges AS (
        UPDATE queue.job_deps d SET resolved = true
         WHERE d.parent = ANY (p_parents) AND NOT d.resolved
           AND (d.run_anyway OR NOT p_run_anyway_only)
        RETURNING d.child
    ), counts AS (
        SELECT e.child, count(*)::int AS n FROM edges e GROUP BY e.child
    ), released AS (
        UPDATE queue.jobs j
           SET blocked_by = j.blocked_by - c.n,
               status = CASE WHEN j.blocked_by > c.n THEN 'blocked'
                             WHEN j.run_at > now() THEN 'scheduled'
                             ELSE 'pending' END::queue.job_status,
               group_waiting = j.blocked_by <= c.n AND j.run_at <= now() AND j.serial_group IS NOT NULL
          FROM counts c
         WHERE j.id = c.child AND j.status = 'blocked'
        RETURNING j.queue, j.serial_group, j.status,
                  CASE WHEN j.status <> 'blocked'
                       THEN queue.tally(j.queue, j.priority, 'blocked', j.status::text) END
    )
    SELECT array_agg(DISTINCT r.queue) FILTER (WHERE r.status = 'pending' AND r.serial_group IS NULL),
           array_agg(DISTINCT r.serial_group) FILTER (WHERE r.status = 'pending' AND r.serial_group IS NOT NULL)
      INTO v_queues, v_groups
      FROM released r;
    PERFORM queue.announce(v_queues, v_groups);
END;
$$;

/*
 * queue.release_children: these parents just became final with p_status
 * (called by every finish, only when a moved job has children). Completed:
 * their children count down (queue.unblock). Failed, expired or cancelled:
 * run_anyway children count down; the others are cancelled, naming the
 * parent, and so are their own children, level by level (a loop, not a
 * recursion, so a chain of any length cannot exhaust the stack). Each
 * cancelled child's edge remembers the cause for queue.revive_children.
 */
CREATE FUNCTION queue.release_children(p_parents bigint[], p_status queue.job_status) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_root    bigint;
    v_level   bigint[];
    v_victims bigint[];
BEGIN
    PERFORM queue.unblock(p_parents, p_status <> 'completed');
    IF p_status = 'completed' THEN
        RETURN;
    END IF;
    FOREACH v_root IN ARRAY p_parents LOOP
        v_level := ARRAY[v_root];
        LOOP
            -- The blocked children of this level on edges that block,
            -- locked in id order.
            SELECT array_agg(c.id)
              INTO v_victims
              FROM (SELECT c.id FROM queue.jobs c
                     WHERE c.id = ANY (ARRAY(SELECT d.child FROM queue.job_deps d
                                              WHERE d.parent = ANY (v_level)
                                                AND NOT d.resolved AND NOT d.run_anyway))
                       AND c.status = 'blocked'
                     ORDER BY c.id
                       FOR UPDATE) c;
            EXIT WHEN v_victims IS NULL;
            UPDATE queue.job_deps d SET cancelled_child = true
             WHERE d.parent = ANY (v_level) AND d.child = ANY (v_victims)
               AND NOT d.resolved AND NOT d.run_anyway;
            PERFORM queue.finish_jobs(v_victims, '{blocked}', 'cancelled', NULL, NULL,
                format('dependency %s ended %s', v_root, p_status), false);
            -- The next level: what depended on the jobs just cancelled.
            v_level := ARRAY(SELECT DISTINCT d.parent FROM queue.job_deps d WHERE d.parent = ANY (v_victims));
            EXIT WHEN cardinality(v_level) = 0;
            PERFORM queue.unblock(v_level, true);
        END LOOP;
    END LOOP;
END;
$$;

/*
 * queue.revive_children: these jobs were just retried (queue.revive_jobs);
 * bring back the children they cancelled, and theirs, level by level.
 * A revived child is blocked again, counting its dependencies that have
 * not completed (the retried one among them). A child that still has
 * another dead dependency stays cancelled, and that dependency's edge
 * takes over the cause, so retrying it revives the child.
 */
CREATE FUNCTION queue.revive_children(p_parents bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_level   bigint[] := p_parents;
    v_cands   bigint[];
    v_batches bigint[];
BEGIN
    LOOP
        WITH cleared AS (
            UPDATE queue.job_deps d SET cancelled_child = false
             WHERE d.parent = ANY (v_level) AND d.cancelled_child
            RETURNING d.child
        )
        SELECT array_agg(DISTINCT c.child) INTO v_cands FROM cleared c;
        EXIT WHEN v_cands IS NULL;
        -- Still dead elsewhere: the cause moves to that edge.
        UPDATE queue.job_deps d SET cancelled_child = true
          FROM queue.finished_jobs p
         WHERE d.child = ANY (v_cands) AND p.id = d.parent
           AND NOT d.resolved AND NOT d.run_anyway
           AND p.status IN ('failed', 'expired', 'cancelled');
        WITH back AS (
            DELETE FROM queue.finished_jobs f
             WHERE f.id = ANY (v_cands) AND f.status = 'cancelled'
               AND NOT EXISTS (SELECT FROM queue.job_deps d
                                WHERE d.child = f.id AND d.cancelled_child)
            RETURNING f.*
        ), revived AS (
            INSERT INTO queue.jobs AS j
                   (id, queue, status, priority, group_waiting, serial_group, run_at,
                    max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                    dedupe_key, payload, created_at, blocked_by, has_children, tags, batch_id, keep_for)
            SELECT b.id, b.queue, 'blocked', b.priority, false, b.serial_group, b.run_at,
                   b.max_attempts, b.timeout, b.backoff_base, b.backoff_max, b.retry_delays,
                   b.dedupe_key, b.payload, b.created_at,
                   (SELECT count(*) FROM queue.job_deps d WHERE d.child = b.id AND NOT d.resolved),
                   b.has_children, b.tags, b.batch_id, b.keep_for
              FROM back b
            RETURNING j.id, j.has_children, j.batch_id, queue.tally(j.queue, j.priority, 'cancelled', 'blocked')
        )
        SELECT coalesce(array_agg(r.id) FILTER (WHERE r.has_children), '{}'),
               array_agg(r.batch_id) FILTER (WHERE r.batch_id IS NOT NULL)
          INTO v_level, v_batches FROM revived r;
        IF v_batches IS NOT NULL THEN
            PERFORM queue.batch_revived(v_batches, 'cancelled');
        END IF;
        EXIT WHEN cardinality(v_level) = 0;
    END LOOP;
END;
$$;

------------------------------------------------------------------------------
-- Public functions
------------------------------------------------------------------------------

/*
 * queue_dependencies: the jobs one job depends on, with their status and
 * result: what a dependent's handler reads to combine its inputs. Only
 * dependencies of queues the caller may read are shown (and nothing for a
 * job the caller may not read); a completed dependency whose history is
 * gone (retention, or queue.keep_completed off) shows status NULL.
 */
CREATE FUNCTION @extschema@.queue_dependencies(id bigint)
RETURNS TABLE (dependency bigint, queue text, status text, result jsonb, finished_at timestamptz,
               resolved boolean, run_anyway boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.parent, p.queue::text, p.status::text, p.result, p.finished_at, d.resolved, d.run_anyway
      FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a
      JOIN queue.job_deps d ON d.child = $1
      LEFT JOIN queue.all_jobs p ON p.id = d.parent
     WHERE queue.access_allows(a.patterns, (SELECT c.queue FROM queue.all_jobs c WHERE c.id = $1))
       AND (p.queue IS NULL OR queue.access_allows(a.patterns, p.queue))
     ORDER BY d.parent;
$$;
COMMENT ON FUNCTION @extschema@.queue_dependencies(bigint) IS
'The jobs a job depends on (depends_on of queue_push): dependency (its id), queue, status, result, finished_at, resolved (no longer blocks), run_anyway. A handler reads its inputs with it.';
