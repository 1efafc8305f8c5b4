-- Pausing a queue: pushes go on, claims get nothing, running jobs finish,
-- and resuming hands the jobs out again.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('mail', '{"n": 1}') AS one, queue_push('mail', '{"n": 2}') AS two,
       queue_push('other', '{}') AS other;
-- A job claimed before the pause is still its worker's to finish.
SELECT id FROM queue_pop('mail', 'w1');
SELECT queue_pause('mail') AS paused, queue_pause('mail') AS paused_again;

-- Pushes are accepted; claims of the paused queue get nothing, waiting or
-- not; other queues are not affected; the running job is acked.
SELECT queue_push('mail', '{"n": 4}') AS four;
SELECT count(*) AS claimed FROM queue_pop('mail', 'w1', 10);
SELECT count(*) AS claimed_waiting FROM queue_pop('mail', 'w1', 10, wait => '50 milliseconds');
SELECT count(*) AS claimed_ack_pop FROM queue_ack_pop('mail', 'w1', 10, ack_ids => '{1}');
SELECT id, status FROM queue.all_jobs WHERE queue = 'mail' ORDER BY id;
SELECT id FROM queue_pop('other', 'w1');

-- It shows: queue_stats, queue_list, queue_settings, queue_health.
SELECT queue_stats('mail') -> 'paused' AS paused, queue_stats('mail') -> 'pending' AS pending,
       queue_stats('other') -> 'paused' AS other_paused, queue_stats() -> 'paused_queues' AS paused_queues;
SELECT queue, pending, paused FROM queue_list();
SELECT queue, paused, paused_by, paused_at IS NOT NULL AS since FROM queue_settings();
SELECT queue_health() -> 'paused_queues' AS paused_queues;

-- Resumed: the jobs are handed out again, in order.
SELECT queue_resume('mail') AS resumed, queue_resume('mail') AS resumed_again;
SELECT id, payload FROM queue_pop('mail', 'w1', 10);
SELECT queue, paused FROM queue_settings();

-- A queue can be paused before it has a job.
SELECT queue_pause('later') AS paused_in_advance;
SELECT queue_push('later', '{}') AS five;
SELECT count(*) AS claimed FROM queue_pop('later');
SELECT queue_resume('later') AS resumed;
SELECT id FROM queue_pop('later');

-- Bad input changes nothing.
SELECT queue_pause('bad name!');
SELECT queue_pause(NULL);
SELECT queue_resume('');
SELECT count(*) AS settings FROM queue_settings() WHERE paused;

-- Only admins pause; a confined admin only the queues its rules cover, and
-- it sees only those.
CREATE ROLE regress_queue_pauser LOGIN;
GRANT queue_admin TO regress_queue_pauser;
SELECT queue_grant_access('regress_queue_pauser', 'produce', 'mail');
SELECT queue_grant_access('regress_queue_pauser', 'read', 'mail');
SELECT queue_pause('other') AS other_paused_by_superuser;
SET ROLE regress_queue_pauser;
SELECT queue_pause('mail') AS mail_paused;
SELECT queue_resume('other');
SELECT queue, paused FROM queue_settings();
SELECT queue_health() -> 'paused_queues' AS paused_queues;
RESET ROLE;
CREATE ROLE regress_queue_pause_app LOGIN;
GRANT queue_worker, queue_producer TO regress_queue_pause_app;
SET ROLE regress_queue_pause_app;
SELECT queue_pause('mail');
SELECT queue_resume('mail');
RESET ROLE;
SELECT queue, paused, paused_by FROM queue_settings();
DROP EXTENSION queue;
DROP ROLE regress_queue_pauser;
DROP ROLE regress_queue_pause_app;
