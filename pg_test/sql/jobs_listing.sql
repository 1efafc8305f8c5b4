-- queue_jobs: every status, newest first, keyset pages, checked arguments.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT count(*) FROM (SELECT queue_push('list', jsonb_build_object('n', i)) FROM generate_series(1, 5) i) p;
SELECT queue_push('list', '{}', delay => '1 hour') AS scheduled;
SELECT queue_push('other', '{}') AS other;
SELECT id FROM queue_pop('list', 'w', 2);
SELECT queue_ack(1);
SELECT queue_fail(2, 'boom', permanent => true);

SELECT id, queue, status, attempt, worker, last_error, payload FROM queue_jobs('list');
SELECT id, status FROM queue_jobs('list', 'pending');
SELECT id, status FROM queue_jobs(NULL, 'scheduled');
SELECT id, status FROM queue_jobs(status => 'failed');
-- Pages of two: the next page starts below the last id shown.
SELECT id FROM queue_jobs('list', max_rows => 2);
SELECT id FROM queue_jobs('list', max_rows => 2, before_id => 5);
SELECT count(*) AS every_queue FROM queue_jobs();

-- Bad arguments: 22023, nothing listed.
SELECT * FROM queue_jobs('list', 'done');
SELECT * FROM queue_jobs('list', max_rows => 0);
SELECT * FROM queue_jobs('bad name!');
DROP EXTENSION queue;
