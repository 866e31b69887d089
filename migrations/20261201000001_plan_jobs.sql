-- Restore plans (dry runs) and post-restore verification (issue 12).
--
-- 1. A third job kind, 'plan': a read-only pre-flight + diff of a workload's live
--    volumes against a snapshot. The constraints keep their original names (another
--    migration re-creates them by name).
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('capture', 'restore', 'plan'));
ALTER TABLE job_outcome_stats DROP CONSTRAINT job_outcome_stats_kind_check;
ALTER TABLE job_outcome_stats ADD CONSTRAINT job_outcome_stats_kind_check
    CHECK (kind IN ('capture', 'restore', 'plan'));
-- A plan names its snapshot as a restore does.
ALTER TABLE jobs ADD CONSTRAINT jobs_plan_snapshot_check
    CHECK (kind <> 'plan' OR snapshot_id IS NOT NULL OR state IN ('succeeded', 'failed', 'cancelled'));

-- 2. What a job found, as JSON (a plan's pre-flight verdict and per-volume diff; a
--    verified restore's verification). NULL for jobs that report nothing.
ALTER TABLE jobs ADD COLUMN result jsonb;

-- 3. Single-flight covers the jobs that change a workload, not plans: a plan neither
--    blocks nor is blocked by a capture or restore of the same workload.
DROP INDEX jobs_one_active_per_workload;
CREATE UNIQUE INDEX jobs_one_active_per_workload ON jobs (workload_id)
    WHERE state IN ('queued', 'running') AND kind <> 'plan';

-- 4. Verification after a restore: asked per request, defaulting to the workload's own
--    setting.
ALTER TABLE workloads ADD COLUMN verify_restores boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN verify boolean NOT NULL DEFAULT false;
