BEGIN;
WITH c AS (UPDATE proto.live_b3 j SET status = 'processing', attempts = j.attempts + 1, started_at = now(), lease_until = now() + j.timeout, worker = 'w' WHERE j.ctid = ANY (ARRAY(SELECT c.ctid FROM proto.live_b3 c WHERE c.queue = 'bench' AND c.status = 'pending' AND NOT c.group_waiting ORDER BY c.priority, c.id LIMIT 100 FOR UPDATE SKIP LOCKED)) RETURNING j.id) SELECT quote_literal(array_agg(id)::text) AS ids FROM c \gset
DELETE FROM proto.live_b3 j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing';
COMMIT;
