-- Job dependencies: a job pushed with depends_on is blocked until every job
-- it depends on completed; a dependency that ends otherwise cancels it (and
-- what depends on it), unless run_anyway; retrying the dependency brings
-- them back.
\set SHOW_CONTEXT never
CREATE EXTENSION queue;

-- A view of the jobs for this test: status, the count still blocking, error.
CREATE VIEW j AS
    SELECT id, payload ->> 'n' AS n, status, blocked_by, last_error FROM queue.all_jobs;

-- A diamond: A -> B, A -> C, (B, C) -> D.
SELECT queue_push('flow', '{"n": "A"}') AS a \gset
SELECT queue_push('flow', '{"n": "B"}', depends_on => ARRAY[:a]) AS b \gset
SELECT queue_push('flow', '{"n": "C"}', depends_on => ARRAY[:a]) AS c \gset
SELECT queue_push('flow', '{"n": "D"}', depends_on => ARRAY[:b, :c, :b]) AS d \gset
SELECT * FROM j ORDER BY id;
-- Blocked jobs are counted, not claimable, and not in the backlog.
SELECT queue_stats('flow') -> 'blocked' AS blocked, queue_size('flow') AS size;
SELECT array_agg(id) AS claimed FROM queue_pop('flow', 'w', 10);
SELECT array_agg(id) AS claimed_nothing FROM queue_pop('flow', 'w', 10);
-- A completes: B and C are pending in the same transaction.
SELECT queue_ack(:a, '{"from": "A"}');
SELECT * FROM j ORDER BY id;
SELECT array_agg(id ORDER BY id) AS claimed FROM queue_pop('flow', 'w', 10);
-- Both finish in one batch: D is released once, its count exactly 0.
SELECT queue_ack_batch(ARRAY[:b, :c], ARRAY[1, 1], ARRAY['{"from": "B"}', '{"from": "C"}']::jsonb[]) AS acked;
SELECT * FROM j WHERE id = :d;
-- The dependent reads its dependencies' results.
SELECT dependency, queue, status, result, resolved, run_anyway FROM queue_dependencies(:d);
SELECT queue_job(:d) -> 'depends_on' AS depends_on, queue_job(:d) -> 'blocked_by' AS blocked_by;
SELECT queue_stats('flow') -> 'blocked' AS blocked, queue_stats('flow') -> 'pending' AS pending;

-- Already final dependencies: completed is satisfied at once, dead cancels
-- at once (naming it), and with run_anyway a dead one is satisfied too.
SELECT queue_push('flow', '{"n": "E"}', depends_on => ARRAY[:a]) AS e \gset
SELECT queue_push('dead', '{"n": "dead"}', max_attempts => 1) AS dead \gset
SELECT id FROM queue_pop('dead', 'w');
SELECT queue_fail(:dead, 'boom');
SELECT queue_push('flow', '{"n": "F"}', depends_on => ARRAY[:a, :dead]) AS f \gset
SELECT queue_push('flow', '{"n": "G"}', depends_on => ARRAY[:dead], run_anyway => true) AS g \gset
SELECT * FROM j WHERE id IN (:e, :f, :g) ORDER BY id;
-- Retrying the dead dependency brings F back, blocked on it alone.
SELECT queue_retry(:dead);
SELECT * FROM j WHERE id IN (:dead, :f) ORDER BY id;
SELECT id FROM queue_pop('dead', 'w');
SELECT queue_ack(:dead);
SELECT * FROM j WHERE id IN (:dead, :f) ORDER BY id;
SELECT queue_delete(:e), queue_delete(:f), queue_delete(:g), queue_delete(:d);

-- A failure cancels its dependents transitively; run_anyway ones run.
SELECT queue_push('chain', '{"n": "root"}', max_attempts => 1) AS root \gset
SELECT queue_push('chain', '{"n": "mid"}', depends_on => ARRAY[:root]) AS mid \gset
SELECT queue_push('chain', '{"n": "leaf"}', depends_on => ARRAY[:mid]) AS leaf \gset
SELECT queue_push('chain', '{"n": "cleanup"}', depends_on => ARRAY[:mid], run_anyway => true) AS cleanup \gset
SELECT queue_push('chain', '{"n": "other"}', depends_on => ARRAY[:root, :dead]) AS other \gset
SELECT id FROM queue_pop('chain', 'w');
SELECT queue_fail(:root, 'root failed');
SELECT * FROM j WHERE id IN (:root, :mid, :leaf, :cleanup, :other) ORDER BY id;
SELECT queue_stats('chain') -> 'cancelled' AS cancelled, queue_stats('chain') -> 'blocked' AS blocked;
-- The retry revives the whole chain below it; cleanup ran anyway already.
SELECT queue_retry(:root);
SELECT * FROM j WHERE id IN (:root, :mid, :leaf, :cleanup, :other) ORDER BY id;
SELECT queue_stats('chain') -> 'blocked' AS blocked;

