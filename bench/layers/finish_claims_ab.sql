-- bench/layers/finish_claims_ab.sql: what completing claims with their own
-- attempts costs against completing ids, in one session, alternating calls.
-- 300 rounds of: claim 100, then complete them with queue.finish_jobs (ids
-- only: queue_ack(ids)) on even rounds or queue.finish_claims (ids with
-- their attempts: queue_ack_batch, the clients' batched acks) on odd ones;
-- prints the mean time of each per 100 jobs. Pushes 60,000 jobs into the
-- queue 'ab_finish' first (cleared at the end).
--
--   psql -X -q -h 127.0.0.1 -p PORT -U postgres -d DB -f bench/layers/finish_claims_ab.sql
SELECT count(*) AS pushed FROM queue_push_batch('ab_finish', array_fill('{}'::jsonb, ARRAY[60000]));
DO $$
DECLARE
    t0      timestamptz;
    by_ids  interval := '0';
    claims  interval := '0';
    ids     bigint[];
    att     int[];
BEGIN
    FOR r IN 1..300 LOOP
        SELECT array_agg(id), array_agg(attempt) INTO ids, att FROM queue_pop('ab_finish', 'ab', 100);
        t0 := clock_timestamp();
        IF r % 2 = 0 THEN
            PERFORM queue.finish_jobs(ids, '{processing}', 'completed', NULL, NULL, NULL);
            by_ids := by_ids + (clock_timestamp() - t0);
        ELSE
            PERFORM queue.finish_claims(ids, att, NULL);
            claims := claims + (clock_timestamp() - t0);
        END IF;
    END LOOP;
    RAISE NOTICE 'per 100 jobs: finish_jobs (ids) % ms, finish_claims (ids + attempts) % ms',
        round(extract(epoch FROM by_ids) * 1000 / 150, 3), round(extract(epoch FROM claims) * 1000 / 150, 3);
END $$;
SELECT queue_clear('ab_finish') AS cleared;
