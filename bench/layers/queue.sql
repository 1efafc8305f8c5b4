BEGIN;
SELECT quote_literal(array_agg(id)::text) AS ids FROM queue_pop('bench', 'w', 100) \gset
SELECT queue_ack(:ids::bigint[]);
COMMIT;
