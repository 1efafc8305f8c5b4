-- queue.keep_completed = off: an acked job is deleted in its ack instead of
-- kept as history; only its run and wait times stay, for queue_metrics.
-- Failed, expired and cancelled jobs are still kept.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SHOW queue.keep_completed;
-- A value that is not a boolean is refused and changes nothing.
DO $$
BEGIN
    SET queue.keep_completed = 'sometimes';
EXCEPTION WHEN others THEN
    RAISE NOTICE '%: %', SQLSTATE, SQLERRM;
END $$;
SHOW queue.keep_completed;

SET queue.keep_completed = off;
SELECT queue_push('lean', jsonb_build_object('n', n)) FROM generate_series(1, 4) n;
SELECT id, attempt FROM queue_pop('lean', batch => 4);

-- A stale attempt and a job that is not processing change nothing.
SELECT queue_ack(1, attempt => 2) AS stale;
SELECT queue_ack(1, '{"ignored": true}') AS single, queue_ack(ARRAY[2, 3]::bigint[]) AS batch;
SELECT queue_ack(1) AS again, queue_ack(ARRAY[1, 2, 3]::bigint[]) AS batch_again;
-- Gone from the live table and from history; job 4 is still processing.
SELECT id, status FROM queue.all_jobs ORDER BY id;
SELECT queue_job(1) IS NULL AS not_found;

-- The counters and queue_metrics count them like kept jobs.
SELECT queue_stats('lean') -> 'completed' AS completed,
       queue_stats('lean') -> 'processing' AS processing;
SELECT m -> 'completed' AS completed, m -> 'executions' AS executions,
       (m -> 'avg_run_ms')::float8 >= 0 AS has_run_time
  FROM queue_metrics('lean') m;
SELECT sum(completed) AS archived_completed, sum(cardinality(run_ms)) AS run_times,
       sum(cardinality(wait_ms)) AS wait_times
  FROM queue.job_times WHERE queue = 'lean';

-- A final failure is a dead letter: kept whatever the setting.
SELECT queue_fail(4, 'broken', permanent => true);
SELECT id, status, last_error FROM queue.all_jobs ORDER BY id;

-- A serial group moves on when its job is deleted by the ack.
SELECT queue_push('lean', '{"g": 1}', serial_group => 'g'),
       queue_push('lean', '{"g": 2}', serial_group => 'g');
SELECT id FROM queue_pop('lean', batch => 2);
SELECT queue_ack(5);
SELECT id FROM queue_pop('lean', batch => 2);
SELECT queue_ack(ARRAY[6]::bigint[]);
SELECT count(*) AS live FROM queue.jobs;

-- SET LOCAL: one transaction keeps its completed job, the session default
-- (off) applies again after it.
SELECT queue_push('lean', '{"n": 7}'), queue_push('lean', '{"n": 8}');
BEGIN;
SET LOCAL queue.keep_completed = on;
SELECT id FROM queue_pop('lean');
SELECT queue_ack(7);
COMMIT;
SELECT id FROM queue_pop('lean');
SELECT queue_ack(8);
SELECT id, status FROM queue.finished_jobs ORDER BY id;

RESET queue.keep_completed;
SHOW queue.keep_completed;
DROP EXTENSION queue;
