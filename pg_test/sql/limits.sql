-- No poison pills: every interval, timestamp and size a call can store has a
-- documented range. A value outside is refused with 22023, a message naming
-- the argument, a hint, and changes nothing; whatever is accepted can never
-- make a pop, a tick, metrics, stats or the scheduler fail.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    v_state text; v_message text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
    RETURN v_state || ': ' || v_message;
END;
$f$;

-- The poison pills of 0.1.0, each now refused at the push.
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', priority => -1000, timeout => '400000 years')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', retry_delays => '{400000 years}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', run_at => '-infinity')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', run_at => 'infinity')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', run_at => '3000-01-01 00:00+00')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', run_at => '1000-01-01 00:00+00')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', delay => '11 years')$$);
-- Each component is bounded, not only the sum (adding this to a timestamp overflows).
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', delay => '100000 years -36500000 days')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', timeout => '2 days')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', backoff_base => '11 years', backoff_max => '12 years')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', backoff_max => '11 years')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', max_attempts => 10001)$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', retry_delays => array_fill(interval '1 minute', ARRAY[101]))$$);
SELECT pg_temp.error_of($$SELECT queue_push_batch('q', ARRAY['{}'::jsonb], timeout => '400000 years')$$);

-- Sizes: each limit is a superuser-only setting (lowered here to show it).
SET queue.max_payload_size = '1kB';
SET queue.max_result_size = '1kB';
SET queue.max_error_size = '1kB';
SET queue.max_info_size = '1kB';
SET queue.max_key_length = 20;
SELECT pg_temp.error_of($$SELECT queue_push('q', jsonb_build_object('x', repeat('x', 2000)))$$);
SELECT pg_temp.error_of($$SELECT queue_push_batch('q', ARRAY['{}'::jsonb, jsonb_build_object('x', repeat('x', 2000))])$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', dedupe_key => repeat('k', 21))$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', serial_group => repeat('g', 21))$$);
SELECT pg_temp.error_of($$SELECT queue_pop('q', worker => repeat('w', 21))$$);
SELECT pg_temp.error_of($$SELECT queue_heartbeat(repeat('w', 21))$$);
SELECT pg_temp.error_of($$SELECT queue_heartbeat('w', jsonb_build_object('x', repeat('x', 2000)))$$);
SELECT pg_temp.error_of($$SELECT queue_schedule(repeat('s', 21), '@daily', 'q')$$);
SELECT pg_temp.error_of($$SELECT queue_schedule('s', '@daily', 'q', jsonb_build_object('x', repeat('x', 2000)))$$);
-- A limit holds for the printed size too: 1e2000 is stored in a few bytes
-- and prints as 2,001 characters, at every claim and every listing.
SELECT pg_column_size('[1e2000]'::jsonb) < 100 AS stored_small, length('[1e2000]'::jsonb::text) AS printed;
SELECT pg_temp.error_of($$SELECT queue_push('q', '[1e2000]')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '[1e2000]', delay => '1 minute')$$);
SELECT pg_temp.error_of($$SELECT queue_push_batch('q', ARRAY['{}'::jsonb, '[1e2000]'])$$);
SELECT pg_temp.error_of($$SELECT queue_schedule('s', '@daily', 'q', '[1e2000]')$$);
SELECT pg_temp.error_of($$SELECT queue_heartbeat('w', '[1e-2000]')$$);
-- Escapes count too: a control character prints as six bytes (\u0001).
SELECT pg_temp.error_of($$SELECT queue_push('q', jsonb_build_array(repeat(E'\u0001', 300)))$$);

