-- The scheduler: every schedule kind, upsert by name, trigger, timeline,
-- firing through queue_tick (the scheduler service's code), and errors.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;
SHOW queue.timezone;

SELECT queue_schedule('every-5', '*/5 * * * *', 'reports') > 0 AS created;
SELECT queue_schedule('workdays', '0 9 * * mon-fri', 'reports', '{"kind": "digest"}', priority => -10) > 0 AS created;
SELECT queue_schedule('hourly', '@hourly', 'maintenance') > 0 AS created;
SELECT queue_schedule('heartbeat', 'every 30 seconds', 'pings') > 0 AS created;
SELECT queue_schedule('launch', 'at 2030-01-01 00:00+00', 'launches') > 0 AS created;
SELECT queue_schedule('by-hand', 'manual', 'adhoc', '{"x": 1}') > 0 AS created;

SELECT name, kind, schedule, queue, enabled, last_run_at, last_job_id,
       next_run_at IS NOT NULL AS has_next
  FROM queue_schedules();

-- The next runs follow the schedule.
SELECT name, extract(minute FROM next_run_at)::int % 5 = 0 AS on_the_5,
       next_run_at > now() AS in_future
  FROM queue_schedules() WHERE name = 'every-5';
SELECT round(extract(epoch FROM next_run_at - now())) AS heartbeat_in_seconds
  FROM queue_schedules() WHERE name = 'heartbeat';
SELECT next_run_at = '2030-01-01 00:00+00' AS launch_at FROM queue_schedules() WHERE name = 'launch';

-- Upsert by name: same id, new definition.
SELECT queue_schedule('hourly', '@daily', 'maintenance') = (SELECT id FROM queue.schedules WHERE name = 'hourly') AS same_id;
SELECT kind, schedule FROM queue_schedules() WHERE name = 'hourly';

-- Manual trigger pushes now; the regular next run does not move.
SELECT queue_trigger('by-hand') AS job;
SELECT queue, payload, status FROM queue.all_jobs;
SELECT last_job_id, next_run_at IS NULL AS manual_has_no_next FROM queue_schedules() WHERE name = 'by-hand';

-- A due schedule fires on the scheduler pass, once, and moves on.
UPDATE queue.schedules SET next_run_at = now() - interval '1 hour' WHERE name IN ('heartbeat', 'every-5', 'launch');
SELECT queue_tick() ->> 'fired' AS fired;
SELECT queue_tick() ->> 'fired' AS fired_again;
SELECT queue, count(*) FROM queue.all_jobs GROUP BY queue ORDER BY queue;
SELECT name, enabled, last_job_id IS NOT NULL AS ran, next_run_at > now() AS next_in_future
  FROM queue_schedules() WHERE name IN ('heartbeat', 'every-5', 'launch') ORDER BY name;

-- The timeline: soonest first, bounded by horizon and max_rows.
SELECT count(*) AS rows, bool_and(NOT is_due) AS none_due,
       array_agg(run_at) = array_agg(run_at ORDER BY run_at) AS soonest_first,
       bool_and(run_at <= now() + interval '1 hour') AS within_horizon
  FROM queue_timeline('1 hour', 5);
SELECT count(*) AS heartbeats_in_5_minutes FROM queue_timeline('5 minutes', 100) WHERE name = 'heartbeat';
UPDATE queue.schedules SET next_run_at = now() - interval '1 minute' WHERE name = 'workdays';
SELECT name, is_due FROM queue_timeline('1 minute', 1);

-- Unschedule.
SELECT queue_unschedule('every-5') AS removed, queue_unschedule('every-5') AS again;

-- Errors: a SQLSTATE, the bad value, the valid forms; nothing changes.
SELECT queue_schedule('bad', '* * * *', 'q');
SELECT queue_schedule('bad', '61 * * * *', 'q');
SELECT queue_schedule('bad', '0 0 31 2 *', 'q');
SELECT queue_schedule('bad', 'every 0 seconds', 'q');
SELECT queue_schedule('bad', 'every 5 fortnights', 'q');
SELECT queue_schedule('bad', '@often', 'q');
SELECT queue_schedule('bad', 'at someday', 'q');
SELECT queue_schedule('bad', '@daily', 'bad queue');
SELECT queue_schedule('', '@daily', 'q');
SELECT queue_schedule('bad', NULL, 'q');
SELECT queue_trigger('nope');
SELECT * FROM queue_timeline('-1 hour');
SELECT count(*) AS schedules FROM queue.schedules WHERE name = 'bad';

-- queue.timezone is read from the server configuration (SIGHUP), so that
-- sessions and the scheduler service agree; DST rules are unit-tested.
SET queue.timezone = 'Europe/Prague';

DROP EXTENSION queue;
