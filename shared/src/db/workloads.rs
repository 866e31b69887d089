//! Workload rows. Validation of names and the lexical volume rules happens in the API
//! before a [`WorkloadFields`] reaches here; writes then apply the volume rules with the
//! node's published roots and refuse overlaps with the node's other workloads, under a
//! per-node lock ([`super::nodes::lock_for_workload_write`]). The table's CHECK
//! constraints are the last line.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection, PgExecutor, PgPool};

pub use crate::domain::WorkloadFields;
use crate::domain::{VolumeSpec, Workload};
use crate::ids::{JobId, WorkloadId};
use crate::volume::{self, Overlap, VolumeRefusal};

const COLUMNS: &str = "id, name, project, stage, node, source_kind, image, volumes, \
    stop_for_capture, created_at, updated_at";

/// The unique constraint on `(project, stage, name)`.
pub const UNIQUE_NAME: &str = "workloads_project_stage_name_key";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadWriteError {
    #[error("workload not found")]
    NotFound,
    #[error("a workload with this project, stage and name already exists")]
    Duplicate,
    /// The change is refused while the workload has a queued or running job.
    #[error("workload has an active job {0}")]
    ActiveJob(JobId),
    /// Deleting would drop snapshot rows whose archive files still exist on a node.
    #[error("workload still has {0} snapshot(s) with files on disk")]
    HasSnapshots(i64),
    /// A volume breaks a rule given the node's published roots.
    #[error(transparent)]
    Volume(VolumeRefusal),
    /// A volume overlaps a volume of another workload of the same node.
    #[error(transparent)]
    Overlap(Overlap),
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

/// Every workload of `node` except `except`.
pub async fn others_on_node<'e>(
    exec: impl PgExecutor<'e>,
    node: &str,
    except: Option<WorkloadId>,
) -> Result<Vec<Workload>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM workloads WHERE node = $1 AND ($2::uuid IS NULL OR id <> $2) \
             ORDER BY id"
        )
    });
    sqlx::query_as::<_, Workload>(AssertSqlSafe(SQL.as_str()))
        .bind(node)
        .bind(except)
        .fetch_all(exec)
        .await
}

/// Apply the volume rules of `f` with its node's published roots; returns the volumes
/// and the roots. Takes the node's write lock for the rest of the transaction.
async fn rules_on_node(
    conn: &mut PgConnection,
    f: &WorkloadFields,
) -> Result<(Vec<volume::Volume>, Option<volume::NodeRoots>), WorkloadWriteError> {
    super::nodes::lock_for_workload_write(conn, &f.node).await?;
    let roots = super::nodes::roots(&mut *conn, &f.node).await?;
    let vols = volume::check_config(&f.project, &f.stage, &f.volumes, roots.as_ref())
        .map_err(WorkloadWriteError::Volume)?;
    Ok((vols, roots))
}

/// Refuse volumes of workload `id` (just written, not yet committed) that overlap
/// volumes of another workload of its node. Checked after the write so that a taken
/// name is reported as such first.
async fn refuse_overlaps_on_node(
    conn: &mut PgConnection,
    f: &WorkloadFields,
    id: WorkloadId,
    vols: &[volume::Volume],
    roots: Option<&volume::NodeRoots>,
) -> Result<(), WorkloadWriteError> {
    let vroot = roots.map(|r| r.volumes_root.as_path());
    let mine = volume::overlap_keys(&f.project, &f.stage, vols, vroot);
    let others = others_on_node(&mut *conn, &f.node, Some(id)).await?;
    match volume::find_overlap(&mine, &others, vroot) {
        Some(o) => Err(WorkloadWriteError::Overlap(o)),
        None => Ok(()),
    }
}

fn map_write(err: sqlx::Error) -> WorkloadWriteError {
    if super::is_unique_violation(&err, UNIQUE_NAME) {
        WorkloadWriteError::Duplicate
    } else {
        WorkloadWriteError::Db(err)
    }
}

fn normal_form(vols: &[volume::Volume]) -> Vec<VolumeSpec> {
    vols.iter().map(volume::Volume::to_spec).collect()
}

/// `sql` (an insert or an update returning the row) with the workload's id as `$1` and
/// its fields, in [`WorkloadFields`]' order, as `$2`..`$9`; `volumes` in normal form.
fn bind_fields<'q>(
    sql: &'q str,
    id: WorkloadId,
    f: &'q WorkloadFields,
    volumes: &'q [VolumeSpec],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Workload, sqlx::postgres::PgArguments> {
    sqlx::query_as::<_, Workload>(AssertSqlSafe(sql))
        .bind(id)
        .bind(&f.name)
        .bind(&f.project)
        .bind(&f.stage)
        .bind(&f.node)
        .bind(f.source_kind)
        .bind(&f.image)
        .bind(sqlx::types::Json(volumes))
        .bind(f.stop_for_capture)
}

