-- The bare claim returning ids only, with queue_pop's counter call, acked by a
-- bare DELETE: weighs the claim's counter call against queue_claim_bare.
BEGIN;
WITH c AS (UPDATE queue.jobs j SET status = 'processing', attempts = j.attempts + 1, started_at = now(), lease_until = now() + j.timeout, worker = 'w' WHERE j.ctid = ANY (ARRAY(SELECT c.ctid FROM queue.jobs c WHERE c.queue = 'bench' AND c.status = 'pending' AND NOT c.group_waiting ORDER BY c.priority, c.id LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING j.id, queue.tally(j.queue, j.priority, 'pending', 'processing')) SELECT quote_literal(array_agg(id)::text) AS ids FROM c \gset
DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing';
COMMIT;
