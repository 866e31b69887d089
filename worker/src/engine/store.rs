//! The rows the engine reads and writes: its workload and snapshot, pre-restore and
//! imported snapshot rows, capture results, and file removal of deleted snapshots.

use sqlx::{PgExecutor, PgPool};
use volsnap_shared::db;
use volsnap_shared::domain::{Snapshot, SnapshotKind, SnapshotState, Workload};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

pub async fn workload(pool: &PgPool, id: WorkloadId) -> Result<Option<Workload>, sqlx::Error> {
    db::workloads::get(pool, id).await
}

pub async fn snapshot(pool: &PgPool, id: SnapshotId) -> Result<Option<Snapshot>, sqlx::Error> {
    db::snapshots::get(pool, id).await
}

/// Insert a `capturing` snapshot row of `kind` (idempotent on the id: recovery
/// re-runs this with the id the journal recorded).
pub async fn insert_capturing(
    exec: impl PgExecutor<'_>,
    id: SnapshotId,
    workload: WorkloadId,
    node: &str,
    kind: SnapshotKind,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (id, workload_id, node, kind, state) VALUES ($1, $2, $3, $4, 'capturing') \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(workload)
    .bind(node)
    .bind(kind)
    .execute(exec)
    .await?;
    Ok(())
}

/// A written archive, as its snapshot row records it.
#[derive(Debug, Clone)]
pub struct ArchiveRecord<'a> {
    /// Relative to the node's snapshot dir.
    pub archive_path: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub manifest: &'a serde_json::Value,
}

/// Fill in a written archive and mark the snapshot `ready`.
pub async fn mark_ready(
    exec: impl PgExecutor<'_>,
    id: SnapshotId,
    a: &ArchiveRecord<'_>,
) -> Result<(), sqlx::Error> {
    let ArchiveRecord {
        archive_path,
        size,
        sha256,
        manifest,
    } = *a;
    sqlx::query(
        "UPDATE snapshots SET state = 'ready', archive_path = $2, size_bytes = $3, sha256 = $4, \
         manifest = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(archive_path)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(sha256)
    .bind(manifest)
    .execute(exec)
    .await?;
    Ok(())
}

/// Mark a snapshot that never became ready as `failed` (a ready one is left alone).
pub async fn mark_failed(exec: impl PgExecutor<'_>, id: SnapshotId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET state = 'failed' WHERE id = $1 AND state = 'capturing'")
        .bind(id)
        .execute(exec)
        .await?;
    Ok(())
}

pub async fn snapshot_state(
    exec: impl PgExecutor<'_>,
    id: SnapshotId,
) -> Result<Option<SnapshotState>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// Link a pre-restore snapshot to its job without a lease (start-up recovery holds the
/// workload's advisory lock instead; the job's owner is gone).
pub async fn link_pre_restore_unfenced(
    pool: &PgPool,
    job: JobId,
    sid: SnapshotId,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET pre_restore_snapshot_id = $2 WHERE id = $1")
        .bind(job)
        .bind(sid)
        .execute(pool)
        .await?;
    Ok(())
}

/// A job's state and workload, for start-up recovery. `None`: the row is gone.
pub async fn job_state(
    pool: &PgPool,
    job: JobId,
) -> Result<Option<volsnap_shared::domain::JobState>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_optional(pool)
        .await
}

/// Snapshots of this node marked deleted whose file is still on disk.
pub async fn deleted_with_files(
    pool: &PgPool,
    node: &str,
) -> Result<Vec<(SnapshotId, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, archive_path FROM snapshots \
         WHERE node = $1 AND deleted_at IS NOT NULL AND file_removed_at IS NULL \
         ORDER BY deleted_at LIMIT 100",
    )
    .bind(node)
    .fetch_all(pool)
    .await
}

pub async fn mark_file_removed(pool: &PgPool, id: SnapshotId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET file_removed_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Register an imported archive as a `ready` snapshot.
pub async fn insert_imported(
    pool: &PgPool,
    id: SnapshotId,
    workload: WorkloadId,
    node: &str,
    a: &ArchiveRecord<'_>,
) -> Result<(), sqlx::Error> {
    let ArchiveRecord {
        archive_path,
        size,
        sha256,
        manifest,
    } = *a;
    sqlx::query(
        "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
         VALUES ($1, $2, $3, 'imported', 'ready', $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(workload)
    .bind(node)
    .bind(archive_path)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(sha256)
    .bind(manifest)
    .execute(pool)
    .await?;
    Ok(())
}

/// Enqueue the background archive of a kept pre-restore copy, with the ids its record
/// chose (idempotent): the `pre-restore` snapshot row (`capturing`) and the
/// `pre_restore_archive` job commit together. Returns false when the workload has an
/// active job (single-flight): try again later.
pub async fn enqueue_pre_restore_archive(
    pool: &PgPool,
    rec: &super::keep::KeepRecord,
    node: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    insert_capturing(
        &mut *tx,
        rec.snapshot_id,
        rec.workload_id,
        node,
        SnapshotKind::PreRestore,
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

/// The job a job works for (an undo's restore, an archive's keeping job).
pub async fn job_source(pool: &PgPool, job: JobId) -> Result<Option<JobId>, sqlx::Error> {
    volsnap_shared::db::jobs::source_of(pool, job).await
}

/// The `pre-restore` snapshot linked to a job, if any.
pub async fn pre_restore_of(pool: &PgPool, job: JobId) -> Result<Option<SnapshotId>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<SnapshotId>>(
        "SELECT pre_restore_snapshot_id FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(pool)
    .await?
    .flatten())
}
