-- A pre-restore archive (issue 11) reads a kept copy that is no longer the workload's
-- live data: it leaves single-flight, so a restore or undo of the workload is accepted
-- while an earlier restore's copy is still being archived (before, they were refused
-- with 409 active_job for ~13 s per GiB). The archive and an undo of the same copy are
-- kept apart on the node by the copy's own lock (worker/src/engine/keep.rs).
-- The predicate is `changes_workload_sql!()` in shared/src/domain.rs; an ON CONFLICT
-- clause must repeat it exactly.
DROP INDEX jobs_one_active_per_workload;
CREATE UNIQUE INDEX jobs_one_active_per_workload ON jobs (workload_id)
    WHERE state IN ('queued', 'running') AND kind NOT IN ('plan', 'pre_restore_archive');
