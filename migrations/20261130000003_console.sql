-- What the web console needs from the database (issue 13).
--
-- 1. A job's phase timeline. The worker only ever overwrites jobs.phase; this trigger
--    keeps one row per phase change of a running job (the worker's set_phase), so the
--    console can show when each phase began without any change to queue code. Claims
--    and finishes are not logged: the job row has their times (created_at, started_at,
--    finished_at), and the trigger's WHEN clause is checked without calling the
--    function, so the queue's hot path (insert, claim, finish) pays nothing for it.
--    Rows go with their job when finished jobs are pruned.
CREATE TABLE job_phases (
    job_id         uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    attempt        integer NOT NULL,
    state          text NOT NULL,
    phase          text NOT NULL,
    progress_done  bigint NOT NULL,
    progress_total bigint NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, seq)
);

CREATE FUNCTION volsnap_job_phase_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_phases (job_id, attempt, state, phase, progress_done, progress_total)
    VALUES (NEW.id, NEW.attempt, NEW.state, NEW.phase, NEW.progress_done, NEW.progress_total);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_phase_log AFTER UPDATE OF phase ON jobs
    FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state = 'running' AND OLD.phase IS DISTINCT FROM NEW.phase)
    EXECUTE FUNCTION volsnap_job_phase_log();

-- 2. A ready snapshot whose archive file the node's worker found missing (NULL: present,
--    or not checked yet). Set and cleared by the worker's periodic check and by a
--    restore's pre-flight; the console offers no Restore for such a snapshot.
ALTER TABLE snapshots ADD COLUMN file_missing_at timestamptz;
