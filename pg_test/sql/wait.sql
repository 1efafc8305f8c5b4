-- queue_pop's wait: checked like every interval, empty when nothing came.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- Out of range: refused with 22023, nothing claimed, nothing changed.
SELECT * FROM queue_pop('w', 'worker', 1, wait => '-1 second');
SELECT * FROM queue_pop('w', 'worker', 1, wait => '100 years');
SELECT * FROM queue_pop('w', 'worker', 1, wait => '1 mon -30 days');

-- Nothing pushed: an empty result after about the wait, not before.
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) AS claimed FROM queue_pop('w', 'worker', 1, wait => '200 milliseconds');
SELECT clock_timestamp() - :'t0'::timestamptz BETWEEN interval '190 ms' AND interval '2 s' AS waited;

-- A job already there is claimed at once; zero or NULL waits do not wait.
SELECT queue_push('w', '{}') AS id \gset
SELECT clock_timestamp() AS t0 \gset
SELECT id = :id AS claimed FROM queue_pop('w', 'worker', 1, wait => '10 seconds');
SELECT count(*) AS claimed FROM queue_pop('w', 'worker', 1, wait => '0');
SELECT count(*) AS claimed FROM queue_pop('w', 'worker', 1, wait => NULL);
SELECT clock_timestamp() - :'t0'::timestamptz < interval '1 s' AS quick;

-- The job claimed by the waiting call completes like any other.
SELECT queue_ack(:id);
SELECT queue_stats('w') -> 'completed' AS completed;
DROP EXTENSION queue;
