-- Operations: dead letters, retry, delete, purge, cleanup, clear, progress,
-- worker heartbeats and reaping. Empty queues, unknown ids, bad arguments.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- Nothing yet.
SELECT count(*) AS dead FROM queue_dead();
SELECT queue_retry(1) AS unknown_retry, queue_delete(1) AS unknown_delete,
       queue_retry_all('empty') AS retried, queue_purge_dead() AS purged,
       queue_cleanup('0') AS cleaned, queue_clear('empty') AS cleared;
SELECT count(*) AS workers FROM queue_workers();

-- Make dead letters: one failed, one expired, in two queues.
SELECT queue_push('mail', '{"n": 1}', max_attempts => 1);
SELECT queue_push('mail', '{"n": 2}', max_attempts => 1, timeout => '1 millisecond');
SELECT queue_push('sms', '{"n": 3}', max_attempts => 1);
SELECT id FROM queue_pop('mail', 'w1', 2);
SELECT id FROM queue_pop('sms', 'w1');
SELECT queue_fail(1, 'mailbox full');
SELECT queue_fail(3, 'no such number');
SELECT pg_sleep(0.01);
SELECT queue_tick() ->> 'expired' AS expired;
SELECT id, queue, status, attempts, last_error LIKE 'lease expired%' OR last_error = 'mailbox full' OR last_error = 'no such number' AS has_error
  FROM queue_dead() ORDER BY id;
SELECT id, status FROM queue_dead('mail', 1);

-- Retry puts a dead job back once, attempts reset.
SELECT queue_retry(1) AS first, queue_retry(1) AS second;
SELECT status, attempts, finished_at IS NULL AS reopened FROM queue.all_jobs WHERE id = 1;
SELECT id, attempt FROM queue_pop('mail');
SELECT queue_ack(1);
SELECT queue_retry(1) AS completed_is_not_dead;

-- Retry all of a queue; delete; purge.
SELECT queue_retry_all('mail') AS retried;
SELECT id, status FROM queue.all_jobs WHERE queue = 'mail' ORDER BY id;
SELECT queue_delete(2) AS deleted, queue_delete(2) AS again;
SELECT queue_purge_dead('sms') AS purged;
SELECT count(*) AS left_in_sms FROM queue.all_jobs WHERE queue = 'sms';

-- A processing job can be neither deleted nor cleared.
SELECT queue_push('work', '{}'), queue_push('work', '{}'), queue_push('work', '{}', delay => '1 hour');
SELECT id FROM queue_pop('work', 'w2');
SELECT queue_delete(4) AS delete_processing;
SELECT queue_clear('work') AS cleared;
SELECT id, status FROM queue.all_jobs WHERE queue = 'work' ORDER BY id;

-- Clearing a serial group's active job hands the group on.
SELECT queue_push('g', '{}', serial_group => 'G'), queue_push('other', '{}', serial_group => 'G');
SELECT queue_clear('g') AS cleared;
SELECT id, status, group_waiting FROM queue.all_jobs WHERE serial_group = 'G';

-- Cleanup deletes final jobs older than the interval.
SELECT queue_ack(4);
UPDATE queue.finished_jobs SET finished_at = now() - interval '2 days' WHERE id = 4;
SELECT queue_cleanup('1 day') AS cleaned;
SELECT count(*) FROM queue.all_jobs WHERE id = 4;

-- Progress of a running job.
SELECT queue_push('long', '{}');
SELECT id FROM queue_pop('long', 'w3');
SELECT queue_progress(9, 3, 10, 'step 3');
SELECT (queue_job(9) -> 'progress') - 'updated_at'::text AS progress;
SELECT queue_progress(1, 1, 2) AS not_processing;

-- Heartbeats, health, reaping.
SELECT queue_heartbeat('w3', '{"host": "a"}');
SELECT queue_heartbeat('w9');
SELECT worker, healthy, running_jobs, info FROM queue_workers();
UPDATE queue.workers SET last_heartbeat = now() - interval '10 minutes' WHERE worker = 'w3';
SELECT worker, healthy, stale_since IS NULL AS not_marked_yet FROM queue_workers('2 minutes');
SELECT queue_tick() ->> 'stale_workers' AS marked_stale;
SELECT worker, stale_since IS NOT NULL AS stale FROM queue_workers();
SELECT queue_reap_workers('5 minutes') AS released_jobs;
SELECT worker FROM queue_workers();
SELECT status, attempts, last_error FROM queue.all_jobs WHERE id = 9;

-- Bad arguments.
SELECT queue_dead('bad name');
SELECT queue_dead(NULL, 0);
SELECT queue_purge_dead(NULL, '-1 day');
SELECT queue_cleanup(NULL);
SELECT queue_cleanup('-1 day');
SELECT queue_clear('bad name');
SELECT queue_retry_all('bad name');
SELECT queue_progress(9, 11, 10);
SELECT queue_progress(9, 1, 0);
SELECT queue_heartbeat('');
SELECT queue_reap_workers('-1 second');

DROP EXTENSION queue;
