-- volsnap schema v1. See docs/queue.md for the job state diagram.

CREATE TABLE workloads (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    project          text NOT NULL CHECK (project ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    stage            text NOT NULL CHECK (stage ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    node             text NOT NULL CHECK (length(node) BETWEEN 1 AND 253),
    source_kind      text NOT NULL CHECK (source_kind IN ('image', 'git', 'compose')),
    image            text,
    volumes          jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(volumes) = 'array'),
    -- capture stops the workload's containers for a consistent copy when true
    stop_for_capture boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, stage, name)
);

CREATE TABLE snapshots (
    id           uuid PRIMARY KEY,
    workload_id  uuid NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    node         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('manual', 'pre-restore', 'imported')),
    state        text NOT NULL CHECK (state IN ('capturing', 'ready', 'failed')),
    -- relative to the node's snapshot dir; never absolute, never '..'
    archive_path text CHECK (archive_path IS NULL OR (archive_path !~ '^/' AND archive_path !~ '(^|/)\.\.(/|$)')),
    size_bytes   bigint CHECK (size_bytes IS NULL OR size_bytes >= 0),
    sha256       text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    manifest     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- set by the API on DELETE; the node's worker removes the file and sets file_removed_at
    deleted_at      timestamptz,
    file_removed_at timestamptz,
    CHECK (state <> 'ready' OR (archive_path IS NOT NULL AND size_bytes IS NOT NULL AND sha256 IS NOT NULL AND manifest IS NOT NULL))
);
CREATE INDEX snapshots_workload_idx ON snapshots (workload_id, created_at DESC);

CREATE TABLE batches (
    id                  uuid PRIMARY KEY,
    requested_by        text,
    item_count          integer NOT NULL CHECK (item_count >= 0),
    max_parallel        integer CHECK (max_parallel IS NULL OR max_parallel >= 1),
    stop_after_failures integer CHECK (stop_after_failures IS NULL OR stop_after_failures >= 1),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('capture', 'restore')),
    workload_id     uuid NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    snapshot_id     uuid REFERENCES snapshots (id) ON DELETE SET NULL,
    node            text NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    phase           text NOT NULL DEFAULT 'queued',
    progress_done   bigint NOT NULL DEFAULT 0,
    progress_total  bigint NOT NULL DEFAULT 0,
    -- incremented by every claim; every update by a worker is fenced on it
    attempt         integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- set when a running job's lease expired: the next claimer runs journal recovery first
    recovering      boolean NOT NULL DEFAULT false,
    -- cancel asked for while running; honoured only before the point of no return
    cancel_requested boolean NOT NULL DEFAULT false,
    -- the worker has begun destructive work (quiesce); cancel is refused from here on
    past_point_of_no_return boolean NOT NULL DEFAULT false,
    worker_id       text,
    error_code      text,
    error_message   text,
    pre_restore_snapshot_id uuid REFERENCES snapshots (id) ON DELETE SET NULL,
    batch_id        uuid REFERENCES batches (id) ON DELETE SET NULL,
    requested_by    text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at      timestamptz,
    finished_at     timestamptz,
    heartbeat_at    timestamptz,
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CHECK (state <> 'failed' OR error_code IS NOT NULL),
    CHECK (state <> 'running' OR (heartbeat_at IS NOT NULL AND worker_id IS NOT NULL)),
    CHECK (kind <> 'restore' OR snapshot_id IS NOT NULL OR state IN ('succeeded', 'failed', 'cancelled'))
);

-- Single-flight: at most one active job per workload.
CREATE UNIQUE INDEX jobs_one_active_per_workload ON jobs (workload_id) WHERE state IN ('queued', 'running');
-- Claim: oldest queued job of a node.
CREATE INDEX jobs_claim_idx ON jobs (node, created_at) WHERE state = 'queued';
-- Rescue: running jobs by heartbeat.
CREATE INDEX jobs_running_heartbeat_idx ON jobs (heartbeat_at) WHERE state = 'running';
CREATE INDEX jobs_batch_idx ON jobs (batch_id, state) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_list_idx ON jobs (created_at DESC, id DESC);

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    role         text NOT NULL CHECK (role IN ('admin', 'viewer')),
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- Workers announce themselves; /metrics exports the newest heartbeat per node.
CREATE TABLE workers (
    id           text PRIMARY KEY,
    node         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

-- Counters that alerting needs; they survive pruning of finished jobs.
-- Histogram buckets are per-bucket (not cumulative) counts; bounds live in code.
CREATE TABLE job_outcome_stats (
    kind             text NOT NULL CHECK (kind IN ('capture', 'restore')),
    outcome          text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'cancelled')),
    finished         bigint NOT NULL DEFAULT 0,
    duration_sum     double precision NOT NULL DEFAULT 0,
    duration_buckets bigint[] NOT NULL,
    PRIMARY KEY (kind, outcome)
);

CREATE TABLE restore_stats (
    id               smallint PRIMARY KEY CHECK (id = 1),
    bytes_total      bigint NOT NULL DEFAULT 0,
    downtime_count   bigint NOT NULL DEFAULT 0,
    downtime_sum     double precision NOT NULL DEFAULT 0,
    downtime_buckets bigint[] NOT NULL
);

-- Wake-ups: workers LISTEN on volsnap_job_insert (payload: node), API waiters on
-- volsnap_job_state (payload: job id).
CREATE FUNCTION volsnap_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('volsnap_job_insert', NEW.node);
        PERFORM pg_notify('volsnap_job_state', NEW.id::text);
    ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
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

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION volsnap_jobs_notify();
