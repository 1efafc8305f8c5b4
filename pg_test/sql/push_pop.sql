-- Push and claim: order, priorities, delays, batches, peek, size, job.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- Named priorities.
SELECT queue_priority('critical') AS critical, queue_priority('high') AS high,
       queue_priority('normal') AS normal, queue_priority('low') AS low,
       queue_priority(' HIGH ') AS case_and_space, queue_priority('-7') AS numeric_text;

-- Claim order is (priority, id): lower priority first, FIFO within one.
SELECT queue_push('emails', '{"n": 1}');
SELECT queue_push('emails', '{"n": 2}', 'low');
SELECT queue_push('emails', '{"n": 3}', -5);
SELECT queue_push('emails', '{"n": 4}', priority => 'critical');
SELECT queue_push('emails', '{"n": 5}');
SELECT queue_push('emails', '{"n": 6}', delay => '1 hour');
SELECT queue_push('emails', '{"n": 7}', run_at => now() + interval '1 day');
SELECT queue_push('other', '{"n": 8}');

SELECT queue_size('emails') AS size, queue_size('other') AS other, queue_size('nothing-here') AS unknown;
SELECT id, queue, payload, priority, attempts FROM queue_peek('emails', 10);
SELECT id, status FROM queue.all_jobs ORDER BY id;

-- One job per pop, best first; the delayed ones are not claimable.
SELECT id, queue, payload, priority, serial_group, attempt, max_attempts,
       lease_until - now() AS lease
  FROM queue_pop('emails', 'worker-1');
SELECT id, payload, attempt FROM queue_pop('emails', 'worker-1', 3);
SELECT id, payload FROM queue_pop('emails', batch => 10);
SELECT count(*) AS nothing_left FROM queue_pop('emails', batch => 10);
SELECT id, status, worker FROM queue.all_jobs WHERE queue = 'emails' ORDER BY id;

-- A delayed job becomes pending on the maintenance pass once due.
UPDATE queue.jobs SET run_at = now() - interval '1 second' WHERE id = 6;
SELECT queue_tick();
SELECT id, status FROM queue.all_jobs WHERE id IN (6, 7) ORDER BY id;
SELECT id, payload FROM queue_pop('emails');

-- Batch push keeps payload order and shares the options.
SELECT queue_push_batch('batch', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[], 'high');
SELECT queue_push_batch('batch', ARRAY[]::jsonb[]);
SELECT queue_push_batch('batch', ARRAY['{"late": true}']::jsonb[], delay => '1 minute');
SELECT id, status, priority, payload FROM queue.all_jobs WHERE queue = 'batch' ORDER BY id;
SELECT id, payload FROM queue_pop('batch', batch => 2);

-- queue_job shows everything about one job; NULL for an unknown id.
SELECT queue_job(1) ->> 'status' AS status, queue_job(1) -> 'payload' AS payload,
       queue_job(1) ->> 'attempts' AS attempts, queue_job(1) ->> 'worker' AS worker,
       (queue_job(1) ->> 'started_at') IS NOT NULL AS started;
SELECT queue_job(424242) IS NULL AS unknown_is_null;

-- Any JSON value is a payload.
SELECT queue_push('shapes', '[1, 2]'), queue_push('shapes', '"text"'), queue_push('shapes', 'null');
SELECT payload FROM queue_peek('shapes', 5);

DROP EXTENSION queue;
