-- Batches: jobs pushed into an open batch from any transaction; once it is
-- closed and every job of it is final, on_complete (and on_failure, when any
-- failed) is pushed exactly once with the batch summary in its payload.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_batch_open(on_complete => '{"queue": "after", "payload": {"report": 7}}',
                        on_failure => '{"queue": "alerts", "priority": "high"}') AS b \gset
SELECT queue_push('work', '{"n": 1}', batch => :b) AS j1 \gset
SELECT count(*) FROM queue_push_batch('work', ARRAY['{"n": 2}', '{"n": 3}']::jsonb[], batch => :b);
SELECT queue_batch(:b) - 'created_at' AS open_batch;
-- While open, finishing jobs do not end it.
SELECT count(*) FROM queue_pop('work', 'w', 2);
SELECT queue_ack(:j1);
SELECT queue_batch(:b) ->> 'state' AS state, queue_batch(:b) -> 'completed' AS completed;
-- Closed: no more jobs join; it counts what it has.
SELECT queue_batch_close(:b) - 'created_at' - 'closed_at' AS closed;
\set VERBOSITY sqlstate
SELECT queue_push('work', '{}', batch => :b);
SELECT queue_batch_close(:b);
\set VERBOSITY default
SELECT queue_push('work', '{}', batch => :b);
-- The last jobs: one fails, one completes; the callbacks are pushed once.
SELECT queue_fail(:j1 + 1, 'broken', permanent => true);
SELECT count(*) AS callbacks_yet FROM queue.jobs WHERE queue IN ('after', 'alerts');
SELECT id FROM queue_pop('work', 'w') \gset last_
SELECT queue_ack(:last_id);
SELECT queue, priority, payload FROM queue.jobs WHERE queue IN ('after', 'alerts') ORDER BY queue;
SELECT queue_batch(:b) ->> 'state' AS state, queue_batch(:b) -> 'progress' AS progress,
       (queue_batch(:b) ->> 'complete_job') IS NOT NULL AS complete_pushed,
       (queue_batch(:b) ->> 'failure_job') IS NOT NULL AS failure_pushed;
-- A retry after the batch is done changes nothing of it.
SELECT queue_retry(:j1 + 1);
SELECT queue_batch(:b) ->> 'state' AS state, queue_batch(:b) -> 'failed' AS failed;

-- Closing a batch whose jobs are all final fires at once; an empty batch too.
SELECT queue_batch_open('{"queue": "after", "payload": {"empty": true}}') AS e \gset
SELECT queue_batch_close(:e) ->> 'state' AS empty_closed;
SELECT payload FROM queue.jobs WHERE queue = 'after' AND payload ? 'empty';

-- A retry while the batch is closed: it waits for the job again.
SELECT queue_batch_open('{"queue": "after", "payload": {"second": true}}') AS r \gset
SELECT queue_push('work2', '{}', batch => :r, max_attempts => 1) AS r1 \gset
SELECT queue_push('work2', '{}', batch => :r) AS r2 \gset
SELECT queue_batch_close(:r) -> 'pending' AS pending;
SELECT count(*) FROM queue_pop('work2', 'w', 2);
SELECT queue_fail(:r1, 'once'), queue_retry(:r1);
SELECT queue_batch(:r) -> 'pending' AS pending, queue_batch(:r) -> 'failed' AS failed;
SELECT queue_ack(:r2), count(*) AS claimed FROM queue_pop('work2', 'w');
SELECT queue_ack(:r1);
SELECT queue_batch(:r) ->> 'state' AS state, queue_batch(:r) -> 'failed' AS failed,
       queue_batch(:r) -> 'completed' AS completed, queue_batch(:r) ->> 'failure_job' AS failure_job;

-- Cancel: waiting jobs are cancelled, no callback.
SELECT queue_batch_open('{"queue": "after", "payload": {"cancelled": true}}') AS c \gset
SELECT count(*) FROM queue_push_batch('work3', array_fill('{}'::jsonb, ARRAY[3]), batch => :c);
SELECT count(*) FROM queue_pop('work3', 'w');
SELECT queue_batch_cancel(:c), queue_batch_cancel(:c);
SELECT status, count(*) FROM queue.all_jobs WHERE batch_id = :c GROUP BY status ORDER BY status;
SELECT count(*) AS callback FROM queue.jobs WHERE queue = 'after' AND payload ? 'cancelled';

-- Cancelled after its close: the counts follow the jobs to the end (the
-- running one completes), and no callback is pushed.
SELECT queue_batch_open('{"queue": "after", "payload": {"late_cancel": true}}') AS lc \gset
SELECT count(*) FROM queue_push_batch('work5', array_fill('{}'::jsonb, ARRAY[3]), batch => :lc);
SELECT queue_batch_close(:lc) ->> 'total' AS total;
SELECT id AS lc1 FROM queue_pop('work5', 'w') \gset
SELECT queue_batch_cancel(:lc);
SELECT queue_ack(:lc1);
SELECT b ->> 'state' AS state, b -> 'pending' AS pending, b -> 'completed' AS completed,
       b -> 'cancelled' AS cancelled, b -> 'progress' AS progress
  FROM queue_batch(:lc) AS b;
SELECT count(*) AS callback FROM queue.jobs WHERE queue = 'after' AND payload ? 'late_cancel';

-- Deleting a waiting job of a closed batch counts it cancelled.
SELECT queue_batch_open('{"queue": "after", "payload": {"deleted": true}}') AS d \gset
SELECT queue_push('work4', '{}', batch => :d) AS d1 \gset
SELECT queue_batch_close(:d) ->> 'state' AS state;
SELECT queue_delete(:d1);
SELECT queue_batch(:d) ->> 'state' AS state, queue_batch(:d) -> 'cancelled' AS cancelled;

-- Bad callbacks and unknown batches: 22023, nothing changes.
\set VERBOSITY sqlstate
SELECT queue_batch_open('{"payload": {}}');
SELECT queue_batch_open('{"queue": "bad name!"}');
SELECT queue_batch_open('{"queue": "q", "payload": [1]}');
SELECT queue_batch_open('{"queue": "q", "priority": "urgent"}');
SELECT queue_batch_open('{"queue": "q", "extra": 1}');
SELECT queue_batch_open('"q"');
SELECT queue_push('work', '{}', batch => 999999);
SELECT queue_batch_close(999999);
\set VERBOSITY default
SELECT queue_batch_open('{"queue": "q", "extra": 1}');
SELECT queue_batch_open('{"queue": "q", "priority": 1.5}');
SELECT queue_batch_open('{"queue": "q", "priority": 1e12}');
SELECT queue_batch(999999) AS unknown, queue_batch_cancel(999999) AS cancelled;
SELECT * FROM queue_batches('finished');
SELECT * FROM queue_batches(max_rows => 0);
\set VERBOSITY default

-- The list: newest first, of one state or all.
SELECT state, count(*), count(total) AS counted FROM queue_batches() GROUP BY state ORDER BY state;
SELECT id = (SELECT max(id) FROM queue.batches) AS newest_first FROM queue_batches(max_rows => 1);
SELECT count(*) AS cancelled FROM queue_batches('cancelled');
SELECT count(*) AS batches FROM queue.batches;

DROP EXTENSION queue;
