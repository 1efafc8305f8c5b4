-- queue_stats, queue_list, queue_size, queue_metrics, queue_health and
-- queue_prometheus. The counters follow every status change (also through
-- savepoints, rollbacks and unprivileged roles) and agree with the jobs
-- themselves; deleting history changes neither the totals nor the metrics.
-- This database is not the one the background workers serve, so the
-- counters go through each backend's own rows of queue.stats.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    v_state text; v_message text; v_hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
    RETURN v_state || ': ' || v_message || coalesce(E'\nHINT: ' || nullif(v_hint, ''), '');
END;
$f$;

-- The gauges of a queue next to the same numbers counted from its jobs.
CREATE FUNCTION pg_temp.gauges(q text)
RETURNS TABLE (source text, pending bigint, scheduled bigint, processing bigint, retrying bigint, total_size bigint)
LANGUAGE sql AS $f$
    SELECT 'stats', (s ->> 'pending')::bigint, (s ->> 'scheduled')::bigint,
           (s ->> 'processing')::bigint, (s ->> 'retrying')::bigint, (s ->> 'total_size')::bigint
      FROM queue_stats(q) s
    UNION ALL
    SELECT 'jobs', count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'scheduled'),
           count(*) FILTER (WHERE status = 'processing'), count(*) FILTER (WHERE status = 'retrying'),
           count(*) FILTER (WHERE status IN ('pending', 'scheduled', 'retrying'))
      FROM queue.all_jobs WHERE queue = q;
$f$;

-- The cumulative totals of a queue.
CREATE FUNCTION pg_temp.totals(q text)
RETURNS TABLE (pushed bigint, popped bigint, completed bigint, failed bigint, expired bigint,
               cancelled bigint, retried bigint, deleted bigint)
LANGUAGE sql AS $f$
    SELECT (s ->> 'total_pushed')::bigint, (s ->> 'total_popped')::bigint, (s ->> 'completed')::bigint,
           (s ->> 'failed')::bigint, (s ->> 'expired')::bigint, (s ->> 'cancelled')::bigint,
           (s ->> 'retried')::bigint, (s ->> 'deleted')::bigint
      FROM queue_stats(q) s;
$f$;

-- Empty: every count is zero, nothing is old, no queue is listed.
SELECT queue_stats() - 'last_activity' AS empty_stats;
SELECT queue_stats('never-used') - 'last_activity' - 'queue' AS unknown_queue;
SELECT queue_size('never-used') AS size, count(*) AS listed FROM queue_list();
SELECT queue_metrics() - 'since' AS empty_metrics;

-- Pushes of every kind: named and numeric priorities, delayed, batch.
SELECT queue_push('mail', '{"n": 1}', 'high') AS id;
SELECT queue_push('mail', '{"n": 2}') AS id;
SELECT queue_push('mail', '{"n": 3}', 7) AS id;
SELECT queue_push('mail', '{"n": 4}', delay => '1 hour') AS id;
SELECT count(*) AS pushed FROM queue_push_batch('mail', ARRAY['{"n": 5}', '{"n": 6}']::jsonb[], 'low');
SELECT count(*) AS pushed FROM queue_push_batch('sms', ARRAY['{}', '{}', '{}']::jsonb[]);
SELECT * FROM pg_temp.gauges('mail');
SELECT queue_stats('mail') -> 'priority_breakdown' AS by_priority;
SELECT queue_size('mail') AS mail, queue_size('sms') AS sms;

-- A deduplicated push that returns the live job's id is no new job.
SELECT queue_push('sms', '{}', dedupe_key => 'k') = queue_push('sms', '{}', dedupe_key => 'k') AS same_job;
SELECT pushed FROM pg_temp.totals('sms');

-- Claim, finish, fail: the gauges move, the totals grow.
SELECT id FROM queue_pop('mail', 'w1', 3);
SELECT queue_ack(1) AS acked;
SELECT queue_fail(2, 'boom', retry_in => '0') AS fail_to_pending;
SELECT queue_fail(3, 'boom', permanent => true) AS fail_permanently;
SELECT * FROM pg_temp.gauges('mail');
SELECT * FROM pg_temp.totals('mail');
SELECT id FROM queue_pop('mail', 'w1');
SELECT queue_fail(2, 'again') AS fail_to_retrying;
SELECT * FROM pg_temp.gauges('mail');

-- Batch ack, cancel, delete, clear, retry of a dead job.
SELECT id FROM queue_pop('mail', 'w1', 2);
SELECT queue_ack(ARRAY[5, 6]::bigint[]) AS acked;
SELECT queue_cancel(4) AS cancelled;
SELECT queue_delete(7) AS deleted_pending;
SELECT queue_clear('sms') AS cleared;
SELECT queue_retry(3) AS retried_dead;
SELECT * FROM pg_temp.gauges('mail');
SELECT * FROM pg_temp.totals('mail');
SELECT * FROM pg_temp.gauges('sms');
SELECT * FROM pg_temp.totals('sms');

