-- queue 0.1.0 -> 0.2.0: security.
--
-- What changes, in the order of this file (besides the launcher that serves
-- every database, which needs two new internal functions):
--   1. every argument within a documented range and every size within a
--      limit set by a superuser-only setting (queue.max_payload_size,
--      queue.max_result_size, queue.max_error_size, queue.max_info_size,
--      queue.max_key_length, queue.max_delay, queue.max_lease);
--   2. per-queue access rules (queue_grant_access, queue_revoke_access,
--      queue_access_rules);
--   3. every SQL function pins its search_path, internal ones included;
--   4. the functions that check the new limits and rules;
--   5. queue_progress takes the claim's attempt;
--   6. grants of the new functions; the extension's roles carry a marker;
--      jobs stored by 0.1.0 beyond the new limits are brought within them.
--
-- scripts/upgrade-test.sh proves that a catalog upgraded by this script
-- equals a fresh 0.2.0 install (pg_dump of both) and keeps every job,
-- schedule and counter.
\echo Use "ALTER EXTENSION queue UPDATE TO '0.2.0'" to load this file. \quit

-- Resolve names through the catalog only (see sql/schema.sql).
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);


-- 1. The checks behind the limits and the access rules (Rust). queue.check_push
--    becomes queue.check_push_args: it takes the payload's size, not whether
--    one was given. A new symbol, not a new signature for the old one, so
--    that the 0.1.0 catalog never calls the new code with the old arguments.

DROP FUNCTION queue.check_push(text, text, boolean, interval, timestamptz, integer, interval, interval, interval, interval[], text, integer);

-- Limits depend on settings: no longer immutable.
ALTER FUNCTION queue.check_group_name(text) STABLE;

-- Whether any access rule exists, asked by every public function first
-- (src/access.rs: the EXISTS without the executor).
CREATE  FUNCTION queue."rules_exist"() RETURNS bool /* bool */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rules_exist_wrapper';

-- What a push must do besides the insert, in one call (src/settings.rs):
-- bit 1 an access rule exists, bit 2 some queue may have push defaults.
CREATE  FUNCTION queue."push_mode"() RETURNS INT /* i32 */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'push_mode_wrapper';

