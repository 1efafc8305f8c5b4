-- The job tables and the partial indexes that keep every hot query small.
--
-- A job lives in queue.jobs while it can still run (scheduled, pending,
-- processing, retrying) and moves to queue.finished_jobs, in the same
-- transaction, when it becomes final (completed, failed, expired,
-- cancelled). Moving is what makes finishing cheap: a final status in the
-- live table would be an UPDATE that writes a whole new row version plus
-- an entry in the primary key and in a finished-jobs index, while deleting
-- the live row only marks it, and appending to a history table whose two
-- B-trees (id, finished_at) only grow at their right edge is cheap. It
-- also keeps the live table as small as the work in flight, whatever the
-- retention: vacuum, the claim and the lease scan never meet history.
--
-- Each query of the hot path reads a partial index that contains only the
-- rows it can act on:
--
--   jobs_claim         pending jobs that may run now, in claim order
--   jobs_due           scheduled / retrying jobs, by the time they become due
--   jobs_dedupe        one live job per (queue, dedupe_key)
--   jobs_group_active  at most ONE active job per serial group (see below)
--   jobs_group_next    waiting jobs of a group in (priority, id) order
--
-- Processing jobs have no index of their own: a claim writes only the
-- primary-key entry of the row's new version. The lease book in shared
-- memory (src/leases.rs) finds them by id and lease end; where it cannot,
-- a scan of this table does (queue.processing_jobs, queue.expire_leases).
--
-- and for history:
--
--   finished_jobs_pkey  a final job by id (queue_job, queue_retry, queue_delete)
--   finished_jobs_age   by finished_at: retention and metrics windows
--   finished_jobs_dead  dead letters (failed, expired), newest first
--   finished_jobs_keep  jobs of queues with a retention of their own

CREATE TYPE queue.job_status AS ENUM (
    'scheduled',   -- waiting for run_at
    'pending',     -- ready to be claimed
    'processing',  -- claimed; the lease runs until lease_until
    'retrying',    -- an attempt failed; waits for its backoff
    'completed',   -- final
    'failed',      -- final, dead letter
    'expired',     -- final, dead letter: the last attempt outlived its lease
    'cancelled',   -- final
    'blocked'      -- waiting for its dependencies (queue.job_deps); last in
                   -- the list because the upgrade from 0.1.0 appends it
);

CREATE TABLE queue.jobs (
    id            bigserial PRIMARY KEY,
    -- Names compare bytewise (COLLATE "C"): the claim index is searched by
    -- queue on every pop, and locale-aware comparison is a large part of a push.
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
    finished_at   timestamptz,
    -- Dependencies (sql/dependencies.sql). blocked_by: how many of the
    -- job's dependencies have not completed yet; the job is `blocked`
    -- exactly while it is above 0. has_children: some job depends on this
    -- one, so finishing it must resolve their edges. Both stay at their
    -- defaults for a job that uses no dependencies, which then pays nothing
    -- else: its finish reads the flag from the row it moves anyway.
    blocked_by    int NOT NULL DEFAULT 0,
    has_children  boolean NOT NULL DEFAULT false,
    -- Labels for finding jobs (queue_push(..., tags)); NULL for none, so
    -- that untagged jobs stay out of the tag indexes.
    tags          text[] COLLATE "C",
    -- The batch the job was pushed into (sql/batches.sql), NULL for none.
    batch_id      bigint,
    -- How long the job is kept once final, when its queue has a retention
    -- of its own (queue_configure(..., retention)) at push time; NULL: the
    -- global queue.retention. Read only by the retention pass.
    keep_for      interval
    -- No CHECK constraints: Postgres prepares each one again for every
    -- single-row statement, which costs more than the push itself. The
    -- functions are the only writers and validate their input.
);

-- Every claim and every ack leaves a dead row version in this table and a
-- dead entry at the head of jobs_claim, which the next claims walk past
-- until vacuum removes it. Autovacuum's defaults wait for a fifth of the
-- table to be dead and then throttle themselves, so under a sustained load
-- the claims slow down and the backlog grows long before the first vacuum
-- comes (bench/README.md, the soak, has the figures). Vacuum after every
-- 10,000 dead rows, unthrottled; how often autovacuum looks is
-- autovacuum_naptime (README, Running it in production).
ALTER TABLE queue.jobs SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                            autovacuum_vacuum_cost_delay = 0);

-- The claim reads this index in (priority, id) order and stops after `batch`
-- rows: its cost depends on the batch, not on how many jobs wait or finished.
CREATE INDEX jobs_claim ON queue.jobs (queue, priority, id)
    WHERE status = 'pending' AND NOT group_waiting;

CREATE INDEX jobs_due ON queue.jobs (run_at)
    WHERE status IN ('scheduled', 'retrying');

-- Every job in queue.jobs is live, so a key is unique among live jobs.
CREATE UNIQUE INDEX jobs_dedupe ON queue.jobs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL;

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
-- Waiting jobs only: the job an election activates leaves this index, so the
-- election's update writes one index entry fewer.
CREATE INDEX jobs_group_next ON queue.jobs (serial_group, priority, id)
    WHERE serial_group IS NOT NULL AND status = 'pending' AND group_waiting;

