-- Per-queue defaults: queue_configure sets what a push into the queue uses
-- when it does not say; what a push says wins; queue_settings lists them.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

CREATE VIEW j AS
    SELECT id, queue, priority, max_attempts, timeout, backoff_base, backoff_max FROM queue.jobs;

SELECT queue_configure('mail', priority => -10, max_attempts => 7, timeout => '30 seconds');
SELECT queue_push('mail', '{}') AS a, queue_push('other', '{}') AS b;
-- What a push says wins, NULL leaves it to the queue, a named priority too.
SELECT queue_push('mail', '{}', 5, max_attempts => 1) AS c,
       queue_push('mail', '{}', NULL::int, timeout => NULL) AS d,
       queue_push('mail', '{}', 'low') AS e;
SELECT count(*) AS batch FROM queue_push_batch('mail', ARRAY['{}', '{}']::jsonb[], backoff_base => '1 second');
SELECT * FROM j ORDER BY id;

-- NULL keeps a value, a new one replaces it; reset clears what is not given.
SELECT queue_configure('mail', backoff_base => '1 minute', backoff_max => '2 hours');
SELECT queue_configure('mail', timeout => '1 minute', reset => true);
SELECT queue, paused, priority, max_attempts, timeout, backoff_base, backoff_max FROM queue_settings();
-- A pause is kept through a reset; a row with nothing left goes.
SELECT queue_pause('mail');
SELECT queue_configure('mail', reset => true) ->> 'paused' AS still_paused;
SELECT queue_resume('mail');
SELECT queue_configure('other', max_attempts => 2);
SELECT queue_configure('other', reset => true);
SELECT queue FROM queue_settings() ORDER BY queue;

-- Bad values: the error of a push with them (22023), and nothing changes.
\set VERBOSITY sqlstate
SELECT queue_configure('mail', max_attempts => 0);
SELECT queue_configure('mail', timeout => '-1 second');
SELECT queue_configure('mail', backoff_base => '2 hours');
SELECT queue_configure('bad name!', priority => 1);
\set VERBOSITY default
SELECT queue_configure('mail', backoff_base => '2 hours');
SELECT queue, timeout, backoff_base, backoff_max FROM queue_settings();

-- Jobs already pushed keep what they were pushed with.
SELECT queue_push('mail', '{}') AS f \gset
SELECT queue_configure('mail', max_attempts => 9);
SELECT max_attempts, timeout FROM j WHERE id = :f;

-- Only admins configure (queue_producer may push, not configure).
SELECT has_function_privilege('queue_producer', 'queue_configure(text, int, int, interval, interval, interval, boolean)', 'EXECUTE') AS producer_may,
       has_function_privilege('queue_admin', 'queue_configure(text, int, int, interval, interval, interval, boolean)', 'EXECUTE') AS admin_may;

DROP VIEW j;
DROP EXTENSION queue;
