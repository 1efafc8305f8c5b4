-- Bare-SQL layers of the W4 design, for bench/layers/ab.sh. Run in a
-- database where the extension is installed (the tables copy queue.jobs).
-- Each layer L has a live table proto.live_L and a history proto.done_L.
CREATE TABLE IF NOT EXISTS bench_ref (id bigserial PRIMARY KEY, priority int NOT NULL DEFAULT 0,
                                      payload jsonb NOT NULL, claimed boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS bench_ref_claim ON bench_ref (priority, id) WHERE NOT claimed;
DROP SCHEMA IF EXISTS proto CASCADE;
CREATE SCHEMA proto;

-- b1: the product's row, primary key and claim index only.
CREATE TABLE proto.live_b1 (LIKE queue.jobs INCLUDING DEFAULTS);
ALTER TABLE proto.live_b1 ADD PRIMARY KEY (id);
CREATE INDEX ON proto.live_b1 (queue, priority, id) WHERE status = 'pending' AND NOT group_waiting;
CREATE TABLE proto.done_b1 (LIKE queue.jobs);

-- b3: b1 + every other live index of the product (lease, due, dedupe, groups).
CREATE TABLE proto.live_b3 (LIKE proto.live_b1 INCLUDING ALL);
CREATE INDEX ON proto.live_b3 (run_at) WHERE status IN ('scheduled', 'retrying');
CREATE UNIQUE INDEX ON proto.live_b3 (queue, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE UNIQUE INDEX ON proto.live_b3 (serial_group) WHERE serial_group IS NOT NULL
    AND (status IN ('processing', 'retrying') OR (status = 'pending' AND NOT group_waiting));
CREATE INDEX ON proto.live_b3 (serial_group, priority, id) WHERE serial_group IS NOT NULL AND status = 'pending';
CREATE INDEX ON proto.live_b3 (lease_until) WHERE status = 'processing' AND lease_until IS NOT NULL;
CREATE TABLE proto.done_b3 (LIKE queue.jobs);

-- nohist: b3 whose ack appends the job to a history heap without indexes.
CREATE TABLE proto.live_nohist (LIKE proto.live_b3 INCLUDING ALL);
CREATE TABLE proto.done_nohist (LIKE queue.jobs);

-- a: nohist with the product's three history indexes (the design as SQL).
CREATE TABLE proto.live_a (LIKE proto.live_b3 INCLUDING ALL);
CREATE TABLE proto.done_a (LIKE queue.jobs);
ALTER TABLE proto.done_a ADD PRIMARY KEY (id);
CREATE INDEX ON proto.done_a (finished_at);
CREATE INDEX ON proto.done_a (finished_at) WHERE status IN ('failed', 'expired');
