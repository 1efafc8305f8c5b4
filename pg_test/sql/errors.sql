-- Every argument error: a SQLSTATE, a message naming the bad value, a hint,
-- and nothing changed.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- Runs a statement that must fail and shows its SQLSTATE, message and hint.
CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    v_state text; v_message text; v_hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
    RETURN v_state || ': ' || v_message || coalesce(E'\nHINT: ' || nullif(v_hint, ''), '');
END;
$f$;

-- Queue names.
SELECT pg_temp.error_of($$SELECT queue_push('', '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('has space', '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('semi;colon', '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_push(repeat('x', 58), '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_push(NULL, '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_pop('bad name')$$);
SELECT pg_temp.error_of($$SELECT queue_size('bad/name')$$);
SELECT pg_temp.error_of($$SELECT * FROM queue_peek('bad name')$$);

-- Payloads.
SELECT pg_temp.error_of($$SELECT queue_push('q', NULL)$$);
SELECT pg_temp.error_of($$SELECT queue_push_batch('q', NULL)$$);
SELECT pg_temp.error_of($$SELECT queue_push_batch('q', ARRAY['{}', NULL]::jsonb[])$$);

-- Priorities.
SELECT pg_temp.error_of($$SELECT queue_priority('urgent')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', 'urgent')$$);

-- Timing and retry options.
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', delay => '-1 minute')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', delay => '1 minute', run_at => now())$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', max_attempts => 0)$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', timeout => '0')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', backoff_base => '-1 second')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', backoff_base => '1 hour', backoff_max => '1 minute')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', retry_delays => '{}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', retry_delays => '{1 minute, NULL}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', retry_delays => '{-1 minute}')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', dedupe_key => '')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', serial_group => '')$$);
SELECT pg_temp.error_of($$SELECT queue_push('q', '{}', serial_group => repeat('g', 201))$$);

-- Claim and finish arguments.
SELECT pg_temp.error_of($$SELECT queue_pop('q', batch => 0)$$);
SELECT pg_temp.error_of($$SELECT queue_pop('q', batch => 10001)$$);
SELECT pg_temp.error_of($$SELECT queue_pop('q', batch => NULL)$$);
SELECT pg_temp.error_of($$SELECT * FROM queue_peek('q', 0)$$);
SELECT pg_temp.error_of($$SELECT queue_fail(1, 'x', retry_in => '-1 second')$$);
SELECT pg_temp.error_of($$SELECT queue_touch(1, '-1 second')$$);
SELECT pg_temp.error_of($$SELECT queue_touch(1, '0')$$);

-- Nothing was written by any of the calls above.
SELECT count(*) AS jobs FROM queue.all_jobs;

DROP EXTENSION queue;
