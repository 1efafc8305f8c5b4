-- Giving a claim back: pending again, no attempt burned, stale claims refused.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

SELECT queue_push('work', '{"n": 1}', max_attempts => 2);
SELECT id, attempt FROM queue_pop('work');

-- A stale attempt or an unknown job changes nothing.
SELECT queue_release(1, attempt => 7) AS stale;
SELECT queue_release(999) AS unknown;

-- Given back: pending at once, and its budget grows with the claim it used.
SELECT queue_release(1, attempt => 1);
SELECT status, attempts, max_attempts, lease_until IS NULL AS no_lease FROM queue.jobs WHERE id = 1;
SELECT queue_release(1) AS not_processing;

-- The next claim has a new attempt number: the old worker's ack is refused.
SELECT id, attempt FROM queue_pop('work');
SELECT queue_ack(1, attempt => 1) AS old_claim;
-- Two more failures are still allowed after the give-back (max 2 + 1 = 3 claims).
SELECT queue_fail(1, 'first', attempt => 2, retry_in => '0 s');
SELECT id, attempt FROM queue_pop('work');
SELECT queue_fail(1, 'second', attempt => 3);

-- A grouped job keeps its group while given back: the next one waits.
SELECT queue_push('work', '{}', serial_group => 'g') AS a, queue_push('work', '{}', serial_group => 'g') AS b;
SELECT id, serial_group FROM queue_pop('work');
SELECT queue_release(2);
SELECT id, attempt FROM queue_pop('work', batch => 5);

-- The counters saw it leave processing.
SELECT queue_stats('work') -> 'processing' AS processing, queue_stats('work') -> 'pending' AS pending;
DROP EXTENSION queue;
