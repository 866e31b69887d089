//! The job queue: the `jobs` table, in the style of River and underway.
//!
//! - [`enqueue`] runs inside the caller's transaction, so domain rows and the job commit
//!   together; a single-flight conflict is a typed error naming the active job and does
//!   not abort the caller's transaction.
//! - Workers claim with one `UPDATE … FOR UPDATE SKIP LOCKED` statement filtered by node
//!   (`claim.rs`), then hold the workload's advisory lock on a dedicated connection
//!   (`locks.rs`; [`try_workload_lock`] for a lock outside a job run).
//! - Every update a worker makes is fenced on `(id, attempt, state = 'running')`: a
//!   worker that lost its lease cannot overwrite the job.
//! - A job whose heartbeat expired is never re-run blindly: [`rescue_expired`] puts it
//!   back on its node as `queued` + `recovering`.
//!
//! The runner, [`run`], is in River's parts, one concern a file: `producer.rs` (the run
//! loop and its slots), `claim.rs`, `executor.rs` (one job from lock to unlock),
//! `completer.rs` (outcomes, batched), `heartbeat.rs`, `maintenance.rs` and
//! `rescuer.rs`, `locks.rs`; what a handler sees is in `job.rs`, the settings in
//! `config.rs`.
//!
//! The state diagram is in `docs/queue.md`.

mod claim;
mod completer;
mod config;
pub mod events;
mod executor;
mod heartbeat;
mod job;
mod locks;
mod maintenance;
mod producer;
mod rescuer;
pub mod stats;

use sqlx::{PgConnection, PgPool};

use crate::domain::{Job, JobKind, JobState};
use crate::ids::{BatchId, JobId, SnapshotId, WorkloadId};

pub use config::{RetryPolicy, WorkerConfig, WorkerStatus, min_pool_size};
pub use events::JobEvents;
pub use job::{JobContext, JobHandler, JobOutcome, PointOfNoReturnError};
pub use locks::{ADVISORY_LOCK_CLASS, WorkloadLock, try_workload_lock, workload_lock_key};
pub use maintenance::prune_finished;
pub use producer::run;
pub use rescuer::rescue_expired;

/// A job to put on the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    pub workload_id: WorkloadId,
    pub snapshot_id: Option<SnapshotId>,
    pub node: String,
    pub batch_id: Option<BatchId>,
    pub requested_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The workload already has a queued or running job (single-flight).
    #[error("workload already has an active job {active_job}")]
    AlreadyActive { active_job: JobId },
    #[error("database error while enqueueing")]
    Db(#[from] sqlx::Error),
}

/// Errors of the fenced updates a worker makes to its own job.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The job is no longer ours: its lease expired and it was rescued, or it was
    /// otherwise moved on. The caller must stop touching it.
    #[error("lease on job {0} lost (attempt fenced)")]
    LeaseLost(JobId),
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

/// Insert a job inside the caller's transaction (or on a plain connection).
///
/// Uses `ON CONFLICT DO NOTHING` against the single-flight index, so a conflict leaves
/// the caller's transaction usable. A concurrent uncommitted enqueue for the same
/// workload makes this wait for it, as the unique index does. A `plan` job is outside
/// single-flight (it changes nothing): it is always inserted.
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Job, EnqueueError> {
    enqueue_with(conn, job, &JobOptions::default()).await
}

/// Per-job options beyond [`NewJob`].
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// A restore compares the restored volumes with the snapshot before it succeeds.
    pub verify: bool,
}

