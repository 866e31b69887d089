//! Snapshot rows as the API sees them. The worker fills in a capture's archive path,
//! size, sha256 and manifest; the API creates the `capturing` row and marks deletions.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection, PgExecutor, PgPool};

use super::{Cursor, Page};
use crate::domain::{Snapshot, SnapshotKind, SnapshotState, Workload};
use crate::ids::{JobId, SnapshotId, WorkloadId};

const COLUMNS: &str = "id, workload_id, node, kind, state, archive_path, size_bytes, sha256, \
    manifest, created_at, deleted_at";

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

/// The `capturing` row a manual capture job fills in, on the workload's node.
pub async fn insert_capturing(
    conn: &mut PgConnection,
    workload: &Workload,
) -> Result<Snapshot, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO snapshots (id, workload_id, node, kind, state) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {COLUMNS}"
        )
    });
    sqlx::query_as::<_, Snapshot>(AssertSqlSafe(SQL.as_str()))
        .bind(SnapshotId::new())
        .bind(workload.id)
        .bind(&workload.node)
        .bind(SnapshotKind::Manual)
        .bind(SnapshotState::Capturing)
        .fetch_one(conn)
        .await
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
