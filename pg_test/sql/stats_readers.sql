-- The readers over every queue: queue_stats(NULL), queue_list and
-- queue_health sum the counters by priority or by queue in one pass
-- (queue.stats_sums) and find the oldest claimable job by id, falling back
-- to a probe of each (queue, priority) when the first 1,000 live jobs hold
-- none. Both ways agree with the jobs themselves, also for a confined role.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- The oldest claimable job counted from the jobs, and what the readers say.
CREATE FUNCTION pg_temp.oldest_counted() RETURNS numeric
LANGUAGE sql AS $f$
    SELECT round(extract(epoch FROM now() - min(j.created_at)), 3)
      FROM queue.jobs j WHERE j.status = 'pending' AND NOT j.group_waiting
$f$;
CREATE FUNCTION pg_temp.readers()
RETURNS TABLE (counted numeric, stats numeric, health numeric, stats_size bigint, list_size bigint)
LANGUAGE sql AS $f$
    SELECT pg_temp.oldest_counted(),
           (queue_stats() ->> 'oldest_pending_age')::numeric,
           (queue_health() ->> 'oldest_pending_age')::numeric,
           (queue_stats() ->> 'total_size')::bigint,
           (SELECT sum(l.total_size)::bigint FROM queue_list() l)
$f$;

-- Nothing waits.
SELECT * FROM pg_temp.readers();

-- 1,000 delayed jobs first, then claimable ones in three queues and two
-- priorities, the oldest of them pushed (as its created_at says) an hour
-- ago: the first 1,000 jobs by id hold no claimable one, so the readers
-- probe each (queue, priority).
SELECT count(*) AS delayed FROM queue_push_batch('later', array_fill('{}'::jsonb, ARRAY[1000]), delay => '1 day');
SELECT count(*) AS pushed
  FROM generate_series(1, 6) i, LATERAL queue_push('now_' || (i % 3), '{}', priority => (i % 2) * 10);
UPDATE queue.jobs SET created_at = created_at - interval '1 hour'
 WHERE id = (SELECT min(id) FROM queue.jobs WHERE queue = 'now_2');
SELECT counted = stats AS stats_agrees, counted = health AS health_agrees, counted >= 3600 AS an_hour,
       stats_size, list_size
  FROM pg_temp.readers();

-- Without the delayed jobs the oldest claimable job is among the first
-- 1,000 by id.
SELECT queue_clear('later') AS cleared;
SELECT counted = stats AS stats_agrees, counted = health AS health_agrees, counted >= 3600 AS an_hour,
       stats_size, list_size
  FROM pg_temp.readers();

-- By priority and by queue: the same totals as one queue at a time.
SELECT queue_stats() -> 'priority_breakdown' AS breakdown;
SELECT queue, total_size, pending, paused FROM queue_list() ORDER BY queue;
SELECT queue_pause('now_1') IS NOT NULL AS paused_one;
SELECT queue, paused FROM queue_list() WHERE paused;

-- A role confined to now_0 sees only now_0, in every reader.
CREATE ROLE regress_readers_confined LOGIN;
GRANT queue_admin TO regress_readers_confined;
SELECT queue_grant_access('regress_readers_confined', 'read', 'now_0') IS NOT NULL AS granted;
SET ROLE regress_readers_confined;
SELECT (queue_stats() ->> 'total_size')::bigint AS confined_size,
       queue_stats() -> 'priority_breakdown' AS confined_breakdown,
       (queue_stats() ->> 'oldest_pending_age')::numeric BETWEEN 0 AND 3599 AS oldest_of_its_own;
SELECT queue, total_size FROM queue_list();
RESET ROLE;

DROP EXTENSION queue;
DROP ROLE regress_readers_confined;
