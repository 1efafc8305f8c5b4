-- The jobs table and the partial indexes that keep every hot query small.
--
-- One table holds a job through its whole life. Each query of the hot path
-- reads a partial index that contains only the rows it can act on, so
-- finished history and future jobs never cost the claim anything:
--
--   jobs_claim         pending jobs that may run now, in claim order
--   jobs_due           scheduled / retrying jobs, by the time they become due
--   jobs_lease         processing jobs, by the time their lease runs out
--   jobs_finished      final jobs by status and age: retention, dead letters
--   jobs_dedupe        one live job per (queue, dedupe_key)
--   jobs_group_active  at most ONE active job per serial group (see below)
--   jobs_group_next    waiting jobs of a group in (priority, id) order

CREATE TYPE queue.job_status AS ENUM (
    'scheduled',   -- waiting for run_at
    'pending',     -- ready to be claimed
    'processing',  -- claimed; the lease runs until lease_until
    'retrying',    -- an attempt failed; waits for its backoff
    'completed',   -- final
    'failed',      -- final, dead letter
    'expired',     -- final, dead letter: the last attempt outlived its lease
    'cancelled'    -- final
);

CREATE TABLE queue.jobs (
    id            bigserial PRIMARY KEY,
    -- Names compare bytewise (COLLATE "C"): the claim index is searched by
    -- queue on every pop, and locale-aware comparison costs ~20% of a push.
    queue         text COLLATE "C" NOT NULL,
    status        queue.job_status NOT NULL,
    priority      int NOT NULL DEFAULT 0,
    -- true for a pending job of a serial group that must wait behind its
    -- group's active job; such a job is not in jobs_claim.
    group_waiting boolean NOT NULL DEFAULT false,
    serial_group  text COLLATE "C",
    run_at        timestamptz NOT NULL,
    lease_until   timestamptz,
    -- Claims so far. A scheduled job has none (it was pushed with a delay
    -- and never ran); a retrying job has at least one. queue.promote_due
    -- relies on this to tell the two apart for the counters.
    attempts      int NOT NULL DEFAULT 0,
    max_attempts  int NOT NULL,
    timeout       interval NOT NULL,
    backoff_base  interval NOT NULL,
    backoff_max   interval NOT NULL,
    retry_delays  interval[],
    dedupe_key    text COLLATE "C",
    payload       jsonb NOT NULL,
    last_error    text,
    result        jsonb,
    progress      jsonb,
    worker        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
    -- No CHECK constraints: Postgres prepares each one again for every
    -- single-row statement, which costs more than the push itself. The
    -- functions are the only writers and validate their input.
);

-- The claim reads this index in (priority, id) order and stops after `batch`
-- rows: its cost depends on the batch, not on how many jobs wait or finished.
CREATE INDEX jobs_claim ON queue.jobs (queue, priority, id)
    WHERE status = 'pending' AND NOT group_waiting;

CREATE INDEX jobs_due ON queue.jobs (run_at)
    WHERE status IN ('scheduled', 'retrying');

-- "lease_until IS NOT NULL" is always true of a processing job; it is in the
-- predicate so that the planner cannot use this index for a lookup by id
-- with "status = 'processing'" (ack, fail, touch, progress). This small
-- index looks cheaper than the primary key to it, yet it holds the dead
-- entries of every recent claim: acks went through it at 0.4 ms each.
-- The expiry scan (lease_until < now()) implies the condition.
CREATE INDEX jobs_lease ON queue.jobs (lease_until)
    WHERE status = 'processing' AND lease_until IS NOT NULL;

-- By status first, so that the dead letters (failed, expired) are found
-- without walking completed history, and retention reads each final status
-- up to its cut-off.
CREATE INDEX jobs_finished ON queue.jobs (status, finished_at)
    WHERE status IN ('completed', 'failed', 'expired', 'cancelled');

CREATE UNIQUE INDEX jobs_dedupe ON queue.jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL
      AND status IN ('scheduled', 'pending', 'processing', 'retrying');

-- The serial-group invariant, enforced by the database itself: a group has at
-- most one ACTIVE job, i.e. one that is processing, retrying, or pending and
-- next in line. Every other pending job of the group has group_waiting = true.
-- Hence two jobs of one group can never be processing at once, whatever any
-- query does; the claim and election queries only make it fast.
CREATE UNIQUE INDEX jobs_group_active ON queue.jobs (serial_group)
    WHERE serial_group IS NOT NULL
      AND (status IN ('processing', 'retrying')
           OR (status = 'pending' AND NOT group_waiting));

-- Picks the next job of a group in O(log n) when its active job finishes.
CREATE INDEX jobs_group_next ON queue.jobs (serial_group, priority, id)
    WHERE serial_group IS NOT NULL AND status = 'pending';

-- Row shapes returned by queue_pop and queue_peek. They are types rather
-- than RETURNS TABLE so that the result column `queue` can share its name
-- with the `queue` parameter.
CREATE TYPE queue.claimed_job AS (
    id           bigint,
    queue        text,
    payload      jsonb,
    priority     int,
    serial_group text,
    attempt      int,
    max_attempts int,
    lease_until  timestamptz,
    created_at   timestamptz
);

CREATE TYPE queue.waiting_job AS (
    id           bigint,
    queue        text,
    payload      jsonb,
    priority     int,
    serial_group text,
    attempts     int,
    run_at       timestamptz,
    created_at   timestamptz
);

