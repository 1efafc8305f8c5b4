-- Serial groups: one active job per group, (priority, id) order inside the
-- group, a started job holds the group until it is final.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- Three jobs of one group and one free job: only the group's best job and
-- the free one are claimable.
SELECT queue_push('q', '{"n": 1}', priority => 5, serial_group => 'customer-42');
SELECT queue_push('q', '{"n": 2}', priority => 1, serial_group => 'customer-42');
SELECT queue_push('q', '{"n": 3}', priority => 1, serial_group => 'customer-42');
SELECT queue_push('q', '{"n": 4}', priority => 9);
SELECT id, priority, serial_group FROM queue_peek('q', 10);
SELECT id, payload FROM queue_pop('q', batch => 10);

-- While job 2 runs, a newer job with a better priority waits.
SELECT queue_push('q', '{"n": 5}', priority => -20, serial_group => 'customer-42');
SELECT count(*) AS claimable FROM queue_pop('q', batch => 10);
-- Ack frees the group: the best waiting job (5) is next, then 3, then 1.
SELECT queue_ack(2);
SELECT id FROM queue_pop('q', batch => 10);
SELECT queue_ack(5);
SELECT id FROM queue_pop('q', batch => 10);

-- A retrying job holds its group, even against better newcomers.
SELECT queue_fail(3, 'boom');
SELECT queue_push('q', '{"n": 6}', priority => -20, serial_group => 'customer-42');
SELECT id, status, group_waiting FROM queue.all_jobs WHERE serial_group = 'customer-42' ORDER BY id;
SELECT count(*) AS claimable FROM queue_pop('q', batch => 10);
UPDATE queue.jobs SET run_at = now() WHERE id = 3;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, attempt FROM queue_pop('q', batch => 10);
SELECT queue_ack(3);
SELECT id FROM queue_pop('q', batch => 10);
SELECT queue_fail(6, 'permanent', permanent => true);
SELECT id FROM queue_pop('q', batch => 10);
SELECT queue_ack(1);

-- A not-yet-started active job is overtaken by a better newcomer.
SELECT queue_push('q', '{"n": 7}', priority => 0, serial_group => 'g2');
SELECT queue_push('q', '{"n": 8}', priority => -1, serial_group => 'g2');
SELECT id, group_waiting FROM queue.all_jobs WHERE serial_group = 'g2' ORDER BY id;

-- A job with a future run_at does not block its group before it is due.
SELECT queue_push('q', '{"n": 9}', priority => -50, serial_group => 'g2', delay => '1 hour');
SELECT id FROM queue_pop('q');
SELECT queue_ack(8);
-- Once due it competes by priority with the waiting job 7.
UPDATE queue.jobs SET run_at = now() WHERE id = 9;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id, status, group_waiting FROM queue.all_jobs WHERE serial_group = 'g2' ORDER BY id;
SELECT id FROM queue_pop('q');

-- Groups span queues: a job of the group in another queue waits too.
SELECT queue_push('other', '{"n": 10}', serial_group => 'g2');
SELECT count(*) AS blocked_in_other_queue FROM queue_pop('other');
SELECT queue_ack(9);
SELECT id FROM queue_pop('q');
SELECT queue_ack(7);
SELECT id FROM queue_pop('other');

-- Expired and cancelled jobs free the group.
SELECT queue_push('q', '{"n": 11}', serial_group => 'g3', timeout => '1 millisecond', max_attempts => 1);
SELECT queue_push('q', '{"n": 12}', serial_group => 'g3');
SELECT queue_push('q', '{"n": 13}', serial_group => 'g3');
SELECT id FROM queue_pop('q');
SELECT pg_sleep(0.01);
SELECT queue_tick() ->> 'expired' AS expired;
SELECT queue_cancel(12);
SELECT id FROM queue_pop('q');

-- A batch claims at most one job per group.
SELECT queue_push_batch('b', ARRAY['{}', '{}', '{}']::jsonb[], serial_group => 'ga');
SELECT queue_push_batch('b', ARRAY['{}', '{}']::jsonb[], serial_group => 'gb');
SELECT queue_push('b', '{}');
SELECT id, serial_group FROM queue_pop('b', batch => 10);

-- The database itself refuses a second active job in a group, whatever
-- the query: the unique index jobs_group_active.
UPDATE queue.jobs SET group_waiting = false WHERE serial_group = 'ga';
SELECT serial_group, count(*) FROM queue.all_jobs
 WHERE status = 'processing' AND serial_group IS NOT NULL GROUP BY 1 ORDER BY 1;

-- The lock key is a keyed hash of the group name in a fixed namespace:
-- stable, distinct, and not the CRC-32 whose collisions anyone can compute.
SELECT queue.group_lock_key('customer-42') >> 32 = x'71756575'::bigint AS namespaced,
       queue.group_lock_key('customer-42') = queue.group_lock_key('customer-42') AS stable,
       queue.group_lock_key('customer-42') <> queue.group_lock_key('customer-43') AS distinct_keys,
       queue.group_lock_key('customer-42') & x'FFFFFFFF'::bigint <> queue.crc32_of('customer-42') AS not_the_crc;

DROP EXTENSION queue;
