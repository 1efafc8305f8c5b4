-- Tags: labels to find jobs by, in listings, dead letters, bulk retry and
-- purge, and per-tag counts, served by partial GIN indexes that untagged
-- jobs never enter.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('mail', '{"n": 1}', tags => ARRAY['billing', 'customer:42', 'billing']) AS a,
       queue_push('mail', '{"n": 2}', tags => ARRAY['customer:42']) AS b,
       queue_push('mail', '{"n": 3}') AS c,
       queue_push('mail', '{"n": 4}', tags => '{}') AS d;
SELECT count(*) FROM queue_push_batch('other', ARRAY['{"n": 5}', '{"n": 6}']::jsonb[], tags => ARRAY['billing']);
-- Sorted without duplicates; an empty list is no tags at all.
SELECT id, tags FROM queue.jobs ORDER BY id;
SELECT queue_job(1) -> 'tags' AS tags;

-- Listings by tag, live and final.
SELECT id, queue, tags FROM queue_jobs(tag => 'billing') ORDER BY id;
SELECT id FROM queue_jobs('mail', tag => 'customer:42') ORDER BY id;
SELECT count(*) AS none FROM queue_jobs(tag => 'nobody');

-- Dead letters of one tag: listed, retried, purged.
SELECT count(*) FROM queue_pop('mail', 'w', 10);
SELECT queue_fail(1, 'x', permanent => true), queue_fail(2, 'y', permanent => true),
       queue_fail(3, 'z', permanent => true);
SELECT id, tags FROM queue.finished_jobs ORDER BY id;
SELECT id FROM queue_dead('mail', tag => 'billing');
SELECT queue_stats('mail', tag => 'customer:42') AS customer_42;
SELECT queue_stats(tag => 'billing') ->> 'total' AS billing_total;
SELECT queue_retry_all('mail', tag => 'billing') AS retried;
SELECT id, status, tags FROM queue.all_jobs WHERE queue = 'mail' ORDER BY id;
SELECT queue_purge_dead('mail', tag => 'customer:42') AS purged;
SELECT id, status FROM queue.all_jobs WHERE queue = 'mail' ORDER BY id;

-- The tag filter is served by the index.
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM queue.jobs WHERE tags @> ARRAY['billing'::text COLLATE "C"];
EXPLAIN (COSTS OFF) SELECT id FROM queue.finished_jobs WHERE tags @> ARRAY['billing'::text COLLATE "C"];
RESET enable_seqscan;

-- Bad tags: 22023 and nothing pushed.
\set VERBOSITY sqlstate
SELECT queue_push('bad', '{}', tags => ARRAY['']);
SELECT queue_push('bad', '{}', tags => ARRAY[repeat('x', 65)]);
SELECT queue_push('bad', '{}', tags => ARRAY['ok', NULL]);
SELECT queue_push('bad', '{}', tags => (SELECT array_agg(i::text) FROM generate_series(1, 21) i));
SELECT queue_push_batch('bad', ARRAY['{}']::jsonb[], tags => ARRAY[['a'], ['b']]);
\set VERBOSITY default
SELECT queue_push('bad', '{}', tags => ARRAY['']);
SELECT count(*) AS bad_jobs FROM queue.all_jobs WHERE queue = 'bad';

DROP EXTENSION queue;
