-- Background archive of the pre-restore copy, and undo (issue 11).
--
-- 1. Two job kinds: 'pre_restore_archive' (archive a restore's kept pre-restore
--    directory as a `pre-restore` snapshot, in the background, after the restore) and
--    'undo' (put a restore's pre-restore data back). Both stay under the single-flight
--    index: an archive reads the kept directory that an undo would swap back in.
--    The constraints are re-created by name with every kind so far ('plan' is issue 12's).
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('capture', 'restore', 'plan', 'pre_restore_archive', 'undo'));
ALTER TABLE job_outcome_stats DROP CONSTRAINT job_outcome_stats_kind_check;
ALTER TABLE job_outcome_stats ADD CONSTRAINT job_outcome_stats_kind_check
    CHECK (kind IN ('capture', 'restore', 'plan', 'pre_restore_archive', 'undo'));

-- 2. Which job a job works for: an undo names the restore (or undo) it reverts, a
--    pre-restore archive the job whose kept copy it archives. No foreign key on the
--    source: finished jobs are pruned independently.
CREATE TABLE job_sources (
    job_id        uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    source_job_id uuid NOT NULL
);
CREATE INDEX job_sources_source_idx ON job_sources (source_job_id);
