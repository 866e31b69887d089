//! Snapshot rows. The API creates a manual capture's `capturing` row and marks
//! deletions; the worker fills in a capture's archive path, size, sha256 and manifest,
//! registers imports and records the removal of deleted snapshots' files.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection, PgExecutor, PgPool};

use super::{Cursor, Page};
use crate::domain::{Snapshot, SnapshotKind, SnapshotState};
use crate::ids::{JobId, SnapshotId, WorkloadId};

const COLUMNS: &str = "id, workload_id, node, kind, state, archive_path, size_bytes, sha256, \
    manifest, created_at, deleted_at";

/// Where a snapshot's archive lives, relative to its node's snapshot dir (the value of
/// `snapshots.archive_path` for every archive volsnap writes or imports):
/// `<workload>/<snapshot>.tar.gz`.
pub fn archive_path(workload: WorkloadId, snapshot: SnapshotId) -> String {
    format!("{workload}/{snapshot}.tar.gz")
}

pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
) -> Result<Option<Snapshot>, sqlx::Error> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"));
    sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// Read a snapshot and hold it `FOR SHARE` until the caller's transaction ends, so it
/// cannot be marked deleted while a restore of it is being enqueued.
pub async fn get_for_share(
    conn: &mut PgConnection,
    id: SnapshotId,
) -> Result<Option<Snapshot>, sqlx::Error> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1 FOR SHARE"));
    sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Insert a `capturing` snapshot row of `kind`: the row a capture job (or a kept
/// pre-restore copy's archive job) fills in. Idempotent on the id: recovery re-runs it
/// with the id the journal recorded, and then gets `None` (the row is there already).
pub async fn insert_capturing<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
    workload: WorkloadId,
    node: &str,
    kind: SnapshotKind,
) -> Result<Option<Snapshot>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO snapshots (id, workload_id, node, kind, state) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}"
        )
    });
    sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .bind(workload)
        .bind(node)
        .bind(kind)
        .bind(SnapshotState::Capturing)
        .fetch_optional(exec)
        .await
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

impl ArchiveRecord<'_> {
    fn size_bytes(&self) -> i64 {
        i64::try_from(self.size).unwrap_or(i64::MAX)
    }
}

/// Fill in a written archive and mark the snapshot `ready`.
pub async fn mark_ready<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
    a: &ArchiveRecord<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE snapshots SET state = 'ready', archive_path = $2, size_bytes = $3, sha256 = $4, \
         manifest = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(a.archive_path)
    .bind(a.size_bytes())
    .bind(a.sha256)
    .bind(a.manifest)
    .execute(exec)
    .await?;
    Ok(())
}

/// Mark a snapshot that never became ready as `failed` (a ready one is left alone).
pub async fn mark_failed<'e>(exec: impl PgExecutor<'e>, id: SnapshotId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET state = 'failed' WHERE id = $1 AND state = 'capturing'")
        .bind(id)
        .execute(exec)
        .await?;
    Ok(())
}

/// A snapshot's state; `None`: no such row.
pub async fn state<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
) -> Result<Option<SnapshotState>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// Register an imported archive as a `ready` snapshot.
pub async fn insert_imported<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
    workload: WorkloadId,
    node: &str,
    a: &ArchiveRecord<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
         VALUES ($1, $2, $3, 'imported', 'ready', $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(workload)
    .bind(node)
    .bind(a.archive_path)
    .bind(a.size_bytes())
    .bind(a.sha256)
    .bind(a.manifest)
    .execute(exec)
    .await?;
    Ok(())
}

/// Snapshots of this node marked deleted whose file is still on disk (at most 100,
/// oldest deletion first).
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

/// Record that a deleted snapshot's file is gone from the node.
pub async fn mark_file_removed(pool: &PgPool, id: SnapshotId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET file_removed_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A workload's snapshots, newest first, keyset-paginated.
pub async fn list_for_workload(
    pool: &PgPool,
    workload: WorkloadId,
    include_deleted: bool,
    before: Option<Cursor>,
    limit: i64,
) -> Result<Page<Snapshot>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM snapshots \
             WHERE workload_id = $1 AND ($2 OR deleted_at IS NULL) \
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        )
    });
    let limit = limit.clamp(1, super::MAX_LIMIT);
    let rows = sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(workload)
        .bind(include_deleted)
        .bind(before.map(|c| c.created_at))
        .bind(before.map(|c| c.id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    Ok(super::page_of(rows, limit, |s| Cursor {
        created_at: s.created_at,
        id: s.id.0,
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteSnapshotError {
    /// Unknown, or already deleted.
    #[error("snapshot not found")]
    NotFound,
    /// A queued or running job restores from, captures into, or keeps its pre-restore
    /// copy in this snapshot.
    #[error("snapshot is in use by active job {0}")]
    InUse(JobId),
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

/// Mark a snapshot deleted; the node's worker removes the archive file later and sets
/// `file_removed_at`. Deleted snapshots are hidden from listings and cannot be restored.
pub async fn mark_deleted(pool: &PgPool, id: SnapshotId) -> Result<Snapshot, DeleteSnapshotError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("UPDATE snapshots SET deleted_at = now() WHERE id = $1 RETURNING {COLUMNS}")
    });
    let mut tx = pool.begin().await?;
    // FOR UPDATE waits for a restore that holds the row FOR SHARE; the job check below
    // then runs as a new statement and sees that restore's job.
    let live: Option<bool> =
        sqlx::query_scalar("SELECT deleted_at IS NULL FROM snapshots WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if live != Some(true) {
        return Err(DeleteSnapshotError::NotFound);
    }
    if let Some(job) = super::jobs::active_referencing_snapshot(&mut *tx, id).await? {
        return Err(DeleteSnapshotError::InUse(job));
    }
    let snap = sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(snap)
}