-- A dependency whose last lease runs out (expired) cancels them too.
SELECT queue_push('lapse', '{"n": "slow"}', max_attempts => 1) AS slow \gset
SELECT queue_push('lapse', '{"n": "after"}', depends_on => ARRAY[:slow]) AS after \gset
SELECT id FROM queue_pop('lapse', 'w');
UPDATE queue.jobs SET lease_until = now() - interval '1 second' WHERE id = :slow;
SELECT queue_tick() ->> 'expired' AS expired;
SELECT id, n, status, blocked_by, left(last_error, 27) AS last_error FROM j WHERE id IN (:slow, :after) ORDER BY id;

-- Cancelling or deleting a waiting dependency cancels its dependents.
SELECT queue_push('cut', '{"n": "p1"}') AS p1 \gset
SELECT queue_push('cut', '{"n": "p2"}') AS p2 \gset
SELECT queue_push('cut', '{"n": "k1"}', depends_on => ARRAY[:p1]) AS k1 \gset
SELECT queue_push('cut', '{"n": "k2"}', depends_on => ARRAY[:p2]) AS k2 \gset
SELECT queue_cancel(:p1), queue_delete(:p2);
SELECT * FROM j WHERE id IN (:p1, :p2, :k1, :k2) ORDER BY id;
-- A blocked job can be cancelled itself.
SELECT queue_push('cut', '{"n": "p3"}') AS p3 \gset
SELECT queue_push('cut', '{"n": "k3"}', depends_on => ARRAY[:p3]) AS k3 \gset
SELECT queue_cancel(:k3);
SELECT * FROM j WHERE id IN (:p3, :k3) ORDER BY id;

-- Released into a delay and a serial group: scheduled while run_at is
-- ahead; in its group's line like any pushed job.
SELECT queue_push('later', '{"n": "x"}') AS x \gset
SELECT queue_push('later', '{"n": "y"}', delay => '1 hour', depends_on => ARRAY[:x]) AS y \gset
SELECT queue_push('later', '{"n": "g1"}', serial_group => 'grp') AS g1 \gset
SELECT queue_push('later', '{"n": "g2"}', serial_group => 'grp', depends_on => ARRAY[:x]) AS g2 \gset
SELECT array_agg(id ORDER BY id) FROM queue_pop('later', 'w', 10);
SELECT queue_ack(:x);
SELECT id, status, group_waiting FROM queue.jobs WHERE id IN (:y, :g2) ORDER BY id;
SELECT queue_ack(:g1);
SELECT array_agg(id) AS claimed FROM queue_pop('later', 'w', 10);

-- A fan-out pushed in one batch, released by one ack; a long chain
-- cancelled by one failure (a loop, not a recursion).
SELECT queue_push('fan', '{"n": "hub"}') AS hub \gset
SELECT count(*) AS pushed FROM queue_push_batch('fan', array_fill('{}'::jsonb, ARRAY[2000]), depends_on => ARRAY[:hub]);
SELECT queue_stats('fan') -> 'blocked' AS blocked;
SELECT id FROM queue_pop('fan', 'w') WHERE id = :hub;
SELECT queue_ack(:hub);
SELECT queue_stats('fan') -> 'blocked' AS blocked, queue_stats('fan') -> 'pending' AS pending;
DO $$
DECLARE
    v_prev bigint := queue_push('long', '{}', max_attempts => 1);
BEGIN
    FOR i IN 1..500 LOOP
        v_prev := queue_push('long', '{}', depends_on => ARRAY[v_prev]);
    END LOOP;
END;
$$;
SELECT id FROM queue_pop('long', 'w') \gset long_
SELECT queue_fail(:long_id, 'first link failed');
SELECT status, count(*) FROM queue.all_jobs WHERE queue = 'long' GROUP BY status ORDER BY status;

-- Bad dependencies: 22023 and nothing pushed.
\set VERBOSITY sqlstate
SELECT queue_push('bad', '{}', depends_on => ARRAY[999999]);
SELECT queue_push('bad', '{}', depends_on => ARRAY[:a, NULL]);
SELECT queue_push('bad', '{}', depends_on => ARRAY[[1, 2], [3, 4]]::bigint[]);
SELECT queue_push_batch('bad', ARRAY['{}']::jsonb[], depends_on => ARRAY[999999]);
\set VERBOSITY default
SELECT queue_push('bad', '{}', depends_on => ARRAY[999999]);
SELECT count(*) AS bad_jobs FROM queue.all_jobs WHERE queue = 'bad';
-- An empty list is no dependency at all.
SELECT queue_push('bad', '{}', depends_on => '{}') AS empty \gset
SELECT status, blocked_by FROM j WHERE id = :empty;

-- The counters agree with the jobs after all of this.
-- (The recount is put off while another backend, such as the background
-- worker's pass, holds a write lock on the jobs: try again until it runs.)
CREATE FUNCTION recount() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        IF queue.recount_stats() >= 0 THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
SELECT recount() AS recounted;
DROP FUNCTION recount();
SELECT queue_stats() -> 'blocked' AS blocked,
       (SELECT count(*) FROM queue.jobs WHERE status = 'blocked') AS blocked_jobs;

DROP VIEW j;
DROP EXTENSION queue;