-- A rolled-back savepoint or transaction takes its tallies with it; inside
-- the transaction the counters already include its own changes.
BEGIN;
SELECT queue_push('mail', '{}') > 0 AS pushed;
SAVEPOINT s;
SELECT queue_push('mail', '{}') > 0 AS pushed;
SELECT queue_size('mail') AS size_in_savepoint;
ROLLBACK TO s;
SELECT queue_size('mail') AS size_after_rollback_to;
COMMIT;
BEGIN;
SELECT queue_push('mail', '{}') > 0 AS pushed;
ROLLBACK;
SELECT * FROM pg_temp.gauges('mail');

-- An unprivileged worker's commits are counted too.
CREATE ROLE regress_stats_worker;
GRANT queue_producer, queue_worker TO regress_stats_worker;
SET ROLE regress_stats_worker;
SELECT queue_push('mail', '{}') > 0 AS pushed;
SELECT count(*) AS claimed FROM queue_pop('mail', 'w2', 2);
RESET ROLE;
SELECT * FROM pg_temp.gauges('mail');
SELECT pushed, popped FROM pg_temp.totals('mail');

-- Expired leases and promoted jobs go through the maintenance pass.
SELECT queue_push('lease', '{}', max_attempts => 1, timeout => '1 millisecond') AS id;
SELECT queue_push('lease', '{}', max_attempts => 2, timeout => '1 millisecond') AS id;
SELECT count(*) AS claimed FROM queue_pop('lease', 'w3', 2);
SELECT pg_sleep(0.01);
SELECT t ->> 'expired' AS expired, t ->> 'retried' AS retried FROM queue_tick() t;
SELECT * FROM pg_temp.gauges('lease');
UPDATE queue.jobs SET run_at = now() WHERE queue = 'lease' AND status = 'retrying';
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT * FROM pg_temp.gauges('lease');
SELECT * FROM pg_temp.totals('lease');

-- queue_list: one row per queue, the same numbers as queue_stats.
SELECT queue, total_size, pending, scheduled, processing, retrying, completed, failed, expired,
       cancelled, total_pushed, total_popped, last_activity IS NOT NULL AS active
  FROM queue_list();
SELECT (SELECT sum(total_pushed) FROM queue_list()) = (queue_stats() ->> 'total_pushed')::bigint AS list_adds_up;

-- Metrics: what finished in the window, and the same after the history
-- is deleted (the run and wait times are kept in queue.job_times).
SELECT queue_metrics('mail') - 'since' - 'avg_run_ms' - 'p95_run_ms' - 'p99_run_ms'
       - 'avg_wait_ms' - 'p95_wait_ms' - 'p99_wait_ms' - 'throughput_per_minute' AS mail_metrics;
CREATE TEMP TABLE metrics_before AS SELECT queue_metrics() AS m, queue_metrics('mail') AS mail;
SELECT (SELECT count(*) FROM queue.all_jobs WHERE status IN ('completed', 'failed', 'expired', 'cancelled')) AS final_jobs,
       queue_cleanup('0') AS deleted;
-- (throughput_per_minute divides by the time since the window began, which
-- moves on between two statements.)
SELECT m - 'throughput_per_minute' - 'since' = queue_metrics() - 'throughput_per_minute' - 'since' AS all_metrics_kept,
       mail - 'throughput_per_minute' - 'since' = queue_metrics('mail') - 'throughput_per_minute' - 'since' AS mail_metrics_kept
  FROM metrics_before;
SELECT * FROM pg_temp.totals('mail');
SELECT count(*) AS archived_rows, sum(cardinality(run_ms)) AS archived_jobs FROM queue.job_times;

-- Health: this database is not served by the workers, and says so.
SELECT h -> 'healthy' AS healthy, h -> 'problems' AS problems, h -> 'backlog' AS backlog,
       h -> 'processing' AS processing, h -> 'stale_workers' AS stale
  FROM queue_health() h;
SELECT queue_heartbeat('old-worker');
UPDATE queue.workers SET last_heartbeat = now() - interval '1 hour';
SELECT queue_tick() ->> 'stale_workers' AS marked;
SELECT queue_health() -> 'stale_workers' AS stale;

-- Prometheus text: one gauge line per queue and status, one counter per event.
SELECT regexp_replace(queue_prometheus(), '(_age_seconds\{[^}]*\}) [0-9.]+', '\1 <age>', 'g') AS prometheus;

-- Bad arguments.
SELECT pg_temp.error_of($$SELECT queue_stats('bad name')$$);
SELECT pg_temp.error_of($$SELECT queue_size(NULL)$$);
SELECT pg_temp.error_of($$SELECT queue_metrics('mail', '0')$$);
SELECT pg_temp.error_of($$SELECT queue_metrics('mail', '-1 hour')$$);
SELECT pg_temp.error_of($$SELECT queue_metrics('mail', NULL)$$);
SELECT pg_temp.error_of($$SELECT queue_metrics('no/slash')$$);

DROP EXTENSION queue;
DROP ROLE regress_stats_worker;
