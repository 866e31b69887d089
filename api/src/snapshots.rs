//! Snapshots: capture (enqueue a capture job), list a workload's snapshots, read one,
//! and mark one deleted.

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db::snapshots::DeleteSnapshotError;
use volsnap_shared::db::{self, snapshots as store};
use volsnap_shared::domain::{Job, JobKind, Snapshot, SnapshotKind};
use volsnap_shared::ids::{SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, EnqueueError, NewJob};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody};
use crate::extract::{Path, Query};
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(capture, list_snapshots))
        .routes(routes!(get_snapshot, delete_snapshot))
}

/// A capture was enqueued.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaptureAccepted {
    pub job: Job,
    /// The `capturing` snapshot the job fills in.
    pub snapshot_id: SnapshotId,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Include snapshots marked deleted (hidden by default).
    #[serde(default)]
    pub include_deleted: bool,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub items: Vec<Snapshot>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// Snapshots of this page whose archive file the node's worker found missing (they
    /// cannot be restored), with when that was first seen.
    pub files_missing: Vec<FileMissing>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileMissing {
    pub snapshot_id: SnapshotId,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Capture the workload's volumes: creates a `capturing` snapshot on the workload's
/// node and enqueues the capture job that fills it in, in one transaction.
#[utoipa::path(post, path = "/api/workloads/{id}/snapshots", tag = "snapshots",
    params(("id" = WorkloadId, Path, description = "workload id")),
    responses(
        (status = 202, description = "capture job enqueued", body = CaptureAccepted, headers(("Location" = String, description = "/api/jobs/{job_id}"))),
        (status = 400, description = "malformed id, or the workload has no volumes", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the workload has an active job (named in `error.job_id`)", body = ErrorBody),
    ))]
async fn capture(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<WorkloadId>,
) -> Result<Response, Error> {
    let mut tx = state.pool.begin().await?;
    let workload = db::workloads::get_for_share(&mut tx, id)
        .await?
        .ok_or_else(Error::workload_not_found)?;
    if workload.volumes.is_empty() {
        return Err(Error::bad_request(
            "no_volumes",
            "the workload has no volumes to capture",
        ));
    }
    let snapshot = store::insert_capturing(
        &mut *tx,
        SnapshotId::new(),
        workload.id,
        &workload.node,
        SnapshotKind::Manual,
    )
    .await?
    .ok_or_else(|| Error::internal(anyhow::anyhow!("a fresh snapshot id already exists")))?;
    let job = queue::enqueue(
        &mut tx,
        &NewJob {
            kind: JobKind::Capture,
            workload_id: workload.id,
            snapshot_id: Some(snapshot.id),
            node: workload.node.clone(),
            batch_id: None,
            requested_by: Some(caller.name.clone()),
        },
    )
    .await
    .map_err(|e| match e {
        EnqueueError::AlreadyActive { active_job } => Error::active_job(active_job),
        EnqueueError::Db(e) => Error::internal(e),
    })?;
    tx.commit().await?;
    tracing::info!(job_id = %job.id, workload_id = %id, snapshot_id = %snapshot.id, by = %caller.name, "capture enqueued");
    let location = format!("/api/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(CaptureAccepted {
            job,
            snapshot_id: snapshot.id,
        }),
    )
        .into_response())
}

/// A workload's snapshots, newest first. Deleted ones are hidden unless
/// `include_deleted=true`.
#[utoipa::path(get, path = "/api/workloads/{id}/snapshots", tag = "snapshots",
    params(("id" = WorkloadId, Path, description = "workload id"), ListQuery),
    responses(
        (status = 200, body = SnapshotList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn list_snapshots(
    State(state): State<AppState>,
    Path(id): Path<WorkloadId>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<SnapshotList>, Error> {
    let limit = validate::limit(q.limit)?;
    let before = validate::cursor(q.cursor.as_deref())?;
    if db::workloads::get(&state.pool, id).await?.is_none() {
        return Err(Error::workload_not_found());
    }
    let page = store::list_for_workload(&state.pool, id, q.include_deleted, before, limit).await?;
    let ids: Vec<SnapshotId> = page.items.iter().map(|s| s.id).collect();
    let files_missing = db::console::files_missing(&state.pool, &ids)
        .await?
        .into_iter()
        .map(|(snapshot_id, since)| FileMissing { snapshot_id, since })
        .collect();
    Ok(axum::Json(SnapshotList {
        items: page.items,
        next_cursor: page.next_cursor,
        files_missing,
    }))
}

/// Read one snapshot (a deleted one too: see `deleted_at`).
#[utoipa::path(get, path = "/api/snapshots/{sid}", tag = "snapshots",
    params(("sid" = SnapshotId, Path, description = "snapshot id")),
    responses(
        (status = 200, body = Snapshot),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_snapshot(
    State(state): State<AppState>,
    Path(sid): Path<SnapshotId>,
) -> Result<axum::Json<Snapshot>, Error> {
    store::get(&state.pool, sid)
        .await?
        .map(axum::Json)
        .ok_or_else(Error::snapshot_not_found)
}

/// Mark a snapshot deleted: it is hidden from listings and can no longer be restored;
/// the node's worker removes its file. Refused (409) while a queued or running job uses
/// it. Deleting it again answers 404.
#[utoipa::path(delete, path = "/api/snapshots/{sid}", tag = "snapshots",
    params(("sid" = SnapshotId, Path, description = "snapshot id")),
    responses(
        (status = 200, description = "marked deleted", body = Snapshot),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "unknown or already deleted", body = ErrorBody),
        (status = 409, description = "an active job uses it (named in `error.job_id`)", body = ErrorBody),
    ))]
async fn delete_snapshot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sid): Path<SnapshotId>,
) -> Result<axum::Json<Snapshot>, Error> {
    let snap = store::mark_deleted(&state.pool, sid)
        .await
        .map_err(|e| match e {
            DeleteSnapshotError::NotFound => Error::snapshot_not_found(),
            DeleteSnapshotError::InUse(job) => Error::conflict(
                "snapshot_in_use",
                format!("active job {job} uses this snapshot"),
            )
            .with_job_id(job),
            DeleteSnapshotError::Db(e) => Error::internal(e),
        })?;
    tracing::info!(snapshot_id = %sid, by = %caller.name, "snapshot marked deleted");
    Ok(axum::Json(snap))
}
