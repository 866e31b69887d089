-- Transient faults (issue 10): a job that changed nothing and failed for a transient
-- cause (database connection lost or restarting, lock connection gone, lease lost)
-- goes back to `queued` with a backoff instead of failing, up to a bound.
ALTER TABLE jobs
    -- how many times the job was put back after a transient fault
    ADD COLUMN retries integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    -- the last transient fault, `code: message` (client-safe), kept for the operator
    ADD COLUMN last_transient_error text,
    -- a queued job is not claimed before this time (the retry backoff)
    ADD COLUMN run_after timestamptz;
