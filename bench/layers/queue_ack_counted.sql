-- queue_pop as installed; the ack as the lean ack's DELETE with its counter call,
-- without the job_times row and the serial-group release (weighs those two).
BEGIN;
SELECT quote_literal(array_agg(id)::text) AS ids FROM queue_pop('bench', 'w', 100) \gset
WITH gone AS (DELETE FROM queue.jobs j WHERE j.id = ANY (:ids::bigint[]) AND j.status = 'processing' RETURNING queue.tally(j.queue, j.priority, j.status::text, 'completed')) SELECT count(*) FROM gone;
COMMIT;
