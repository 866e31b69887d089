-- Throughput tuning of the queue.
--
-- 1. Outcome counters are sharded: every finishing job updates one of 16 rows for its
--    (kind, outcome) instead of a single hot row, so concurrent finishers do not queue
--    on one row lock. /metrics sums the shards.
ALTER TABLE job_outcome_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0 CHECK (shard BETWEEN 0 AND 15);
ALTER TABLE job_outcome_stats DROP CONSTRAINT job_outcome_stats_pkey;
ALTER TABLE job_outcome_stats ADD PRIMARY KEY (kind, outcome, shard);

-- 2. Every job row is updated at claim and at finish; keep the claim index free of
--    dead entries by vacuuming the queue table eagerly.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);

-- 3. The claim orders by (created_at, id): the claim index must carry both, or the
--    planner walks the listing index through every finished job.
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (node, created_at, id) WHERE state = 'queued';

-- 4. NOTIFY takes a database-wide lock from pre-commit until the commit is flushed, so
--    every notifying transaction is serialised behind one WAL flush. Claims
--    (queued -> running) now notify nobody, and a statement can opt out of the trigger
--    with the transaction-local setting volsnap.quiet_notify = 'on' and send the
--    notification itself, after its commit, in a transaction that needs no flush
--    (the worker does this when it finishes a job).
CREATE OR REPLACE FUNCTION volsnap_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('volsnap.quiet_notify', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('volsnap_job_insert', NEW.node);
        PERFORM pg_notify('volsnap_job_state', NEW.id::text);
    ELSIF NEW.state IS DISTINCT FROM OLD.state AND NOT (OLD.state = 'queued' AND NEW.state = 'running') THEN
        PERFORM pg_notify('volsnap_job_state', NEW.id::text);
        IF NEW.state = 'queued' THEN
            PERFORM pg_notify('volsnap_job_insert', NEW.node);
        ELSIF OLD.state = 'running' AND NEW.batch_id IS NOT NULL THEN
            -- a batch slot (max_parallel) freed up: wake every node
            PERFORM pg_notify('volsnap_job_insert', '*');
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
