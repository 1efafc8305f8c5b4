-- queue_pop's claim written out as bare SQL (same columns, counter call, group
-- check, claim order), acked by a bare DELETE: weighs the plpgsql wrapper against queue_ack_bare.
BEGIN;
WITH c AS (UPDATE queue.jobs j SET status = 'processing', attempts = j.attempts + 1, started_at = now(), lease_until = now() + j.timeout, worker = 'w' WHERE j.ctid = ANY (ARRAY(SELECT c.ctid FROM queue.jobs c WHERE c.queue = 'bench' AND c.status = 'pending' AND NOT c.group_waiting AND (c.serial_group IS NULL OR queue.group_try_lock(queue.group_lock_key(c.serial_group))) ORDER BY c.priority, c.id LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING j.id, j.queue, j.payload, j.priority, j.serial_group, j.attempts, j.max_attempts, j.lease_until, j.created_at, queue.tally(j.queue, j.priority, 'pending', 'processing')), o AS (SELECT * FROM c ORDER BY priority, id) SELECT quote_literal(array_agg(id)::text) AS ids FROM o \gset
DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing';
COMMIT;
