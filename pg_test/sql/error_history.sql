-- queue_job's errors: every failed attempt, lapsed leases included, in order.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('hist', '{}', max_attempts => 3, timeout => '1 millisecond', backoff_base => '0') AS id \gset
SELECT attempt FROM queue_pop('hist');
SELECT queue_fail(:id, 'smtp 421', attempt => 1, retry_in => '0 s');
-- The second claim's lease lapses: the expiry records its own error.
SELECT attempt FROM queue_pop('hist');
SELECT pg_sleep(0.01);
SELECT queue_tick() ->> 'retried' AS lease_expired_and_retried;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT attempt FROM queue_pop('hist');
SELECT queue_fail(:id, 'bad address', attempt => 3);
SELECT e ->> 'attempt' AS attempt, left(e ->> 'error', 24) AS error, (e ->> 'at') IS NOT NULL AS dated
  FROM jsonb_array_elements(queue_job(:id) -> 'errors') e;
SELECT queue_job(:id) ->> 'status' AS status, queue_job(:id) ->> 'last_error' AS last_error;

-- A job that never failed has an empty history.
SELECT queue_push('hist', '{}') AS ok \gset
SELECT queue_job(:ok) -> 'errors' AS errors;
DROP EXTENSION queue;
