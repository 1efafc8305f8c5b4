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
SELECT has_function_privilege('queue_producer', 'queue_configure(text, int, int, interval, interval, interval, interval, boolean)', 'EXECUTE') AS producer_may,
       has_function_privilege('queue_admin', 'queue_configure(text, int, int, interval, interval, interval, interval, boolean)', 'EXECUTE') AS admin_may;

-- Retention per queue: a push captures it (keep_for), the retention pass
-- deletes each final job when its own retention ran out, shorter or longer
-- than queue.retention (7 days here).
SELECT queue_configure('brief', retention => '1 hour') ->> 'retention' AS brief,
       queue_configure('kept', retention => '30 days') ->> 'retention' AS kept;
SELECT queue, retention FROM queue_settings() WHERE retention IS NOT NULL ORDER BY queue;
SELECT queue_push('brief', '{}') AS brief, queue_push('kept', '{}') AS kept, queue_push('plain', '{}') AS plain \gset
SELECT count(*) AS batch FROM queue_push_batch('kept', ARRAY['{}']::jsonb[]);
SELECT queue, keep_for FROM queue.jobs WHERE queue IN ('brief', 'kept', 'plain') ORDER BY id;
SELECT count(*) AS acked FROM unnest(ARRAY['brief', 'kept', 'plain']) q, LATERAL queue_pop(q, batch => 10) p, LATERAL queue_ack(p.id) a WHERE a;
CREATE FUNCTION age_history(q text, age interval) RETURNS void LANGUAGE sql AS
$$ UPDATE queue.finished_jobs SET finished_at = now() - age WHERE queue = q $$;
-- Each step in one transaction: the background worker's own pass sees the
-- jobs aged only once this one has deleted them.
BEGIN;
SELECT age_history('brief', '2 hours'), age_history('kept', '8 days'), age_history('plain', '8 days');
SELECT queue.prune_finished(1000) AS deleted;
SELECT queue, count(*) FROM queue.finished_jobs WHERE queue IN ('brief', 'kept', 'plain') GROUP BY 1 ORDER BY 1;
COMMIT;
-- A job final longer than queue.retention behind the pass's mark (it was
-- not there when the pass went by) waits for the ten-minute sweep.
BEGIN;
SELECT queue_push('plain', '{}') IS NOT NULL AS pushed;
SELECT queue_ack(id) FROM queue_pop('plain');
SELECT age_history('plain', '9 days');
SELECT queue.prune_finished(1000) AS behind_the_mark;
SELECT set_config('queue_prune.swept', '', false) IS NOT NULL AS sweep_due;
SELECT queue.prune_finished(1000) AS swept;
COMMIT;
BEGIN;
SELECT age_history('kept', '31 days');
SELECT queue.prune_finished(1000) AS deleted;
SELECT count(*) AS left FROM queue.finished_jobs WHERE queue IN ('brief', 'kept', 'plain');
COMMIT;
-- Bad retention: 22023, nothing changes; reset clears it; resuming a queue
-- whose only setting is a retention keeps the row.
\set VERBOSITY sqlstate
SELECT queue_configure('kept', retention => '-1 day');
SELECT queue_configure('kept', retention => '200 years');
\set VERBOSITY default
SELECT queue_pause('kept'), queue_resume('kept');
SELECT queue, retention FROM queue_settings() WHERE queue = 'kept';
SELECT queue_configure('kept', reset => true) ->> 'retention' AS reset;
SELECT queue_push('kept', '{}') IS NOT NULL AS pushed;
SELECT keep_for FROM queue.jobs WHERE queue = 'kept';
DROP FUNCTION age_history(text, interval);

DROP VIEW j;
DROP EXTENSION queue;
