-- Finishing jobs: ack, fail and retries, touch, cancel, leases.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('work', '{"n": 1}');
SELECT id, attempt FROM queue_pop('work');

-- Ack with the current attempt completes it; a second ack changes nothing.
SELECT queue_ack(1, '{"sent": true}', attempt => 1);
SELECT queue_ack(1);
SELECT status, result, finished_at IS NOT NULL AS finished FROM queue.all_jobs WHERE id = 1;
SELECT queue_ack(999) AS unknown;

-- Ack of a job that is not processing is false.
SELECT queue_push('work', '{"n": 2}');
SELECT queue_ack(2) AS pending_not_acked;

-- Fail with attempts left: retrying with exponential backoff (10 s base).
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(2, 'smtp down');
SELECT status, attempts, last_error,
       run_at - now() BETWEEN interval '9 seconds' AND interval '10 seconds' AS first_backoff
  FROM queue.all_jobs WHERE id = 2;
-- Not claimable before due; promoted by the maintenance pass when due.
SELECT count(*) AS not_yet FROM queue_pop('work');
UPDATE queue.jobs SET run_at = now() WHERE id = 2;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(2, 'smtp still down');
SELECT run_at - now() BETWEEN interval '18 seconds' AND interval '20 seconds' AS second_backoff
  FROM queue.all_jobs WHERE id = 2;
UPDATE queue.jobs SET run_at = now() WHERE id = 2;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
-- The third attempt was the last: failed, a dead letter.
SELECT queue_fail(2, 'gave up');
SELECT status, attempts, last_error FROM queue.all_jobs WHERE id = 2;
SELECT queue_fail(2, 'again') IS NULL AS no_change;

-- A custom schedule, its last entry repeating; retry_in overrides once.
SELECT queue_push('work', '{"n": 3}', max_attempts => 5,
                  retry_delays => '{1 minute, 5 minutes}');
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(3, 'e1');
SELECT round(extract(epoch FROM run_at - now())) AS delay_seconds FROM queue.all_jobs WHERE id = 3;
UPDATE queue.jobs SET run_at = now() WHERE id = 3;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(3, 'e2');
SELECT round(extract(epoch FROM run_at - now())) AS delay_seconds FROM queue.all_jobs WHERE id = 3;
UPDATE queue.jobs SET run_at = now() WHERE id = 3;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(3, 'e3');
SELECT round(extract(epoch FROM run_at - now())) AS delay_seconds FROM queue.all_jobs WHERE id = 3;
UPDATE queue.jobs SET run_at = now() WHERE id = 3;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(3, 'e4', retry_in => '42 seconds');
SELECT round(extract(epoch FROM run_at - now())) AS delay_seconds FROM queue.all_jobs WHERE id = 3;

-- retry_in of zero puts the job straight back in line.
SELECT queue_push('work', '{"n": 4}');
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(4, 'try again now', retry_in => '0');
SELECT id, attempt FROM queue_pop('work');

-- permanent skips the remaining attempts.
SELECT queue_fail(4, 'bad input', permanent => true);
SELECT status, attempts, last_error FROM queue.all_jobs WHERE id = 4;

-- Stale attempts: after a re-claim, the old claim can neither ack, fail
-- nor touch.
SELECT queue_push('work', '{"n": 5}', timeout => '1 millisecond', backoff_base => '0');
SELECT id, attempt FROM queue_pop('work');
SELECT pg_sleep(0.01);
SELECT queue_tick() ->> 'retried' AS lease_expired_and_retried;
SELECT status, attempts, last_error LIKE 'lease expired%' AS lease_error FROM queue.all_jobs WHERE id = 5;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('work');
SELECT queue_ack(5, attempt => 1) AS stale_ack,
       queue_fail(5, 'x', attempt => 1) IS NULL AS stale_fail,
       queue_touch(5, attempt => 1) AS stale_touch;
SELECT status, attempts FROM queue.all_jobs WHERE id = 5;
SELECT queue_touch(5, '1 hour', attempt => 2) AS touched;
SELECT lease_until - now() > interval '59 minutes' AS lease_extended FROM queue.all_jobs WHERE id = 5;
SELECT queue_ack(5, attempt => 2) AS current_ack;

-- A lease that runs out on the last attempt ends expired.
SELECT queue_push('work', '{"n": 6}', timeout => '1 millisecond', max_attempts => 1);
SELECT id, attempt FROM queue_pop('work');
SELECT pg_sleep(0.01);
SELECT queue_tick() ->> 'expired' AS expired;
SELECT status, finished_at IS NOT NULL AS finished FROM queue.all_jobs WHERE id = 6;

-- touch without extend renews the job's own timeout.
SELECT queue_push('work', '{"n": 7}', timeout => '10 minutes');
SELECT id FROM queue_pop('work');
UPDATE queue.jobs SET lease_until = now() + interval '1 second' WHERE id = 7;
SELECT queue_touch(7);
SELECT round(extract(epoch FROM lease_until - now())) AS lease_seconds FROM queue.all_jobs WHERE id = 7;

-- Cancel: waiting jobs only.
SELECT queue_push('work', '{"n": 8}'), queue_push('work', '{"n": 9}', delay => '1 hour');
SELECT queue_cancel(8) AS pending, queue_cancel(9) AS scheduled,
       queue_cancel(7) AS processing, queue_cancel(1) AS completed, queue_cancel(999) AS unknown;
SELECT id, status FROM queue.all_jobs WHERE id IN (7, 8, 9) ORDER BY id;

-- Batch ack of current claims only.
SELECT queue_push_batch('bulk', ARRAY['{}', '{}', '{}', '{}']::jsonb[]);
SELECT count(*) FROM queue_pop('bulk', batch => 3);
SELECT queue_ack(ARRAY[10, 11, 12, 13, 999]::bigint[]) AS acked;
SELECT id, status FROM queue.all_jobs WHERE queue = 'bulk' ORDER BY id;

-- Retention: old final jobs are deleted by the maintenance pass.
UPDATE queue.finished_jobs SET finished_at = now() - interval '8 days' WHERE id IN (1, 2);
SELECT queue_tick() ->> 'deleted' AS deleted;
SELECT count(*) FROM queue.all_jobs WHERE id IN (1, 2);

-- Every fail records its own error, the last one too (NULL when none is
-- given), and a final job keeps everything it had in the live table.
SELECT queue_push('last', '{"k": 1}', max_attempts => 2, retry_delays => '{0 seconds}') AS id \gset
SELECT count(*) FROM queue_pop('last');
SELECT queue_fail(:id, 'first try');
SELECT count(*) FROM queue_pop('last');
SELECT queue_fail(:id);
SELECT status, attempts, last_error IS NULL AS no_error, payload, max_attempts, finished_at IS NOT NULL AS finished
  FROM queue.finished_jobs WHERE id = :id;
SELECT count(*) AS still_live FROM queue.jobs WHERE id = :id;

DROP EXTENSION queue;
