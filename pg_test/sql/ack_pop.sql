-- Ack the finished jobs and claim the next ones in one call (one commit).
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT count(*) FROM queue_push_batch('work', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}']::jsonb[]);

-- Nothing to ack: a plain claim.
SELECT id, attempt FROM queue_ack_pop('work', 'w1');

-- Job 1 finishes with a result; jobs 2 and 3 are claimed in the same call.
SELECT id, attempt FROM queue_ack_pop('work', 'w1', 2, ack_ids => '{1}', ack_attempts => '{1}',
                                      ack_results => ARRAY['{"sent": true}'::jsonb]);
SELECT id, status, result FROM queue.all_jobs WHERE id = 1;

-- A stale attempt is skipped (the job stays processing); the fresh one is acked.
SELECT id FROM queue_ack_pop('work', 'w1', 1, ack_ids => '{2,3}', ack_attempts => '{7,1}');
SELECT id, status FROM queue.all_jobs WHERE id IN (2, 3, 4) ORDER BY id;

-- Without attempts the current claim is acked; an unknown id is skipped.
SELECT count(*) AS claimed FROM queue_ack_pop('work', ack_ids => '{2,4,999}');
SELECT id, status FROM queue.all_jobs WHERE id IN (2, 4) ORDER BY id;

-- Bad input changes nothing: mismatched or nested arrays, a bad queue name.
SELECT queue_push('work', '{"n": 5}') AS five;
SELECT id FROM queue_pop('work');
SELECT * FROM queue_ack_pop('work', ack_ids => '{5}', ack_attempts => '{1,1}');
SELECT * FROM queue_ack_pop('work', ack_ids => '{5}', ack_results => '{}');
SELECT * FROM queue_ack_pop('work', ack_ids => '{{5}}');
SELECT * FROM queue_ack_pop('bad name!', ack_ids => '{5}');
SELECT * FROM queue_ack_pop('work', batch => 0, ack_ids => '{5}');
SELECT status FROM queue.jobs WHERE id = 5;

-- A serial group is handed on inside the call: the group's next job is
-- claimable by the same call that finishes the previous one.
SELECT queue_push('serial', '{"step": 1}', serial_group => 'order-7') AS s1,
       queue_push('serial', '{"step": 2}', serial_group => 'order-7') AS s2;
SELECT id, payload FROM queue_pop('serial');
SELECT id, payload, serial_group FROM queue_ack_pop('serial', ack_ids => '{6}', ack_attempts => '{1}');

-- queue_ack_batch: many claims in one statement, each with its attempt and
-- result; it returns the ids completed (not the stale or unknown ones).
SELECT count(*) FROM queue_push_batch('batch', array_fill('{}'::jsonb, ARRAY[4]));
SELECT array_agg(id ORDER BY id) AS claimed FROM queue_pop('batch', 'w1', 4);
SELECT queue_ack_batch(ARRAY[8, 9, 10, 999], ARRAY[1, 5, NULL, 1],
                       ARRAY['{"r": 8}', NULL, '{"r": 10}', NULL]::jsonb[]) AS acked;
SELECT id, status, result FROM queue.all_jobs WHERE queue = 'batch' ORDER BY id;
SELECT queue_ack_batch('{9,11}') AS acked_any_attempt, queue_ack_batch('{}') AS nothing;

-- Bad input changes nothing.
SELECT queue_push('batch', '{}') AS twelve;
SELECT id FROM queue_pop('batch', 'w1');
SELECT queue_ack_batch('{12}', '{1,1}');
SELECT queue_ack_batch('{{12}}');
SET queue.max_result_size = 1;
SELECT queue_ack_batch('{12}', '{1}', ARRAY[jsonb_build_object('big', repeat('x', 2000))]);
RESET queue.max_result_size;
SELECT status FROM queue.jobs WHERE id = 12;

-- One id is acked as queue_ack acks it, whatever the arrays' lower bounds:
-- a stale attempt is skipped, the current one completes with its result.
SELECT queue_ack_batch('[5:5]={12}', '[3:3]={2}') AS stale;
SELECT queue_ack_batch('[5:5]={12}', '[3:3]={1}', '[0:0]={"{\"r\": 12}"}') AS acked;
SELECT status, result FROM queue.all_jobs WHERE id = 12;

-- The counters saw every move.
SELECT queue_stats('work') -> 'completed' AS completed, queue_stats('work') -> 'processing' AS processing;
SELECT queue_stats('batch') -> 'completed' AS completed, queue_stats('batch') -> 'processing' AS processing;
DROP EXTENSION queue;