-- Final jobs, kept for queue.retention. The same columns in the same order
-- as queue.jobs, so that queue.all_jobs is a plain UNION ALL; lease_until is
-- always NULL and group_waiting always false here.
CREATE TABLE queue.finished_jobs (LIKE queue.jobs INCLUDING DEFAULTS);
ALTER TABLE queue.finished_jobs ADD CONSTRAINT finished_jobs_pkey PRIMARY KEY (id);

-- Retention deletes the oldest history at the rate jobs finish, and the
-- space it frees is reused only once vacuum has recorded it: until then the
-- acks append at the end of the table. Autovacuum's defaults wait for a
-- fifth of the table to be dead and then throttle themselves, so a vacuum of
-- a few GB of history took minutes while the table grew by the jobs of those
-- minutes (bench/README.md, the soak). Vacuum after a twentieth, unthrottled:
-- it visits only the pages that changed (the rest are all-visible).
ALTER TABLE queue.finished_jobs SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);

-- Retention (the oldest) and queue_metrics (the latest hour) read this.
-- Not a BRIN index, although rows arrive in finishing order: the ranges
-- being filled stay unsummarized until autovacuum gets to them (a minute or
-- more), and a BRIN scan reads every unsummarized page. At tens of
-- thousands of acks a second the retention pass of every tick would read
-- hundreds of megabytes of fresh history. Entries only ever join the right
-- edge of this B-tree.
CREATE INDEX finished_jobs_age ON queue.finished_jobs (finished_at);

-- Final jobs kept for their queue's own retention (keep_for), for the
-- retention pass: per distinct keep_for, the oldest first. Partial: jobs of
-- queues without one write no entry.
CREATE INDEX finished_jobs_keep ON queue.finished_jobs (keep_for, finished_at)
    WHERE keep_for IS NOT NULL;

-- Dead letters are rare next to completed jobs: a B-tree of just them.
CREATE INDEX finished_jobs_dead ON queue.finished_jobs (finished_at)
    WHERE status IN ('failed', 'expired');

-- Jobs by tag (`tags @> ARRAY[tag]`), live and final. Partial: a job
-- without tags writes no entry, so it pays nothing for them.
CREATE INDEX jobs_tags ON queue.jobs USING gin (tags) WHERE tags IS NOT NULL;
CREATE INDEX finished_jobs_tags ON queue.finished_jobs USING gin (tags) WHERE tags IS NOT NULL;

-- A batch's jobs, for closing and reporting it; partial, as the tags.
CREATE INDEX jobs_batch ON queue.jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX finished_jobs_batch ON queue.finished_jobs (batch_id) WHERE batch_id IS NOT NULL;

-- Batches: jobs pushed into one from any number of transactions; once it is
-- closed and every job of it is final, its callback jobs are pushed, once.
-- While open, finishing jobs leave the row alone (they only lock it against
-- a concurrent close): the counts are taken from the jobs when it closes,
-- and from then on each finish counts down `pending` (a row every finish of
-- the batch's jobs updates: batches are for workflows, not for the hot path).
CREATE TABLE queue.batches (
    id           bigserial PRIMARY KEY,
    state        text COLLATE "C" NOT NULL DEFAULT 'open',  -- open, closed, done, cancelled
    on_complete  jsonb,      -- pushed when every job is final
    on_failure   jsonb,      -- pushed too when any failed or expired
    created_by   oid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    finished_at  timestamptz,
    total        int,        -- from the close on
    pending      int,        -- jobs not final yet
    completed    int,
    failed       int,        -- failed or expired
    cancelled    int,
    complete_job bigint,     -- the callbacks pushed
    failure_job  bigint
);

-- The edges of the dependency graph: `child` runs only once `parent`
-- completed. Kept until the child is deleted, so that a child can read its
-- parents' results and a retried parent can bring back the children it
-- cancelled. resolved: the parent completed (or ended and the child was
-- pushed with run_anyway), so the edge no longer blocks. cancelled_child:
-- the child was cancelled because this parent ended without completing;
-- retrying the parent revives it. The primary key serves the walk from a
-- finishing parent to its children, job_deps_child the way back.
CREATE TABLE queue.job_deps (
    parent          bigint NOT NULL,
    child           bigint NOT NULL,
    run_anyway      boolean NOT NULL DEFAULT false,
    resolved        boolean NOT NULL DEFAULT false,
    cancelled_child boolean NOT NULL DEFAULT false,
    PRIMARY KEY (parent, child)
);
CREATE INDEX job_deps_child ON queue.job_deps (child);

-- Every job, live or final: what an operator (or a test) looks at.
-- Every failed attempt's error, for the job page (queue_job's "errors"): one
-- row per failure, written by queue_fail and the lease expiry only, so that
-- pushes, claims and acks never touch it; kept for queue.retention.
CREATE TABLE queue.job_errors (
    job_id  bigint NOT NULL,
    attempt int NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    error   text,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX job_errors_at ON queue.job_errors (at);

CREATE VIEW queue.all_jobs AS
    SELECT * FROM queue.jobs
    UNION ALL
    SELECT * FROM queue.finished_jobs;

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