/// [`enqueue`] with [`JobOptions`].
pub async fn enqueue_with(
    conn: &mut PgConnection,
    job: &NewJob,
    opts: &JobOptions,
) -> Result<Job, EnqueueError> {
    if !job.kind.changes_workload() {
        let sql = concat!(
            "INSERT INTO jobs (id, kind, workload_id, snapshot_id, node, batch_id, requested_by, verify) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            crate::job_columns!(),
            ""
        );
        return Ok(sqlx::query_as::<_, Job>(sql)
            .bind(JobId::new())
            .bind(job.kind)
            .bind(job.workload_id)
            .bind(job.snapshot_id)
            .bind(&job.node)
            .bind(job.batch_id)
            .bind(&job.requested_by)
            .bind(false)
            .fetch_one(&mut *conn)
            .await?);
    }
    let sql = concat!(
        "INSERT INTO jobs (id, kind, workload_id, snapshot_id, node, batch_id, requested_by, verify) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (workload_id) WHERE state IN ('queued', 'running') AND ",
        crate::changes_workload_sql!(),
        " DO NOTHING RETURNING ",
        crate::job_columns!(),
        ""
    );
    // The active job may finish between our conflict and the look-up: try again then.
    for _ in 0..5 {
        let inserted = sqlx::query_as::<_, Job>(sql)
            .bind(JobId::new())
            .bind(job.kind)
            .bind(job.workload_id)
            .bind(job.snapshot_id)
            .bind(&job.node)
            .bind(job.batch_id)
            .bind(&job.requested_by)
            .bind(opts.verify)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(j) = inserted {
            return Ok(j);
        }
        if let Some(active_job) =
            crate::db::jobs::active_for_workload(&mut *conn, job.workload_id).await?
        {
            return Err(EnqueueError::AlreadyActive { active_job });
        }
    }
    Err(EnqueueError::Db(sqlx::Error::Protocol(
        "single-flight conflict kept changing; giving up".into(),
    )))
}

/// Options of a batch of restore jobs, enforced by the queue.
#[derive(Debug, Clone, Default)]
pub struct NewBatch {
    pub requested_by: Option<String>,
    pub item_count: i32,
    /// At most this many of the batch's jobs run at once.
    pub max_parallel: Option<i32>,
    /// Once this many of the batch's jobs failed, its queued jobs are cancelled.
    pub stop_after_failures: Option<i32>,
}

pub async fn create_batch(conn: &mut PgConnection, b: &NewBatch) -> Result<BatchId, sqlx::Error> {
    let id = BatchId::new();
    sqlx::query(
        "INSERT INTO batches (id, requested_by, item_count, max_parallel, stop_after_failures) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&b.requested_by)
    .bind(b.item_count)
    .bind(b.max_parallel)
    .bind(b.stop_after_failures)
    .execute(conn)
    .await?;
    Ok(id)
}

pub async fn get_job<'e, E>(exec: E, id: JobId) -> Result<Option<Job>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_as::<_, Job>(concat!(
        "SELECT ",
        crate::job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(exec)
    .await
}

/// What a cancel request did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled(Job),
    /// The job is running but has not reached its point of no return: its worker will
    /// stop it and mark it cancelled.
    Requested(Job),
    /// The job has already stopped containers (or otherwise begun destructive work).
    TooLate(Job),
    AlreadyFinal(Job),
    NotFound,
}

pub async fn cancel(pool: &PgPool, id: JobId) -> Result<CancelOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let cancelled = sqlx::query_as::<_, Job>(concat!(
        "UPDATE jobs SET state = 'cancelled', phase = 'cancelled', finished_at = now(), \
         error_code = NULL, error_message = 'cancelled before it started' \
         WHERE id = $1 AND state = 'queued' RETURNING ",
        crate::job_columns!(),
        ""
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = cancelled {
        stats::record_finished(&mut tx, &job).await?;
        tx.commit().await?;
        return Ok(CancelOutcome::Cancelled(job));
    }
    let requested = sqlx::query_as::<_, Job>(concat!(
        "UPDATE jobs SET cancel_requested = true \
         WHERE id = $1 AND state = 'running' AND NOT past_point_of_no_return \
         RETURNING ",
        crate::job_columns!(),
        ""
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = requested {
        tx.commit().await?;
        return Ok(CancelOutcome::Requested(job));
    }
    let job = get_job(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(match job {
        None => CancelOutcome::NotFound,
        Some(j) if j.state.is_final() => CancelOutcome::AlreadyFinal(j),
        // Running past the point of no return (a queued job would have been cancelled
        // above; a row that changed under us in between is reported as it is now).
        Some(j) if j.state == JobState::Running => CancelOutcome::TooLate(j),
        Some(j) => CancelOutcome::Requested(j),
    })
}
