BEGIN;
WITH c AS (UPDATE bench_ref SET claimed = true WHERE id IN (SELECT id FROM bench_ref WHERE NOT claimed ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING id) SELECT quote_literal(array_agg(id)::text) AS ids FROM c \gset
DELETE FROM bench_ref WHERE id = ANY(:ids::bigint[]);
COMMIT;
