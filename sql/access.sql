-- Per-queue access: an admin confines a role to named queues, separately for
-- producing, working and reading.
--
-- The extension's roles say which functions a role may call at all
-- (sql/security.sql); a rule here says on which queues. A role bound by no
-- rule works as if rules did not exist. A role bound by at least one rule
-- (its own, or one of a role it is a member of) is confined:
--
--   produce  push (and push_batch), schedule, trigger, cancel, retry,
--            delete, clear, purge: only into / on queues its produce rules
--            match; its serial groups must be in its namespace (a group
--            named like one of those queues, or starting with such a name
--            and ':'), so it can neither demote nor squat another team's
--            group
--   work     pop, ack, fail, touch, progress, reaping: only jobs of queues
--            its work rules match
--   read     peek, size, job, stats, list, metrics, dead letters,
--            schedules, timeline, Prometheus: only queues any of its rules
--            match (what it produces or works it may also read)
--
-- A confined call on a queue outside its rules is refused with SQLSTATE
-- 42501 and changes nothing. A call on a job by id (ack, fail, touch,
-- progress, cancel, retry, delete, queue_job) treats another queue's job
-- as unknown: it returns false / NULL, so ids reveal nothing either.
-- Listings of every queue show only the queues the role may read.
-- Superusers are never confined.

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