-- A claimed job: result, error, progress message and lease extension.
SELECT queue_push('q', '{}') AS job \gset
SELECT attempt FROM queue_pop('q') \gset
SELECT pg_temp.error_of($$SELECT queue_ack($$ || :job || $$, jsonb_build_object('x', repeat('x', 2000)))$$);
SELECT pg_temp.error_of($$SELECT queue_ack($$ || :job || $$, '[1e2000]')$$);
SELECT pg_temp.error_of($$SELECT queue_ack_batch(ARRAY[$$ || :job || $$]::bigint[], ARRAY[1], ARRAY['[1e2000]'::jsonb])$$);
SELECT pg_temp.error_of($$SELECT queue_fail($$ || :job || $$, repeat('e', 2000))$$);
SELECT pg_temp.error_of($$SELECT queue_progress($$ || :job || $$, 1, 2, repeat('m', 2000))$$);
SELECT pg_temp.error_of($$SELECT queue_touch($$ || :job || $$, extend => '2 days')$$);
SELECT pg_temp.error_of($$SELECT queue_fail($$ || :job || $$, 'x', retry_in => '11 years')$$);
-- None of them changed the job: still processing, same claim, no error.
SELECT status, attempts, last_error, result, progress FROM queue.jobs WHERE id = :job;
RESET queue.max_payload_size;
RESET queue.max_result_size;
RESET queue.max_error_size;
RESET queue.max_info_size;
RESET queue.max_key_length;

-- Only superusers may change a limit.
CREATE ROLE regress_limits_user;
SET ROLE regress_limits_user;
SELECT pg_temp.error_of($$SET queue.max_payload_size = '1GB'$$);
SELECT pg_temp.error_of($$SET queue.max_lease = '100 days'$$);
RESET ROLE;
DROP ROLE regress_limits_user;

-- Schedules: intervals and one-time instants within queue.max_delay.
SELECT pg_temp.error_of($$SELECT queue_schedule('s', 'every 5000 days', 'q')$$);
SELECT pg_temp.error_of($$SELECT queue_schedule('s', 'at infinity', 'q')$$);
SELECT pg_temp.error_of($$SELECT queue_schedule('s', 'at 3000-01-01 00:00+00', 'q')$$);

-- Look-back windows: zero to a hundred years.
SELECT pg_temp.error_of($$SELECT queue_metrics(since => '400000 years')$$);
SELECT pg_temp.error_of($$SELECT queue_cleanup('400000 years')$$);
SELECT pg_temp.error_of($$SELECT queue_purge_dead(older_than => '400000 years')$$);
SELECT pg_temp.error_of($$SELECT * FROM queue_workers('400000 years')$$);
SELECT pg_temp.error_of($$SELECT queue_reap_workers('400000 years')$$);
SELECT pg_temp.error_of($$SELECT * FROM queue_timeline('400000 years')$$);

-- Nothing but the one claimed job was written, no schedule was saved.
SELECT count(*) AS jobs FROM queue.all_jobs;
SELECT count(*) AS schedules FROM queue.schedules;

-- The extremes that are accepted keep every reader working.
SELECT queue_push('edge', '{}', priority => -2147483648, timeout => '1 day',
                  backoff_base => '10 years', backoff_max => '10 years', max_attempts => 10000) > 0 AS pushed;
SELECT queue_push('edge', '{}', priority => 2147483647, run_at => now() - interval '3649 days') > 0 AS pushed;
SELECT queue_push('edge', '{}', delay => '3649 days', retry_delays => '{3649 days}') > 0 AS pushed;
SELECT queue_schedule('far', 'every 3650 days', 'edge') > 0 AS scheduled;
SELECT count(*) AS claimed FROM queue_pop('edge', 'w', 10);
SELECT queue_fail(id, 'again') FROM queue.jobs WHERE queue = 'edge' AND status = 'processing' ORDER BY id;
-- A job that waited almost ten years, and ran.
SELECT queue_push('edge-done', '{}', run_at => now() - interval '3649 days') AS old \gset
SELECT count(*) AS claimed FROM queue_pop('edge-done');
SELECT queue_ack(:old);
SELECT (queue_tick() ->> 'errors')::int AS tick_errors;
SELECT (queue_metrics('edge-done') ->> 'executions')::int AS executions,
       (queue_metrics('edge-done') ->> 'avg_wait_ms')::float8 > 3e11 AS waited_long;
SELECT queue_stats('edge') ->> 'total_size' AS waiting;
SELECT queue_health() IS NOT NULL AS health;
SELECT count(*) >= 0 AS timeline FROM queue_timeline('100 years');
SELECT length(queue_prometheus()) > 0 AS prometheus;

DROP EXTENSION queue;
