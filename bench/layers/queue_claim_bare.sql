-- The bare claim on queue.jobs returning ids only, acked by a bare DELETE: the
-- product's tables with none of its SQL around them.
BEGIN;
WITH c AS (UPDATE queue.jobs j SET status = 'processing', attempts = j.attempts + 1, started_at = now(), lease_until = now() + j.timeout, worker = 'w' WHERE j.ctid = ANY (ARRAY(SELECT c.ctid FROM queue.jobs c WHERE c.queue = 'bench' AND c.status = 'pending' AND NOT c.group_waiting ORDER BY c.priority, c.id LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING j.id) SELECT quote_literal(array_agg(id)::text) AS ids FROM c \gset
DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing';
COMMIT;
