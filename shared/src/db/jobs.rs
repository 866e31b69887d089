//! Job look-ups and listings for the API. Mutations of jobs go through `crate::queue`.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgExecutor, PgPool};

use super::{Cursor, Page};
use crate::domain::{JOB_COLUMNS, Job, JobKind, JobState};
use crate::ids::{BatchId, JobId, SnapshotId, WorkloadId};

/// Filters of the job listing; empty lists and `None`s do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub kinds: Vec<JobKind>,
    pub workload_id: Option<WorkloadId>,
    pub batch_id: Option<BatchId>,
    pub node: Option<String>,
    pub before: Option<Cursor>,
    pub limit: i64,
}

/// Jobs newest first (`created_at DESC, id DESC`, served by `jobs_list_idx`).
pub async fn list(pool: &PgPool, f: &JobFilter) -> Result<Page<Job>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
               AND (cardinality($2::text[]) = 0 OR kind = ANY($2)) \
               AND ($3::uuid IS NULL OR workload_id = $3) \
               AND ($4::uuid IS NULL OR batch_id = $4) \
               AND ($5::text IS NULL OR node = $5) \
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        )
    });
    let limit = f.limit.clamp(1, super::MAX_LIMIT);
    let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = f.kinds.iter().map(|k| k.as_str()).collect();
    let rows = sqlx::query_as::<_, Job>(AssertSqlSafe(SQL.as_str()))
        .bind(states)
        .bind(kinds)
        .bind(f.workload_id)
        .bind(f.batch_id)
        .bind(&f.node)
        .bind(f.before.map(|c| c.created_at))
        .bind(f.before.map(|c| c.id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    Ok(super::page_of(rows, limit, |j| Cursor {
        created_at: j.created_at,
        id: j.id.0,
    }))
}

/// The workload's queued or running capture, restore or undo, if any (there is at most
/// one; plans and pre-restore archives are outside single-flight and not counted).
pub async fn active_for_workload<'e>(
    exec: impl PgExecutor<'e>,
    workload: WorkloadId,
) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "SELECT id FROM jobs WHERE workload_id = $1 AND state IN ('queued', 'running') AND ",
        crate::changes_workload_sql!()
    ))
    .bind(workload)
    .fetch_optional(exec)
    .await
}

/// A queued or running job that reads, fills or keeps its pre-restore copy in the
/// snapshot.
pub async fn active_referencing_snapshot<'e>(
    exec: impl PgExecutor<'e>,
    snapshot: SnapshotId,
) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE (snapshot_id = $1 OR pre_restore_snapshot_id = $1) \
         AND state IN ('queued', 'running') LIMIT 1",
    )
    .bind(snapshot)
    .fetch_optional(exec)
    .await
}

/// The workload's default for verifying restores (`workloads.verify_restores`);
/// `None` for an unknown workload.
pub async fn workload_verifies_restores<'e>(
    exec: impl PgExecutor<'e>,
    workload: WorkloadId,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT verify_restores FROM workloads WHERE id = $1")
        .bind(workload)
        .fetch_optional(exec)
        .await
}

/// The job a job works for: the restore (or undo) an undo reverts, the job whose kept
/// pre-restore copy an archive job archives.
pub async fn source_of<'e>(
    exec: impl PgExecutor<'e>,
    job: JobId,
) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar("SELECT source_job_id FROM job_sources WHERE job_id = $1")
        .bind(job)
        .fetch_optional(exec)
        .await
}

/// Set a workload's default for verifying restores. False: no such workload.
pub async fn set_workload_verifies_restores<'e>(
    exec: impl PgExecutor<'e>,
    workload: WorkloadId,
    verify: bool,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE workloads SET verify_restores = $2 WHERE id = $1")
            .bind(workload)
            .bind(verify)
            .execute(exec)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Record the job a new job works for (in the enqueueing transaction).
pub async fn set_source<'e>(
    exec: impl PgExecutor<'e>,
    job: JobId,
    source: JobId,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO job_sources (job_id, source_job_id) VALUES ($1, $2)")
        .bind(job)
        .bind(source)
        .execute(exec)
        .await?;
    Ok(())
}

/// A restore or undo of the workload that succeeded after `job` was created: `job` is
/// then not the workload's latest change, and undoing it would discard that one.
pub async fn later_change<'e>(
    exec: impl PgExecutor<'e>,
    workload: WorkloadId,
    job: JobId,
) -> Result<Option<JobId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE workload_id = $1 AND id <> $2 \
           AND kind IN ('restore', 'undo') AND state = 'succeeded' \
           AND created_at > (SELECT created_at FROM jobs WHERE id = $2) \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(workload)
    .bind(job)
    .fetch_optional(exec)
    .await
}

/// Whether an undo of `job` is running or succeeded (its pre-restore copy was, or is
/// being, put back).
pub async fn undone<'e>(exec: impl PgExecutor<'e>, job: JobId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs j JOIN job_sources s ON s.job_id = j.id \
         WHERE s.source_job_id = $1 AND j.kind = 'undo' AND j.state IN ('running', 'succeeded'))",
    )
    .bind(job)
    .fetch_one(exec)
    .await
}
