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

/// The [`JobFilter`] conditions, on `$1`..`$7` as [`filtered`] binds them (a listing
/// adds its own conditions after these and ends with `LIMIT $8`).
pub(super) const FILTER_WHERE: &str = "(cardinality($1::text[]) = 0 OR state = ANY($1)) \
               AND (cardinality($2::text[]) = 0 OR kind = ANY($2)) \
               AND ($3::uuid IS NULL OR workload_id = $3) \
               AND ($4::uuid IS NULL OR batch_id = $4) \
               AND ($5::text IS NULL OR node = $5) \
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7))";

/// A job listing `sql` with `f` bound as `$1`..`$8` (`$8` is the page size plus one, to
/// tell whether a next page exists); the page size, clamped.
pub(super) fn filtered<'q>(
    sql: &'static str,
    f: &'q JobFilter,
) -> (
    sqlx::query::QueryAs<'q, sqlx::Postgres, Job, sqlx::postgres::PgArguments>,
    i64,
) {
    let limit = f.limit.clamp(1, super::MAX_LIMIT);
    let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = f.kinds.iter().map(|k| k.as_str()).collect();
    let q = sqlx::query_as::<_, Job>(AssertSqlSafe(sql))
        .bind(states)
        .bind(kinds)
        .bind(f.workload_id)
        .bind(f.batch_id)
        .bind(&f.node)
        .bind(f.before.map(|c| c.created_at))
        .bind(f.before.map(|c| c.id))
        .bind(limit + 1);
    (q, limit)
}

/// Jobs newest first (`created_at DESC, id DESC`, served by `jobs_list_idx`).
pub async fn list(pool: &PgPool, f: &JobFilter) -> Result<Page<Job>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {FILTER_WHERE} \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        )
    });
    let (q, limit) = filtered(SQL.as_str(), f);
    let rows = q.fetch_all(pool).await?;
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

/// A job's state; `None`: the row is gone (pruned).
pub async fn state<'e>(
    exec: impl PgExecutor<'e>,
    job: JobId,
) -> Result<Option<JobState>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(exec)
        .await
}

/// The `pre-restore` snapshot linked to a job, if any.
pub async fn pre_restore_of<'e>(
    exec: impl PgExecutor<'e>,
    job: JobId,
) -> Result<Option<SnapshotId>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<SnapshotId>>(
        "SELECT pre_restore_snapshot_id FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(exec)
    .await?
    .flatten())
}

/// Link a kept copy's `pre-restore` snapshot to the job that kept it: the one place
/// this link is written (by the copy's archive job, under the copy's lock, once the
/// keeping job is final — so no lease fences it).
pub async fn link_pre_restore_unfenced<'e>(
    exec: impl PgExecutor<'e>,
    job: JobId,
    sid: SnapshotId,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET pre_restore_snapshot_id = $2 WHERE id = $1")
        .bind(job)
        .bind(sid)
        .execute(exec)
        .await?;
    Ok(())
}

/// The ids a kept pre-restore copy's background archive is enqueued with (chosen by
/// its keep record, so enqueueing is idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreRestoreArchive {
    /// The restore (or undo) that kept the copy.
    pub job_id: JobId,
    pub workload_id: WorkloadId,
    /// The `pre-restore` snapshot the copy is archived as.
    pub snapshot_id: SnapshotId,
    /// The `pre_restore_archive` job.
    pub archive_job_id: JobId,
}

/// Enqueue the background archive of a kept pre-restore copy, with the ids its record
/// chose (idempotent): the `pre-restore` snapshot row (`capturing`) and the
/// `pre_restore_archive` job commit together. Returns false when the workload has an
/// active job (single-flight): try again later.
pub async fn enqueue_pre_restore_archive(
    pool: &PgPool,
    rec: impl Into<PreRestoreArchive>,
    node: &str,
) -> Result<bool, sqlx::Error> {
    let rec: PreRestoreArchive = rec.into();
    let mut tx = pool.begin().await?;
    super::snapshots::insert_capturing(
        &mut *tx,
        rec.snapshot_id,
        rec.workload_id,
        node,
        crate::domain::SnapshotKind::PreRestore,
    )
    .await?;
    // No conflict target: the single-flight index (whatever its predicate) and the
    // primary key both end in "nothing inserted".
    let inserted: Option<JobId> = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, workload_id, snapshot_id, node, requested_by) \
         VALUES ($1, 'pre_restore_archive', $2, $3, $4, 'volsnap-worker') \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(rec.archive_job_id)
    .bind(rec.workload_id)
    .bind(rec.snapshot_id)
    .bind(node)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)")
            .bind(rec.archive_job_id)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    sqlx::query(
        "INSERT INTO job_sources (job_id, source_job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(rec.archive_job_id)
    .bind(rec.job_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Restores that failed in the last 10 minutes, per workload (only workloads with one;
/// at most 100, most failures first): `(project/stage/name, workload id, node, count)`.
pub async fn recent_restore_failures(
    pool: &PgPool,
) -> Result<Vec<(String, uuid::Uuid, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.project || '/' || w.stage || '/' || w.name, w.id, j.node, count(*)::int8 \
         FROM jobs j JOIN workloads w ON w.id = j.workload_id \
         WHERE j.kind = 'restore' AND j.state = 'failed' \
           AND j.finished_at > now() - interval '10 minutes' \
         GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1 LIMIT 100",
    )
    .fetch_all(pool)
    .await
}
