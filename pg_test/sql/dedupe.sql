-- dedupe_key: while a live job with the same (queue, key) exists, a push
-- returns its id and inserts nothing.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('mail', '{"v": 1}', dedupe_key => 'welcome-42') AS first;
SELECT queue_push('mail', '{"v": 2}', dedupe_key => 'welcome-42') AS same_id;
SELECT queue_push('other', '{"v": 3}', dedupe_key => 'welcome-42') AS other_queue_other_job;
SELECT count(*), min(payload::text) FROM queue.all_jobs WHERE queue = 'mail';

-- Still deduplicated while scheduled, processing and retrying.
SELECT queue_push('mail', '{"v": 4}', dedupe_key => 'later', delay => '1 hour') AS scheduled;
SELECT queue_push('mail', '{"v": 5}', dedupe_key => 'later') AS same_scheduled;
SELECT id FROM queue_pop('mail');
SELECT queue_push('mail', '{"v": 6}', dedupe_key => 'welcome-42') AS same_processing;
SELECT queue_fail(1, 'retry me');
SELECT queue_push('mail', '{"v": 7}', dedupe_key => 'welcome-42') AS same_retrying;

-- Once final, the key is free again.
UPDATE queue.jobs SET run_at = now() WHERE id = 1;
SELECT queue_tick() ->> 'promoted' AS promoted;
SELECT id FROM queue_pop('mail');
SELECT queue_ack(1);
SELECT queue_push('mail', '{"v": 8}', dedupe_key => 'welcome-42') AS new_job;
SELECT id, status, dedupe_key, payload FROM queue.all_jobs WHERE queue = 'mail' ORDER BY id;

-- Batch pushes with a key behave like successive pushes.
SELECT queue_push_batch('mail', ARRAY['{"b": 1}', '{"b": 2}']::jsonb[], dedupe_key => 'batch-key');

DROP EXTENSION queue;
