-- queue_ack_counted without the counter call: the DELETE still returns the
-- counter's columns through a CTE (weighs the ack's counter call).
BEGIN;
SELECT quote_literal(array_agg(id)::text) AS ids FROM queue_pop('bench', 'w', 100) \gset
WITH gone AS (DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing' RETURNING j.queue, j.priority, j.status::text) SELECT count(*) FROM gone;
COMMIT;