-- A plain push counts its job and wakes its queue in one call, in the
-- INSERT's RETURNING (src/stats.rs).
CREATE  FUNCTION queue."pushed"(
	"queue" TEXT, /* &str */
	"priority" INT /* i32 */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pushed_wrapper';

CREATE  FUNCTION queue."check_push_args"(
	"queue" TEXT, /* Option < & str > */
	"serial_group" TEXT, /* Option < & str > */
	"payload_size" INT, /* Option < i32 > */
	"delay" interval, /* Option < Interval > */
	"run_at" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"max_attempts" INT, /* Option < i32 > */
	"timeout" interval, /* Option < Interval > */
	"backoff_base" interval, /* Option < Interval > */
	"backoff_max" interval, /* Option < Interval > */
	"retry_delays" interval[], /* :: std :: option :: Option < Vec < Option < Interval > > > */
	"dedupe_key" TEXT, /* Option < & str > */
	"priority" INT /* Option < i32 > */
) RETURNS timestamp with time zone /* TimestampWithTimeZone */
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_push_args_wrapper';

CREATE  FUNCTION queue."check_span"(
	"what" TEXT, /* & str */
	"value" interval, /* Option < Interval > */
	"span" TEXT /* & str */
) RETURNS interval /* Option < Interval > */
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_span_wrapper';

CREATE  FUNCTION queue."check_size"(
	"what" TEXT, /* & str */
	"bytes" INT, /* Option < i32 > */
	"kind" TEXT /* & str */
) RETURNS void
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_size_wrapper';

CREATE  FUNCTION queue."check_key"(
	"what" TEXT, /* & str */
	"value" TEXT /* Option < & '_ str > */
) RETURNS TEXT /* Option < & '_ str > */
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_key_wrapper';

CREATE  FUNCTION queue."check_claim"(
	"worker" TEXT, /* Option < & str > */
	"batch" INT /* Option < i32 > */
) RETURNS INT /* i32 */
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_claim_wrapper';

-- Was a SQL function; a C call is cheaper than a SQL function with a
-- pinned search_path on every ack.
CREATE OR REPLACE FUNCTION queue."keep_completed"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'keep_completed_wrapper';

CREATE  FUNCTION queue."caller"() RETURNS oid /* pg_sys :: Oid */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'caller_wrapper';

-- The size a jsonb payload, result or worker info is held to its limit by:
-- as stored or as printed, whichever is larger (src/validate.rs).
CREATE FUNCTION queue.json_size(jsonb) RETURNS int
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'queue_json_size';

-- The serial groups' and the counters' locks, under lock tags no SQL
-- function can name (src/locks.rs).
CREATE  FUNCTION queue."group_lock"(
	"key" bigint /* i64 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'group_lock_wrapper';

CREATE  FUNCTION queue."group_try_lock"(
	"key" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'group_try_lock_wrapper';

CREATE  FUNCTION queue."counters_lock"(
	"shared" bool /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'counters_lock_wrapper';

CREATE  FUNCTION queue."counters_try_lock"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'counters_try_lock_wrapper';

CREATE  FUNCTION queue."session_role_for"(
	"role" oid /* pg_sys :: Oid */
) RETURNS oid /* Option < pg_sys :: Oid > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'session_role_for_wrapper';

CREATE  FUNCTION queue."intersect_patterns"(
	"a" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"b" TEXT[] /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS TEXT[] /* :: std :: option :: Option < Vec < String > > */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'intersect_patterns_wrapper';

CREATE  FUNCTION queue."rule_binds"(
	"role" oid, /* pg_sys :: Oid */
	"rule_role" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rule_binds_wrapper';

CREATE  FUNCTION queue."access_allows"(
	"patterns" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"queue" TEXT /* Option < & str > */
) RETURNS bool /* bool */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'access_allows_wrapper';

CREATE  FUNCTION queue."access_allows_group"(
	"patterns" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"serial_group" TEXT /* Option < & str > */
) RETURNS bool /* bool */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'access_allows_group_wrapper';

CREATE  FUNCTION queue."check_access_pattern"(
	"pattern" TEXT /* Option < & str > */
) RETURNS TEXT /* & str */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_access_pattern_wrapper';


-- The launcher serves every database that has the extension (src/launcher.rs):
-- CREATE EXTENSION and this upgrade tell it, and queue_health asks it why a
-- database is not served.
CREATE  FUNCTION queue."announce_database"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'announce_database_wrapper';

CREATE  FUNCTION queue."service_problem"() RETURNS TEXT /* Option < String > */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'service_problem_wrapper';

-- queue_pop can wait inside the server (src/wakeup.rs, waiting).
CREATE  FUNCTION queue."wait_register"(
	"queue" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_register_wrapper';

CREATE  FUNCTION queue."wait_sleep"(
	"until" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_sleep_wrapper';

CREATE  FUNCTION queue."wait_done"(
	"queue" TEXT, /* & str */
	"pass_on" bool /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_done_wrapper';

-- 2. Per-queue access rules (sql/access.sql, all new).

CREATE TABLE queue.access_rules (
    role_oid   oid NOT NULL,
    access     text NOT NULL CHECK (access IN ('produce', 'work', 'read')),
    pattern    text COLLATE "C" NOT NULL,
    granted_by name NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_oid, access, pattern)
);

/*
 * queue.role_patterns: the queue patterns the rules binding p_role give it
 * for p_access, or NULL when p_role is bound by no rule at all (not
 * confined). For 'read' it is every pattern of every kind: a role may read
 * what it produces or works. An empty array means confined with nothing
 * allowed for this kind.
 */
CREATE FUNCTION queue.role_patterns(p_role oid, p_access text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN count(*) = 0 THEN NULL
                ELSE coalesce(array_agg(r.pattern) FILTER (WHERE r.access = p_access OR p_access = 'read'),
                              '{}') END
      FROM queue.access_rules r
     WHERE queue.rule_binds(p_role, r.role_oid);
$$;

/*
 * queue.access_patterns: the queue patterns p_role may use for p_access
 * (NULL: not confined). For the caller of this session that is what both
 * its own rules and those of the role the session logged in as allow
 * (queue.session_role_for): a confined login that took another role with
 * SET ROLE (queue_worker, say, which no rule binds) stays confined. A
 * NOINHERIT login is an authenticator (PostgREST's pattern): it holds no
 * privilege of its own and acts only through the role it takes, so that
 * role's rules apply alone.
 */
CREATE FUNCTION queue.access_patterns(p_role oid, p_access text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s.session_role IS NULL THEN queue.role_patterns(p_role, p_access)
                ELSE queue.intersect_patterns(queue.role_patterns(p_role, p_access),
                                              queue.role_patterns(s.session_role, p_access)) END
      FROM (SELECT (SELECT r.oid FROM pg_roles r
                     WHERE r.oid = queue.session_role_for(p_role) AND r.rolinherit) AS session_role) s;
$$;

/*
 * queue.check_access: raise 42501 unless p_role may act on p_queue for
 * p_access (and, for producing, use p_group). Returns nothing; the callers
 * call it only when some rule exists (an EXISTS on the small rules table),
 * so a database without rules pays one probe per call.
 */
CREATE FUNCTION queue.check_access(p_role oid, p_access text, p_queue text, p_group text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_patterns text[] := queue.access_patterns(p_role, p_access);
BEGIN
    IF p_queue IS NOT NULL AND NOT queue.access_allows(v_patterns, p_queue) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('role %s may not %s queue "%s"', pg_get_userbyid(p_role), p_access, p_queue),
            HINT = format('Its %s rules allow: %s. An admin adds one with queue_grant_access.',
                          p_access, coalesce(nullif(array_to_string(v_patterns, ', '), ''), 'no queue'));
    END IF;
    IF NOT queue.access_allows_group(v_patterns, p_group) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('role %s may not use serial group "%s"', pg_get_userbyid(p_role), p_group),
            HINT = 'A confined producer''s serial groups are named like its queues: the queue name, or the queue name, '':'' and anything.';
    END IF;
END;
$$;

/*
 * queue.scope: the patterns the caller may use for p_access, NULL when no
 * rule binds it (or no rule exists at all: one probe of the rules table).
 * Given a queue (and a serial group), raises 42501 when they are outside.
 * Listing functions filter their rows with queue.access_allows(scope, queue).
 */
CREATE FUNCTION queue.scope(p_access text, p_queue text DEFAULT NULL, p_group text DEFAULT NULL)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_patterns text[];
BEGIN
    IF NOT queue.rules_exist() THEN
        RETURN NULL;
    END IF;
    v_patterns := queue.access_patterns(queue.caller(), p_access);
    IF p_queue IS NOT NULL OR p_group IS NOT NULL THEN
        PERFORM queue.check_access(queue.caller(), p_access, p_queue, p_group);
    END IF;
    RETURN v_patterns;
END;
$$;

/*
 * queue.job_allowed: whether p_role may act (p_access) on the job p_id. A
 * job that does not exist is allowed to an unconfined role (the caller then
 * finds nothing itself) and refused to a confined one, which so learns
 * nothing either way. For the by-id functions of confined roles.
 */
CREATE FUNCTION queue.job_allowed(p_role oid, p_access text, p_id bigint) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(queue.access_allows(queue.access_patterns(p_role, p_access),
                                        (SELECT j.queue FROM queue.all_jobs j WHERE j.id = p_id)),
                    true);
$$;

/*
 * queue.allowed_ids: those of p_ids that p_role may act on (p_access), for
 * the batch functions of confined roles.
 */
CREATE FUNCTION queue.allowed_ids(p_role oid, p_access text, p_ids bigint[]) RETURNS bigint[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(j.id), '{}')
      FROM queue.jobs j
     WHERE j.id = ANY (p_ids)
       AND queue.access_allows(queue.access_patterns(p_role, p_access), j.queue);
$$;

------------------------------------------------------------------------------
-- Public functions (queue_admin)
------------------------------------------------------------------------------

/*
 * queue.check_may_change_rules: raise 42501 when the caller is itself
 * confined: a confined admin could otherwise lift its own confinement.
 */
CREATE FUNCTION queue.check_may_change_rules() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue.access_patterns(queue.caller(), 'read') IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('role %s is confined by access rules and may not change them',
                             pg_get_userbyid(queue.caller())),
            HINT = 'Ask an unconfined queue_admin or a superuser.';
    END IF;
END;
$$;

/*
 * queue_grant_access: allow a role (and its members) to produce, work or
 * read the queues a pattern matches. The first rule of a role confines it.
 * Returns false when the rule existed already.
 */
CREATE FUNCTION @extschema@.queue_grant_access(role regrole, access text, pattern text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_pattern text := queue.check_access_pattern(pattern);
BEGIN
    PERFORM queue.check_may_change_rules();
    IF role IS NULL OR access IS NULL OR access NOT IN ('produce', 'work', 'read') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid access rule: role %s, access %s',
                             coalesce(role::text, 'NULL'), coalesce(quote_literal(access), 'NULL')),
            HINT = 'Name an existing role and one of produce, work, read.';
    END IF;
    INSERT INTO queue.access_rules (role_oid, access, pattern, granted_by)
    VALUES (role, access, v_pattern, pg_get_userbyid(queue.caller()))
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_grant_access(regrole, text, text) IS
'Confine a role (and its members) to queues: it may produce, work or read only the queues its rules match. pattern is a queue name or a prefix followed by *. False when the rule existed.';

/*
 * queue_revoke_access: remove rules of a role: one (access and pattern
 * given), those of one access, or all. A role left with no rule is no
 * longer confined. Returns how many rules went.
 */
CREATE FUNCTION @extschema@.queue_revoke_access(role regrole, access text DEFAULT NULL, pattern text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_count bigint;
BEGIN
    PERFORM queue.check_may_change_rules();
    DELETE FROM queue.access_rules r
     WHERE r.role_oid = role
       AND (access IS NULL OR r.access = access)
       AND (pattern IS NULL OR r.pattern = pattern);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION @extschema@.queue_revoke_access(regrole, text, text) IS
'Remove access rules of a role (one, those of one access, or all); a role left with none is no longer confined. Returns how many went.';

CREATE FUNCTION @extschema@.queue_access_rules()
RETURNS TABLE (role text, access text, pattern text, granted_by name, granted_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pg_get_userbyid(r.role_oid)::text, r.role_oid::text), r.access, r.pattern::text,
           r.granted_by, r.granted_at
      FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a, queue.access_rules r
     -- A confined admin sees the rules that bind it, not every team's
     -- patterns (and so their queue names).
     WHERE a.patterns IS NULL
        OR queue.rule_binds(queue.caller(), r.role_oid)
        OR queue.rule_binds(coalesce(queue.session_role_for(queue.caller()), queue.caller()), r.role_oid)
     ORDER BY 1, 2, 3;
$$;
COMMENT ON FUNCTION @extschema@.queue_access_rules() IS
'Every access rule: role, access (produce, work, read), pattern, granted_by, granted_at. A confined caller sees the rules that bind it.';


-- 3. Every function pins its search_path. These keep their bodies.

ALTER FUNCTION queue.announce(text[],text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.expire_leases(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.forget_jobs(bigint[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.group_elect(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.maintenance_pass(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.mark_stale_workers() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.metrics_retention() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.oldest_pending(text[],integer[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.owner_may_push(name) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.priority_label(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.processing_jobs(timestamp with time zone) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.promote_due(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.prune_finished(integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.release_groups(text[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.retention() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.revive_jobs(bigint[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION queue.scheduler_pass(integer) SET search_path = pg_catalog, pg_temp;
-- The group elections read jobs_group_next in order whatever the statistics
-- or the session's settings say (as queue_pop, below).
ALTER FUNCTION queue.group_elect(text) SET enable_indexscan = on;
ALTER FUNCTION queue.group_elect(text) SET enable_bitmapscan = off;
ALTER FUNCTION queue.group_elect(text) SET enable_seqscan = off;
ALTER FUNCTION queue.release_groups(text[]) SET enable_indexscan = on;
ALTER FUNCTION queue.release_groups(text[]) SET enable_bitmapscan = off;
ALTER FUNCTION queue.release_groups(text[]) SET enable_seqscan = off;

-- stats_rows reads one queue's rows by the primary key when asked for one.
DROP FUNCTION queue.stats_rows();
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
               last_activity timestamptz)
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
           max(r.last_activity)
      FROM (SELECT s.queue, s.priority, s.scheduled, s.pending, s.processing, s.retrying,
                   s.pushed, s.popped, s.completed, s.failed, s.expired, s.cancelled,
                   s.retried, s.deleted, s.last_activity
              FROM queue.stats s
             WHERE p_queue IS NULL OR s.queue = p_queue COLLATE "C"
            UNION ALL
            SELECT u.queue, u.priority, u.counts[1], u.counts[2], u.counts[3], u.counts[4],
                   u.counts[5], u.counts[6], u.counts[7], u.counts[8], u.counts[9],
                   u.counts[10], u.counts[11], u.counts[12], u.last_activity
              FROM queue.stats_unflushed() u
             WHERE p_queue IS NULL OR u.queue = p_queue) r
     GROUP BY r.queue, r.priority;
END;
$$;

-- 4. Functions with new checks (limits, access rules, attempt) or an
--    inlined queue.ms, in the order of the source files.

CREATE OR REPLACE FUNCTION queue.finish_jobs(p_ids bigint[], p_from queue.job_status[], p_status queue.job_status,
                                  p_attempt int, p_result jsonb, p_error text)
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
BEGIN
    IF p_status = 'completed' AND NOT queue.keep_completed() THEN
        WITH gone AS (
            DELETE FROM queue.jobs j
             WHERE j.id = ANY (p_ids) AND j.status = ANY (p_from)
               AND (p_attempt IS NULL OR j.attempts = p_attempt)
            RETURNING j.queue, j.serial_group, j.run_at, j.started_at,
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
        SELECT count(*), array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL)
          INTO v_finished, v_groups
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
                    created_at, started_at, finished_at)
            SELECT m.id, m.queue, p_status, m.priority, false, m.serial_group, m.run_at, NULL,
                   m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
                   m.dedupe_key, m.payload,
                   CASE WHEN p_status = 'failed' THEN p_error ELSE coalesce(p_error, m.last_error) END,
                   p_result, m.progress, m.worker,
                   m.created_at, m.started_at, now()
              FROM moved m
            RETURNING serial_group
        )
        SELECT count(*), array_agg(DISTINCT k.serial_group) FILTER (WHERE k.serial_group IS NOT NULL)
          INTO v_finished, v_groups
          FROM kept k;
    END IF;
    IF v_groups IS NOT NULL THEN
        PERFORM queue.release_groups(v_groups);
    END IF;
    RETURN v_finished;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_push(
    queue text, payload jsonb DEFAULT '{}', priority int DEFAULT 0,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT 3,
    timeout interval DEFAULT '5 minutes',
    backoff_base interval DEFAULT '10 seconds', backoff_max interval DEFAULT '1 hour',
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    -- Every argument is checked by this one call (see queue.check_push_args).
    v_run_at timestamptz := queue.check_push_args(queue_push.queue, queue_push.serial_group,
        pg_column_size(queue_push.payload), queue_push.delay, queue_push.run_at,
        queue_push.max_attempts, queue_push.timeout, queue_push.backoff_base,
        queue_push.backoff_max, queue_push.retry_delays, queue_push.dedupe_key,
        queue_push.priority);
    v_status queue.job_status := CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'pending' END;
    v_id     bigint;
    v_tallied bigint;
BEGIN
    -- Per-queue access (sql/access.sql): one probe when no rule exists.
    IF queue.rules_exist() THEN
        PERFORM queue.scope('produce', queue_push.queue, queue_push.serial_group);
    END IF;
    IF queue_push.dedupe_key IS NULL THEN
        INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, payload)
        VALUES (queue_push.queue, v_status, queue_push.priority,
                queue_push.serial_group IS NOT NULL AND v_status = 'pending',
                queue_push.serial_group, v_run_at, queue_push.max_attempts, queue_push.timeout,
                queue_push.backoff_base, queue_push.backoff_max, queue_push.retry_delays,
                queue_push.payload)
        RETURNING j.id, queue.tally(j.queue, j.priority, NULL, v_status::text) INTO v_id, v_tallied;
    ELSE
        LOOP
            INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                    run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays,
                    dedupe_key, payload)
            VALUES (queue_push.queue, v_status, queue_push.priority,
                    queue_push.serial_group IS NOT NULL AND v_status = 'pending',
                    queue_push.serial_group, v_run_at, queue_push.max_attempts, queue_push.timeout,
                    queue_push.backoff_base, queue_push.backoff_max, queue_push.retry_delays,
                    queue_push.dedupe_key, queue_push.payload)
            ON CONFLICT (queue, dedupe_key) WHERE dedupe_key IS NOT NULL
                DO NOTHING
            RETURNING j.id, queue.tally(j.queue, j.priority, NULL, v_status::text) INTO v_id, v_tallied;
            EXIT WHEN v_id IS NOT NULL;
            -- A live duplicate exists (every job in queue.jobs is live). It
            -- may become final between the two statements; then the next
            -- round inserts.
            SELECT j.id INTO v_id FROM queue.jobs j
             WHERE j.queue = queue_push.queue AND j.dedupe_key = queue_push.dedupe_key;
            IF v_id IS NOT NULL THEN
                RETURN v_id;
            END IF;
        END LOOP;
    END IF;

    IF v_status = 'pending' THEN
        IF queue_push.serial_group IS NULL THEN
            PERFORM queue.wake(queue_push.queue);
        ELSE
            PERFORM queue.group_elect(queue_push.serial_group);
        END IF;
    END IF;
    RETURN v_id;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_push_batch(
    queue text, payloads jsonb[], priority int DEFAULT 0,
    delay interval DEFAULT NULL, run_at timestamptz DEFAULT NULL,
    serial_group text DEFAULT NULL, max_attempts int DEFAULT 3,
    timeout interval DEFAULT '5 minutes',
    backoff_base interval DEFAULT '10 seconds', backoff_max interval DEFAULT '1 hour',
    retry_delays interval[] DEFAULT NULL, dedupe_key text DEFAULT NULL)
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
BEGIN
    IF payloads IS NULL OR array_position(payloads, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'payloads must not be NULL or contain NULL',
            HINT = 'Pass an array of JSON values, e.g. ARRAY[''{"n": 1}'', ''{"n": 2}'']::jsonb[].';
    END IF;
    -- The names were checked above, the payloads here (the largest one's size).
    v_run_at := queue.check_push_args(v_queue, v_group,
        coalesce((SELECT max(queue.json_size(p)) FROM unnest(payloads) AS p), 0), delay, run_at,
        max_attempts, timeout, backoff_base, backoff_max, retry_delays, dedupe_key, priority);
    PERFORM queue.scope('produce', v_queue, v_group);

    IF dedupe_key IS NOT NULL THEN
        FOREACH v_payload IN ARRAY payloads LOOP
            RETURN NEXT @extschema@.queue_push(v_queue, v_payload, priority, NULL, v_run_at,
                v_group, max_attempts, timeout, backoff_base, backoff_max, retry_delays, dedupe_key);
        END LOOP;
        RETURN;
    END IF;

    v_status := CASE WHEN v_run_at > now() THEN 'scheduled' ELSE 'pending' END;
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO queue.jobs AS j (queue, status, priority, group_waiting, serial_group,
                run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, payload)
        SELECT v_queue, v_status, priority, v_group IS NOT NULL AND v_status = 'pending', v_group,
               v_run_at, max_attempts, timeout, backoff_base, backoff_max, retry_delays, p.payload
          FROM unnest(payloads) WITH ORDINALITY AS p(payload, n)
         ORDER BY p.n
        RETURNING j.id
    )
    SELECT inserted.id FROM inserted ORDER BY inserted.id;

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

-- queue_pop takes a wait (pooler-safe waiting, no LISTEN): a new signature.
DROP FUNCTION @extschema@.queue_pop(text, text, int);
CREATE OR REPLACE FUNCTION @extschema@.queue_pop(queue text, worker text DEFAULT NULL, batch int DEFAULT 1,
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
SET enable_indexscan = on SET enable_bitmapscan = off SET enable_seqscan = off AS $$
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

CREATE OR REPLACE FUNCTION @extschema@.queue_ack(id bigint, result jsonb DEFAULT NULL, attempt int DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v_group text;
BEGIN
    IF result IS NOT NULL THEN
        PERFORM queue.check_size('result', queue.json_size(result), 'result');
    END IF;
    IF queue.rules_exist() AND NOT queue.job_allowed(queue.caller(), 'work', id) THEN
        RETURN false;
    END IF;
    IF NOT queue.keep_completed() THEN
        RETURN queue.finish_jobs(ARRAY[id], '{processing}', 'completed', attempt, NULL, NULL) = 1;
    END IF;
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
            created_at, started_at, finished_at)
    SELECT m.id, m.queue, 'completed', m.priority, false, m.serial_group, m.run_at, NULL,
           m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
           m.dedupe_key, m.payload, m.last_error, queue_ack.result, m.progress, m.worker,
           m.created_at, m.started_at, now()
      FROM moved m
    RETURNING serial_group INTO v_group;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_group IS NOT NULL THEN
        PERFORM queue.release_groups(ARRAY[v_group]);
    END IF;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_ack(ids bigint[])
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

CREATE OR REPLACE FUNCTION @extschema@.queue_fail(id bigint, error text DEFAULT NULL, attempt int DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION @extschema@.queue_touch(id bigint, extend interval DEFAULT NULL, attempt int DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION @extschema@.queue_cancel(id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF queue.rules_exist()
       AND NOT queue.job_allowed(queue.caller(), 'produce', queue_cancel.id) THEN
        RETURN false;
    END IF;
    RETURN queue.finish_jobs(ARRAY[queue_cancel.id], '{scheduled,pending,retrying}', 'cancelled',
                             NULL, NULL, NULL) > 0;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_peek(queue text, n int DEFAULT 1)
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

CREATE OR REPLACE FUNCTION @extschema@.queue_job(id bigint)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(j) - 'group_waiting'
           || jsonb_build_object('waiting_for_group', j.group_waiting,
                                 'errors', coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', e.attempt, 'at', e.at,
                                                                                         'error', e.error)
                                                                      ORDER BY e.attempt)
                                                       FROM queue.job_errors e WHERE e.job_id = j.id), '[]'))
      FROM queue.all_jobs j
     WHERE j.id = $1
       AND queue.access_allows(queue.scope('read'), j.queue);
$$;

CREATE OR REPLACE FUNCTION queue.rebuild_lease_book() RETURNS boolean
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

CREATE OR REPLACE FUNCTION queue.delete_jobs(p_ids bigint[], OUT deleted bigint, OUT groups text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    WITH gone_live AS (
        DELETE FROM queue.jobs j
         WHERE j.id = ANY (p_ids) AND j.status <> 'processing'
        RETURNING j.serial_group, queue.tally(j.queue, j.priority, j.status::text, NULL)
    ), gone_final AS (
        DELETE FROM queue.finished_jobs j
         WHERE j.id = ANY (p_ids)
        RETURNING j.queue, j.status, j.serial_group, j.run_at, j.started_at, j.finished_at,
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
        SELECT l.serial_group FROM gone_live l
        UNION ALL
        SELECT f.serial_group FROM gone_final f
    )
    SELECT count(*), array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL)
      INTO deleted, groups
      FROM gone g;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_tick() RETURNS jsonb
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

CREATE OR REPLACE FUNCTION @extschema@.queue_dead(queue text DEFAULT NULL, max_rows int DEFAULT 100)
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
     ORDER BY j.finished_at DESC, j.id DESC
     LIMIT v_max;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_retry(id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT queue.revive_jobs(ARRAY[$1]) > 0
                      WHERE queue.job_allowed(queue.caller(), 'produce', $1)), false);
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_retry_all(queue text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_retry_all.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    RETURN queue.revive_jobs(ARRAY(
        SELECT j.id FROM queue.finished_jobs j
         WHERE j.queue = v_queue AND j.status IN ('failed', 'expired')));
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_delete(id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT queue.forget_jobs(ARRAY[$1]) > 0
                      WHERE queue.job_allowed(queue.caller(), 'produce', $1)), false);
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_purge_dead(queue text DEFAULT NULL, older_than interval DEFAULT NULL)
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
           AND (v_older IS NULL OR j.finished_at < now() - v_older)));
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_cleanup(older_than interval) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.queue_clear(queue text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue text := queue.check_queue_name(queue_clear.queue);
BEGIN
    PERFORM queue.scope('produce', v_queue);
    RETURN queue.forget_jobs(ARRAY(
        SELECT j.id FROM queue.jobs j
         WHERE j.queue = v_queue AND j.status IN ('pending', 'scheduled', 'retrying')));
END;
$$;

-- The role whose heartbeat made a worker's row (rows of 0.1.0 have none).
ALTER TABLE queue.workers ADD COLUMN registered_by oid;

CREATE OR REPLACE FUNCTION @extschema@.queue_heartbeat(worker text, info jsonb DEFAULT '{}') RETURNS void
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

CREATE OR REPLACE FUNCTION @extschema@.queue_workers(stale_after interval DEFAULT '2 minutes')
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

CREATE OR REPLACE FUNCTION @extschema@.queue_reap_workers(stale_after interval DEFAULT '5 minutes') RETURNS bigint
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

CREATE OR REPLACE FUNCTION queue.push_for_schedule(s queue.schedules) RETURNS bigint
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

-- queue.upsert_schedule took its owner as an argument, so an admin could
-- name any role; queue.save_schedule takes it from the session.
DROP FUNCTION queue.upsert_schedule(name, text, text, text, jsonb, integer, text, integer, interval, boolean);
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

CREATE OR REPLACE FUNCTION @extschema@.queue_schedule(
    name text, schedule text, queue text, payload jsonb DEFAULT '{}',
    priority int DEFAULT 0, serial_group text DEFAULT NULL, max_attempts int DEFAULT 3,
    timeout interval DEFAULT '5 minutes', enabled boolean DEFAULT true)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    SELECT queue.save_schedule($1, $2, $3, $4, $5, $6, $7, $8, $9);
$$;

-- Was LANGUAGE sql; CREATE OR REPLACE keeps its grants.
CREATE OR REPLACE FUNCTION @extschema@.queue_unschedule(name text) RETURNS boolean
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

CREATE OR REPLACE FUNCTION @extschema@.queue_trigger(name text) RETURNS bigint
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

CREATE OR REPLACE FUNCTION @extschema@.queue_schedules()
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

CREATE OR REPLACE FUNCTION @extschema@.queue_timeline(horizon interval DEFAULT '1 day', max_rows int DEFAULT 20)
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

CREATE OR REPLACE FUNCTION queue.recount_stats() RETURNS int
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
       SET scheduled = 0, pending = 0, processing = 0, retrying = 0
     WHERE scheduled <> 0 OR pending <> 0 OR processing <> 0 OR retrying <> 0;
    INSERT INTO queue.stats AS s (queue, priority, slot, scheduled, pending, processing, retrying)
    SELECT j.queue, j.priority, 0,
           count(*) FILTER (WHERE j.status = 'scheduled'),
           count(*) FILTER (WHERE j.status = 'pending'),
           count(*) FILTER (WHERE j.status = 'processing'),
           count(*) FILTER (WHERE j.status = 'retrying')
      FROM queue.jobs j
     GROUP BY j.queue, j.priority
    ON CONFLICT (queue, priority, slot) DO UPDATE
       SET scheduled = excluded.scheduled, pending = excluded.pending,
           processing = excluded.processing, retrying = excluded.retrying;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END;
$$;

-- stats_apply writes this minute's throughput too, for commits whose
-- tallies do not go through shared memory.
DROP FUNCTION queue.stats_apply(int, text, int, bigint[], timestamptz);
CREATE FUNCTION queue.stats_apply(p_slot int, p_queue text, p_priority int, p_counts bigint[],
                                  p_last timestamptz, p_minutes boolean DEFAULT false) RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO queue.stats AS s (queue, priority, slot, scheduled, pending, processing, retrying,
                                  pushed, popped, completed, failed, expired, cancelled, retried,
                                  deleted, last_activity)
    VALUES (p_queue, p_priority, p_slot, p_counts[1], p_counts[2], p_counts[3], p_counts[4],
            p_counts[5], p_counts[6], p_counts[7], p_counts[8], p_counts[9], p_counts[10],
            p_counts[11], p_counts[12], p_last)
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

-- Rows spilled into queue.stats when the shared table is full are folded
-- into the flushed ones (src/stats.rs).
CREATE  FUNCTION queue."stats_fold_due"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stats_fold_due_wrapper';

CREATE OR REPLACE FUNCTION queue.stats_pass() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
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
    IF queue.stats_fold_due() THEN
        WITH gone AS (
            DELETE FROM queue.stats s
             WHERE s.ctid = ANY (ARRAY(SELECT x.ctid FROM queue.stats x WHERE x.slot <> 0
                                          FOR UPDATE SKIP LOCKED))
            RETURNING s.*
        )
        SELECT count(*) INTO v_folded
          FROM (SELECT queue.stats_apply(0, g.queue, g.priority,
                       ARRAY[sum(g.scheduled), sum(g.pending), sum(g.processing), sum(g.retrying),
                             sum(g.pushed), sum(g.popped), sum(g.completed), sum(g.failed),
                             sum(g.expired), sum(g.cancelled), sum(g.retried), sum(g.deleted)]::bigint[],
                       max(g.last_activity))
                  FROM gone g
                 GROUP BY g.queue, g.priority) f;
    END IF;
    DELETE FROM queue.stats_minutes WHERE minute < now() - queue.metrics_retention();
    DELETE FROM queue.job_errors WHERE at < now() - queue.retention();
    RETURN v_rows;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.queue_stats(queue text DEFAULT NULL)
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
    WITH c AS (
        SELECT * FROM queue.stats_rows(v_queue) r
         WHERE (v_queue IS NULL OR r.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, r.queue))
    )
    SELECT jsonb_build_object(
               'queue', v_queue,
               'total_size', coalesce(sum(c.pending + c.scheduled + c.retrying), 0),
               'pending', coalesce(sum(c.pending), 0),
               'scheduled', coalesce(sum(c.scheduled), 0),
               'processing', coalesce(sum(c.processing), 0),
               'retrying', coalesce(sum(c.retrying), 0),
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
           queue.oldest_pending(array_agg(c.queue) FILTER (WHERE c.pending > 0),
                                array_agg(c.priority) FILTER (WHERE c.pending > 0))
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
COMMENT ON FUNCTION @extschema@.queue_stats(text) IS
'Counts of one queue, or of all with NULL: total_size (= pending + scheduled + retrying), each status, cumulative completed/failed/expired/cancelled/retried/deleted, total_pushed, total_popped, priority_breakdown of waiting jobs, oldest_pending_age (seconds), last_activity; paused (one queue) or paused_queues (all). Constant time.';

CREATE OR REPLACE FUNCTION @extschema@.queue_size(queue text)
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

-- Per-queue settings, one row per queue that has any. Today: pausing. A
-- paused queue accepts pushes and lets running jobs finish, but queue_pop
-- hands out none of its jobs. Read by every claim (one primary-key probe of
-- a table of a few rows), written only by queue_pause, queue_resume and
-- queue_configure (the push defaults, read by every push).
CREATE TABLE queue.queue_settings (
    queue        text COLLATE "C" PRIMARY KEY,
    paused_at    timestamptz,           -- NULL: not paused
    paused_by    name,
    priority     int,
    max_attempts int,
    timeout      interval,
    backoff_base interval,
    backoff_max  interval,
    retention    interval
);

-- queue_list gains the column paused.
DROP FUNCTION @extschema@.queue_list();
CREATE OR REPLACE FUNCTION @extschema@.queue_list()
RETURNS TABLE (queue text, total_size bigint, pending bigint, scheduled bigint, processing bigint,
               retrying bigint, completed bigint, failed bigint, expired bigint, cancelled bigint,
               total_pushed bigint, total_popped bigint, last_activity timestamptz, paused boolean)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.queue,
           sum(r.pending + r.scheduled + r.retrying)::bigint, sum(r.pending)::bigint,
           sum(r.scheduled)::bigint, sum(r.processing)::bigint, sum(r.retrying)::bigint,
           sum(r.completed)::bigint, sum(r.failed)::bigint, sum(r.expired)::bigint,
           sum(r.cancelled)::bigint, sum(r.pushed)::bigint, sum(r.popped)::bigint,
           max(r.last_activity),
           EXISTS (SELECT FROM queue.queue_settings s WHERE s.queue = r.queue AND s.paused_at IS NOT NULL)
      FROM (SELECT queue.scope('read') AS patterns OFFSET 0) a, queue.stats_rows() r
     WHERE queue.access_allows(a.patterns, r.queue)
     GROUP BY r.queue
     ORDER BY r.queue;
$$;
COMMENT ON FUNCTION @extschema@.queue_list() IS
'Every queue that ever had a job, with total_size, each status count, cumulative totals, last_activity and paused.';

CREATE OR REPLACE FUNCTION @extschema@.queue_metrics(queue text DEFAULT NULL, since interval DEFAULT '1 hour')
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

CREATE OR REPLACE FUNCTION @extschema@.queue_health()
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
           queue.oldest_pending(array_agg(r.queue) FILTER (WHERE r.pending > 0),
                                array_agg(r.priority) FILTER (WHERE r.pending > 0)) AS oldest
      INTO v_counts FROM queue.stats_rows() r;
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

CREATE OR REPLACE FUNCTION @extschema@.queue_prometheus()
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
               sum(s.pushed) AS pushed, sum(s.popped) AS popped, sum(s.completed) AS completed,
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
                                  (2, 'processing', r.processing), (3, 'retrying', r.retrying)) g(n, status, value)
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

COMMENT ON FUNCTION @extschema@.queue_health() IS
'Whether the queue is served: healthy, problems, workers_running, last_tick, backlog, processing, oldest_pending_age (seconds), overdue_leases, stale_workers, oldest_snapshot (what holds back cleanup: pid, application, kind, age_seconds; a problem past 5 minutes), counters, lease_book, paused_queues. Constant time.';

DROP FUNCTION queue.ms(interval);


-- 5. queue_progress takes the claim's attempt: a new signature.

DROP FUNCTION @extschema@.queue_progress(bigint, integer, integer, text);
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


-- New in 0.2.0: a worker that stops gives its claims back (clients/).
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

-- New in 0.2.0: ack the finished jobs and claim the next in one call.
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
BEGIN
    IF NOT queue.keep_completed() THEN
        WITH gone AS (
            DELETE FROM queue.jobs j
             USING unnest(p_ids, p_attempts) AS a(id, attempt)
             WHERE j.id = a.id AND j.status = 'processing'
               AND (a.attempt IS NULL OR j.attempts = a.attempt)
            RETURNING j.id, j.queue, j.serial_group, j.run_at, j.started_at,
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
               array_agg(DISTINCT g.serial_group) FILTER (WHERE g.serial_group IS NOT NULL)
          INTO v_finished, v_groups
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
                    created_at, started_at, finished_at)
            SELECT m.id, m.queue, 'completed', m.priority, false, m.serial_group, m.run_at, NULL,
                   m.attempts, m.max_attempts, m.timeout, m.backoff_base, m.backoff_max, m.retry_delays,
                   m.dedupe_key, m.payload, m.last_error, m.given_result, m.progress, m.worker,
                   m.created_at, m.started_at, now()
              FROM moved m
            RETURNING id, serial_group
        )
        SELECT coalesce(array_agg(k.id), '{}'),
               array_agg(DISTINCT k.serial_group) FILTER (WHERE k.serial_group IS NOT NULL)
          INTO v_finished, v_groups
          FROM kept k;
    END IF;
    IF v_groups IS NOT NULL THEN
        PERFORM queue.release_groups(v_groups);
    END IF;
    RETURN v_finished;
END;
$$;

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
CREATE OR REPLACE FUNCTION queue.ack_claims(p_ids bigint[], p_attempts int[], p_results jsonb[])
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
CREATE OR REPLACE FUNCTION @extschema@.queue_ack_pop(queue text, worker text DEFAULT NULL, batch int DEFAULT 1,
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

-- New in 0.2.0: throughput per queue and minute, for dashboards.
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

-- New in 0.2.0: a job listing for tools (queuectl, the dashboard).
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


-- New in 0.2.0: the error of every failed attempt, for the job page.
-- Every failed attempt's error, for the job page (queue_job's "errors"): one
-- row per failure, written by queue_fail and the lease expiry only, so that
-- pushes, claims and acks never touch it; kept for queue.retention.
CREATE TABLE queue.job_errors (
    job_id  bigint NOT NULL,
    attempt int NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    error   text,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX job_errors_at ON queue.job_errors (at);

COMMENT ON FUNCTION @extschema@.queue_job(bigint) IS
'Everything about one job as jsonb (status, attempts, payload, result, last_error, errors: the error of every failed attempt, progress, times, worker); NULL for an unknown id.';

-- The lease expiry records its errors there.
CREATE OR REPLACE FUNCTION queue.expire_leases(p_batch int) RETURNS jsonb
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

-- 7. Pausing queues (sql/operations.sql, all new; their table is created
--    before queue_list, which reads it).

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
 * queue_configure: a queue's defaults for what a push does not say (sql/operations.sql).
 */
CREATE OR REPLACE FUNCTION @extschema@.queue_configure(queue text, priority int DEFAULT NULL, max_attempts int DEFAULT NULL,
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
 * queue_settings: the settings of every queue that has any (today: whether
 * it is paused, since when, by whom), for the queues the caller may read.
 */
CREATE OR REPLACE FUNCTION @extschema@.queue_settings()
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


-- Whether any queue has push defaults, in shared memory (src/settings.rs).
CREATE  FUNCTION queue."push_defaults_absent"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'push_defaults_absent_wrapper';

CREATE  FUNCTION queue."push_defaults_none_found"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'push_defaults_none_found_wrapper';

CREATE  FUNCTION queue."push_defaults_may_exist"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'push_defaults_may_exist_wrapper';

CREATE  FUNCTION queue."push_defaults_forget"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'push_defaults_forget_wrapper';

-- 8. Job dependencies (sql/dependencies.sql, issue 20): the status
--    `blocked`, the job columns blocked_by and has_children, the edges
--    table, the `blocked` gauge, and every finish resolving edges. The new
--    enum value is used only inside plpgsql bodies, which run after this
--    transaction commits (a value added in a transaction cannot be used in
--    it).
ALTER TYPE queue.job_status ADD VALUE 'blocked';
ALTER TABLE queue.jobs ADD COLUMN blocked_by int NOT NULL DEFAULT 0,
                       ADD COLUMN has_children boolean NOT NULL DEFAULT false;
ALTER TABLE queue.finished_jobs ADD COLUMN blocked_by int NOT NULL DEFAULT 0,
                                ADD COLUMN has_children boolean NOT NULL DEFAULT false;
-- Tags (issue 20): a column of both tables and their partial GIN indexes.
ALTER TABLE queue.jobs ADD COLUMN tags text[] COLLATE "C";
ALTER TABLE queue.finished_jobs ADD COLUMN tags text[] COLLATE "C";
CREATE INDEX jobs_tags ON queue.jobs USING gin (tags) WHERE tags IS NOT NULL;
CREATE INDEX finished_jobs_tags ON queue.finished_jobs USING gin (tags) WHERE tags IS NOT NULL;
-- Batches (sql/batches.sql): the job's batch, its indexes, the batches.
ALTER TABLE queue.jobs ADD COLUMN batch_id bigint;
ALTER TABLE queue.finished_jobs ADD COLUMN batch_id bigint;
CREATE INDEX jobs_batch ON queue.jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX finished_jobs_batch ON queue.finished_jobs (batch_id) WHERE batch_id IS NOT NULL;
-- Per-queue retention (queue_configure(..., retention)): what a job was
-- pushed with, and the retention pass's index of such final jobs.
ALTER TABLE queue.jobs ADD COLUMN keep_for interval;
ALTER TABLE queue.finished_jobs ADD COLUMN keep_for interval;
CREATE INDEX finished_jobs_keep ON queue.finished_jobs (keep_for, finished_at)
    WHERE keep_for IS NOT NULL;
CREATE TABLE queue.batches (
    id           bigserial PRIMARY KEY,
    state        text COLLATE "C" NOT NULL DEFAULT 'open',  -- open, closed, done, cancelled
    on_complete  jsonb,      -- pushed when every job is final
    on_failure   jsonb,      -- pushed too when any failed or expired
    created_by   oid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    finished_at  timestamptz,
    total        int,        -- from the close on
    pending      int,        -- jobs not final yet
    completed    int,
    failed       int,        -- failed or expired
    cancelled    int,
    complete_job bigint,     -- the callbacks pushed
    failure_job  bigint
);
CREATE OR REPLACE VIEW queue.all_jobs AS
    SELECT * FROM queue.jobs
    UNION ALL
    SELECT * FROM queue.finished_jobs;
CREATE TABLE queue.job_deps (
    parent          bigint NOT NULL,
    child           bigint NOT NULL,
    run_anyway      boolean NOT NULL DEFAULT false,
    resolved        boolean NOT NULL DEFAULT false,
    cancelled_child boolean NOT NULL DEFAULT false,
    PRIMARY KEY (parent, child)
);
CREATE INDEX job_deps_child ON queue.job_deps (child);
ALTER TABLE queue.stats ADD COLUMN blocked bigint NOT NULL DEFAULT 0;

DROP FUNCTION @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text);
DROP FUNCTION @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text);
DROP FUNCTION @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text);
DROP FUNCTION @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text);
DROP FUNCTION queue.finish_jobs(bigint[], queue.job_status[], queue.job_status, int, jsonb, text);
DROP FUNCTION queue.stats_rows(text);
DROP FUNCTION queue.delete_jobs(bigint[]);
DROP FUNCTION @extschema@.queue_dead(text, int);
DROP FUNCTION @extschema@.queue_retry_all(text);
DROP FUNCTION @extschema@.queue_purge_dead(text, interval);
DROP FUNCTION @extschema@.queue_stats(text);

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
    WITH c AS (
        SELECT * FROM queue.stats_rows(v_queue) r
         WHERE (v_queue IS NULL OR r.queue = v_queue)
           AND (v_scope IS NULL OR queue.access_allows(v_scope, r.queue))
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
           queue.oldest_pending(array_agg(c.queue) FILTER (WHERE c.pending > 0),
                                array_agg(c.priority) FILTER (WHERE c.pending > 0))
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
CREATE OR REPLACE FUNCTION @extschema@.queue_push(
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






CREATE OR REPLACE FUNCTION @extschema@.queue_push(
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




CREATE OR REPLACE FUNCTION @extschema@.queue_push_batch(
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





CREATE OR REPLACE FUNCTION @extschema@.queue_push_batch(
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




CREATE OR REPLACE FUNCTION queue.finish_jobs(p_ids bigint[], p_from queue.job_status[], p_status queue.job_status,
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



CREATE OR REPLACE FUNCTION queue.finish_claims(p_ids bigint[], p_attempts int[], p_results jsonb[])
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



CREATE OR REPLACE FUNCTION @extschema@.queue_ack(id bigint, result jsonb DEFAULT NULL, attempt int DEFAULT NULL)
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



CREATE OR REPLACE FUNCTION @extschema@.queue_cancel(id bigint)
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

CREATE OR REPLACE FUNCTION @extschema@.queue_job(id bigint)
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

CREATE OR REPLACE FUNCTION queue.stats_apply(p_slot int, p_queue text, p_priority int, p_counts bigint[],
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

CREATE OR REPLACE FUNCTION queue.stats_rows(p_queue text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION queue.recount_stats() RETURNS int
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

CREATE OR REPLACE FUNCTION queue.stats_pass() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
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
    IF queue.stats_fold_due() THEN
        WITH gone AS (
            DELETE FROM queue.stats s
             WHERE s.ctid = ANY (ARRAY(SELECT x.ctid FROM queue.stats x WHERE x.slot <> 0
                                          FOR UPDATE SKIP LOCKED))
            RETURNING s.*
        )
        SELECT count(*) INTO v_folded
          FROM (SELECT queue.stats_apply(0, g.queue, g.priority,
                       ARRAY[sum(g.scheduled), sum(g.pending), sum(g.processing), sum(g.retrying),
                             sum(g.pushed), sum(g.popped), sum(g.completed), sum(g.failed),
                             sum(g.expired), sum(g.cancelled), sum(g.retried), sum(g.deleted),
                             sum(g.blocked)]::bigint[],
                       max(g.last_activity))
                  FROM gone g
                 GROUP BY g.queue, g.priority) f;
    END IF;
    DELETE FROM queue.stats_minutes WHERE minute < now() - queue.metrics_retention();
    -- Errors go with the longest retention in use: a queue that keeps its
    -- jobs longer keeps their errors too.
    DELETE FROM queue.job_errors
     WHERE at < now() - greatest(queue.retention(), (SELECT max(s.retention) FROM queue.queue_settings s));
    RETURN v_rows;
END;
$$;


CREATE OR REPLACE FUNCTION @extschema@.queue_prometheus()
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

CREATE OR REPLACE FUNCTION queue.delete_jobs(p_ids bigint[], OUT deleted bigint, OUT groups text[], OUT parents bigint[],
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


CREATE OR REPLACE FUNCTION queue.forget_jobs(p_ids bigint[]) RETURNS bigint
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


CREATE OR REPLACE FUNCTION queue.revive_jobs(p_ids bigint[]) RETURNS bigint
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



CREATE OR REPLACE FUNCTION @extschema@.queue_clear(queue text) RETURNS bigint
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

CREATE OR REPLACE FUNCTION queue.lock_deps(p_parents bigint[], p_run_anyway boolean,
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

CREATE OR REPLACE FUNCTION queue.add_edges(p_children bigint[], p_deps record, p_run_anyway boolean)
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

CREATE OR REPLACE FUNCTION queue.unblock(p_parents bigint[], p_run_anyway_only boolean) RETURNS void
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

CREATE OR REPLACE FUNCTION queue.release_children(p_parents bigint[], p_status queue.job_status) RETURNS void
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

CREATE OR REPLACE FUNCTION queue.revive_children(p_parents bigint[]) RETURNS void
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



CREATE OR REPLACE FUNCTION @extschema@.queue_dependencies(id bigint)
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


-- Batches (sql/batches.sql, all new).
CREATE OR REPLACE FUNCTION queue.check_callback(p_what text, p_spec jsonb) RETURNS jsonb
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

CREATE FUNCTION queue.batch_summary(b queue.batches) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('id', b.id, 'total', b.total, 'completed', b.completed,
                              'failed', b.failed, 'cancelled', b.cancelled);
$$;

CREATE OR REPLACE FUNCTION queue.push_callback(p_spec jsonb, p_summary jsonb) RETURNS bigint
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

CREATE OR REPLACE FUNCTION queue.batch_progress(p_batches bigint[], p_status queue.job_status) RETURNS void
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

CREATE OR REPLACE FUNCTION queue.batch_revived(p_batches bigint[], p_from queue.job_status) RETURNS void
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

CREATE FUNCTION queue.batch_visible(p_batch bigint) RETURNS queue.batches
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT b FROM queue.batches b
     WHERE b.id = p_batch
       AND (b.created_by = queue.caller() OR queue.access_patterns(queue.caller(), 'produce') IS NULL);
$$;

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


-- 9. Per-queue retention: the retention pass reads each final job's keep_for
--    (the columns and the index are added in section 8).
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
CREATE OR REPLACE FUNCTION queue.prune_finished(p_batch int) RETURNS int
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

-- 10. Scale (issue 21): readers that sum the counters by queue or by
--     priority in one pass and find the oldest claimable job by id, and a
--     fold of spilled counter rows in small passes (sql/stats.sql,
--     src/stats.rs).
CREATE  FUNCTION queue."stats_fold_unfinished"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stats_fold_unfinished_wrapper';

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
 * queue.stats_pass: the counters' duty, run by the maintenance worker in a
 * short transaction of its own after each pass (and by queue_tick): recount
 * the gauges if shared memory asks for it, then move the shared-memory
 * counters into queue.stats. Skips the flush while a reader holds the lock;
 * the counters simply wait for the next tick. Returns rows flushed.
 */
CREATE OR REPLACE FUNCTION queue.stats_pass() RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
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

/*
 * queue_stats: counts of one queue (or all): the waiting and running gauges,
 * the cumulative totals, waiting jobs by priority, and the age of the oldest
 * claimable job. Reads the counters, never counts job rows: constant time
 * whatever the depth or history.
 */
CREATE OR REPLACE FUNCTION @extschema@.queue_stats(queue text DEFAULT NULL, tag text DEFAULT NULL)
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

/*
 * queue_list: every queue that ever had a job, with its counts and whether
 * it is paused.
 */
CREATE OR REPLACE FUNCTION @extschema@.queue_list()
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

/*
 * queue_health: is the queue being served? Workers running, the last
 * maintenance pass, backlog, the oldest claimable job, leases overdue for
 * recovery, stale workers. "healthy" is false with a reason per problem.
 */
CREATE OR REPLACE FUNCTION @extschema@.queue_health()
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

-- Vacuum the live table after every 10,000 dead rows, unthrottled
-- (sql/jobs.sql says why).
ALTER TABLE queue.jobs SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                            autovacuum_vacuum_cost_delay = 0);
-- History is vacuumed after a twentieth of it is dead, unthrottled (jobs.sql).
ALTER TABLE queue.finished_jobs SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);

-- 6. Grants, as sql/security.sql gives them on a fresh install.
REVOKE ALL ON ALL TABLES IN SCHEMA queue FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA queue FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.queue_jobs(text, text, int, bigint, text),
    @extschema@.queue_throughput(text, interval),
    @extschema@.queue_pop(text, text, int, interval),
    @extschema@.queue_release(bigint, int),
    @extschema@.queue_ack_pop(text, text, int, bigint[], int[], jsonb[]),
    @extschema@.queue_ack_batch(bigint[], int[], jsonb[]),
    @extschema@.queue_pause(text),
    @extschema@.queue_resume(text),
    @extschema@.queue_settings(),
    @extschema@.queue_configure(text, int, int, interval, interval, interval, interval, boolean),
    @extschema@.queue_batch_open(jsonb, jsonb),
    @extschema@.queue_batch_close(bigint),
    @extschema@.queue_batch_cancel(bigint),
    @extschema@.queue_batch(bigint),
    @extschema@.queue_batches(text, int),
    @extschema@.queue_dead(text, int, text),
    @extschema@.queue_retry_all(text, text),
    @extschema@.queue_purge_dead(text, interval, text),
    @extschema@.queue_stats(text, text),
    @extschema@.queue_list(),
    @extschema@.queue_grant_access(regrole, text, text),
    @extschema@.queue_revoke_access(regrole, text, text),
    @extschema@.queue_access_rules(),
    @extschema@.queue_progress(bigint, int, int, text, int),
    @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_dependencies(bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.queue_jobs(text, text, int, bigint, text),
    @extschema@.queue_throughput(text, interval),
    @extschema@.queue_pop(text, text, int, interval),
    @extschema@.queue_release(bigint, int),
    @extschema@.queue_ack_pop(text, text, int, bigint[], int[], jsonb[]),
    @extschema@.queue_ack_batch(bigint[], int[], jsonb[]),
    @extschema@.queue_pause(text),
    @extschema@.queue_resume(text),
    @extschema@.queue_settings(),
    @extschema@.queue_configure(text, int, int, interval, interval, interval, interval, boolean),
    @extschema@.queue_batch_open(jsonb, jsonb),
    @extschema@.queue_batch_close(bigint),
    @extschema@.queue_batch_cancel(bigint),
    @extschema@.queue_batch(bigint),
    @extschema@.queue_batches(text, int),
    @extschema@.queue_dead(text, int, text),
    @extschema@.queue_retry_all(text, text),
    @extschema@.queue_purge_dead(text, interval, text),
    @extschema@.queue_stats(text, text),
    @extschema@.queue_list(),
    @extschema@.queue_grant_access(regrole, text, text),
    @extschema@.queue_revoke_access(regrole, text, text),
    @extschema@.queue_access_rules(),
    @extschema@.queue_progress(bigint, int, int, text, int),
    @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_dependencies(bigint)
TO queue_admin;
GRANT EXECUTE ON FUNCTION
    @extschema@.queue_push(text, jsonb, int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push(text, jsonb, text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], int, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_push_batch(text, jsonb[], text, interval, timestamptz, text, int, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint),
    @extschema@.queue_dependencies(bigint)
TO queue_producer;
GRANT EXECUTE ON FUNCTION @extschema@.queue_dependencies(bigint) TO queue_worker;
GRANT EXECUTE ON FUNCTION
    @extschema@.queue_batch_open(jsonb, jsonb),
    @extschema@.queue_batch_close(bigint),
    @extschema@.queue_batch_cancel(bigint),
    @extschema@.queue_batch(bigint),
    @extschema@.queue_batches(text, int)
TO queue_producer;
GRANT EXECUTE ON FUNCTION @extschema@.queue_progress(bigint, int, int, text, int) TO queue_worker;
GRANT EXECUTE ON FUNCTION @extschema@.queue_release(bigint, int) TO queue_worker;
GRANT EXECUTE ON FUNCTION @extschema@.queue_ack_pop(text, text, int, bigint[], int[], jsonb[]) TO queue_worker;
GRANT EXECUTE ON FUNCTION @extschema@.queue_ack_batch(bigint[], int[], jsonb[]) TO queue_worker;
GRANT EXECUTE ON FUNCTION @extschema@.queue_pop(text, text, int, interval) TO queue_worker;
GRANT EXECUTE ON FUNCTION queue.save_schedule(text, text, text, jsonb, int, text, int, interval, boolean)
    TO queue_admin;
SELECT pg_catalog.pg_extension_config_dump('queue.access_rules', '');
SELECT pg_catalog.pg_extension_config_dump('queue.stats_minutes', '');
SELECT pg_catalog.pg_extension_config_dump('queue.job_errors', '');
SELECT pg_catalog.pg_extension_config_dump('queue.queue_settings', '');
SELECT pg_catalog.pg_extension_config_dump('queue.job_deps', '');
SELECT pg_catalog.pg_extension_config_dump('queue.batches', '');
SELECT pg_catalog.pg_extension_config_dump('queue.batches_id_seq', '');

-- 0.2.0 uses an existing role of these names only when it carries this
-- marker (sql/security.sql). 0.1.0 made its roles without one, or adopted
-- whatever role had the name: mark those that look like what 0.1.0 made
-- (no attribute beyond NOLOGIN), and say so for any that does not, which
-- a fresh install would refuse.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT a.rolname, a.rolcanlogin OR a.rolsuper OR a.rolcreaterole OR a.rolcreatedb
                          OR a.rolreplication OR a.rolbypassrls AS privileged
          FROM pg_catalog.pg_roles a
         WHERE a.rolname IN ('queue_producer', 'queue_worker', 'queue_admin')
           AND pg_catalog.shobj_description(a.oid, 'pg_authid') IS DISTINCT FROM 'role of the queue extension'
    LOOP
        IF r.privileged THEN
            RAISE WARNING 'role % has attributes beyond NOLOGIN; the queue extension no longer adopts such a role', r.rolname
                USING HINT = 'Check who made it and who is a member of it before you mark it.';
        ELSE
            EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', r.rolname, 'role of the queue extension');
        END IF;
    END LOOP;
END;
$$;

-- Jobs that 0.1.0 accepted beyond today's limits could make every later
-- pop, lease expiry or metrics call fail (a '400000 years' timeout, an
-- infinite run_at). Bring them within the limits in force: leases to
-- queue.max_lease, delays to queue.max_delay, infinite times to the job's
-- creation.
UPDATE queue.jobs
   SET timeout = pg_catalog.current_setting('queue.max_lease')::interval
 WHERE timeout > pg_catalog.current_setting('queue.max_lease')::interval;
UPDATE queue.jobs
   SET backoff_base = least(backoff_base, pg_catalog.current_setting('queue.max_delay')::interval),
       backoff_max = least(backoff_max, pg_catalog.current_setting('queue.max_delay')::interval)
 WHERE backoff_max > pg_catalog.current_setting('queue.max_delay')::interval;
UPDATE queue.jobs
   SET retry_delays = ARRAY(SELECT least(d, pg_catalog.current_setting('queue.max_delay')::interval)
                              FROM pg_catalog.unnest(retry_delays) AS d)
 WHERE pg_catalog.current_setting('queue.max_delay')::interval < ANY (retry_delays);
UPDATE queue.jobs
   SET run_at = created_at
 WHERE run_at IN ('infinity', '-infinity');
UPDATE queue.finished_jobs
   SET run_at = created_at
 WHERE run_at IN ('infinity', '-infinity');

-- The serial groups' locks are taken under a lock tag no SQL function can
-- name (src/locks.rs), so that no session can hold another's group.
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
CREATE OR REPLACE FUNCTION queue.group_elect(p_group text) RETURNS void
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
CREATE OR REPLACE FUNCTION queue.release_groups(p_groups text[]) RETURNS void
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

-- A session holding a serial group's lock (an open transaction that pushed
-- into the group) no longer stalls the promotion of due jobs or the
-- scheduler, and every queue with them: grouped work whose lock is busy
-- waits for a later pass.
/*
 * queue.promote_due: scheduled and retrying jobs whose run_at has come
 * become pending, at most p_batch of them, oldest first. Each affected queue
 * is woken once. A scheduled job of a serial group enters as waiting and its
 * group is re-elected; a retrying job is already its group's active job and
 * simply stays so.
 */
CREATE OR REPLACE FUNCTION queue.promote_due(p_batch int) RETURNS int
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
CREATE OR REPLACE FUNCTION queue.scheduler_pass(p_batch int DEFAULT 100) RETURNS jsonb
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

-- No JIT for the claim and for the passes of every tick: their generic
-- plans guess that an unknown LIMIT takes a tenth of a deep table, pass
-- jit_above_cost and would compile on every call (queue_pop, core.sql).
ALTER FUNCTION @extschema@.queue_pop(text, text, int, interval) SET jit = off;
ALTER FUNCTION queue.maintenance_pass(integer) SET jit = off;
ALTER FUNCTION queue.scheduler_pass(integer) SET jit = off;
ALTER FUNCTION queue.stats_pass() SET jit = off;

-- Pushes read the push defaults until one finds none (src/settings.rs).
SELECT queue.push_defaults_forget();

-- This database has 0.2.0 now: the launcher serves it (at once when the
-- server runs the new library already).
SELECT queue.announce_database();