/// Create a workload (a new id) from `f`, under the node's volume rules.
pub async fn insert(pool: &PgPool, f: &WorkloadFields) -> Result<Workload, WorkloadWriteError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO workloads (id, name, project, stage, node, source_kind, image, volumes, \
             stop_for_capture) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
        )
    });
    let mut tx = pool.begin().await?;
    let (vols, roots) = rules_on_node(&mut tx, f).await?;
    let volumes = normal_form(&vols);
    let w = bind_fields(SQL.as_str(), WorkloadId::new(), f, &volumes)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_write)?;
    refuse_overlaps_on_node(&mut tx, f, w.id, &vols, roots.as_ref()).await?;
    tx.commit().await?;
    Ok(w)
}

pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: WorkloadId,
) -> Result<Option<Workload>, sqlx::Error> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM workloads WHERE id = $1"));
    sqlx::query_as::<_, Workload>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// Read a workload and hold it `FOR SHARE` until the caller's transaction ends: it can
/// be neither changed nor deleted while a job for it is being enqueued.
pub async fn get_for_share(
    conn: &mut PgConnection,
    id: WorkloadId,
) -> Result<Option<Workload>, sqlx::Error> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM workloads WHERE id = $1 FOR SHARE"));
    sqlx::query_as::<_, Workload>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Filters of the workload listing (all optional, combined with AND).
#[derive(Debug, Clone, Default)]
pub struct WorkloadFilter {
    pub project: Option<String>,
    pub stage: Option<String>,
    pub node: Option<String>,
    /// Only workloads whose id sorts after this one (ids are time-ordered UUIDv7).
    pub after: Option<WorkloadId>,
    pub limit: i64,
}

/// Workloads ordered by id (creation order); `limit + 1` rows are fetched to tell
/// whether another page exists. Returns the page and the id to continue after.
pub async fn list(
    pool: &PgPool,
    f: &WorkloadFilter,
) -> Result<(Vec<Workload>, Option<WorkloadId>), sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM workloads \
             WHERE ($1::text IS NULL OR project = $1) AND ($2::text IS NULL OR stage = $2) \
               AND ($3::text IS NULL OR node = $3) AND ($4::uuid IS NULL OR id > $4) \
             ORDER BY id LIMIT $5"
        )
    });
    let limit = f.limit.clamp(1, super::MAX_LIMIT);
    let mut rows = sqlx::query_as::<_, Workload>(AssertSqlSafe(SQL.as_str()))
        .bind(&f.project)
        .bind(&f.stage)
        .bind(&f.node)
        .bind(f.after)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|w| w.id)
    } else {
        None
    };
    Ok((rows, next))
}

/// Replace a workload's fields. Moving it to another node is refused while it has an
/// active job (the job was routed to the old node). The volume rules and the overlap
/// check apply as for [`insert`].
pub async fn update(
    pool: &PgPool,
    id: WorkloadId,
    f: &WorkloadFields,
) -> Result<Workload, WorkloadWriteError> {
    static LOCK: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM workloads WHERE id = $1 FOR UPDATE"));
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE workloads SET name = $2, project = $3, stage = $4, node = $5, source_kind = $6, \
             image = $7, volumes = $8, stop_for_capture = $9, updated_at = now() \
             WHERE id = $1 RETURNING {COLUMNS}"
        )
    });
    let mut tx = pool.begin().await?;
    let current = sqlx::query_as::<_, Workload>(AssertSqlSafe(LOCK.as_str()))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(WorkloadWriteError::NotFound)?;
    if current.node != f.node
        && let Some(job) = super::jobs::active_for_workload(&mut *tx, id).await?
    {
        return Err(WorkloadWriteError::ActiveJob(job));
    }
    let (vols, roots) = rules_on_node(&mut tx, f).await?;
    let volumes = normal_form(&vols);
    let updated = bind_fields(SQL.as_str(), id, f, &volumes)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_write)?;
    refuse_overlaps_on_node(&mut tx, f, id, &vols, roots.as_ref()).await?;
    tx.commit().await?;
    Ok(updated)
}

/// Delete a workload. Refused while it has an active job, and while any of its
/// snapshots still has an archive file on a node (deleting the row would cascade to the
/// snapshot rows and orphan the files): delete those snapshots first.
pub async fn delete(pool: &PgPool, id: WorkloadId) -> Result<(), WorkloadWriteError> {
    let mut tx = pool.begin().await?;
    let found: Option<WorkloadId> =
        sqlx::query_scalar("SELECT id FROM workloads WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(WorkloadWriteError::NotFound);
    }
    if let Some(job) = super::jobs::active_for_workload(&mut *tx, id).await? {
        return Err(WorkloadWriteError::ActiveJob(job));
    }
    let with_files: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM snapshots \
         WHERE workload_id = $1 AND archive_path IS NOT NULL AND file_removed_at IS NULL",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if with_files > 0 {
        return Err(WorkloadWriteError::HasSnapshots(with_files));
    }
    sqlx::query("DELETE FROM workloads WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
