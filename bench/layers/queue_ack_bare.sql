-- queue_pop as installed; the ack a bare DELETE, no counter, no CTE (weighs the
-- ack's RETURNING through a CTE).
BEGIN;
SELECT quote_literal(array_agg(id)::text) AS ids FROM queue_pop('bench', 'w', 100) \gset
DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing';
COMMIT;
