//! Restore plans (dry runs): `POST /api/workloads/{id}/snapshots/{sid}/plan` enqueues a
//! `plan` job on the workload's node. The worker runs the restore's whole pre-flight
//! against the current config and diffs the live volumes against the snapshot; it
//! changes nothing. The result is the job's `result` (`GET /api/jobs/{id}`).
//!
//! A plan is read-only, so any valid token may ask for one (the one `POST` a viewer may
//! make, with `POST /api/restores?plan=true`; see [`is_plan_request`]), no confirmation
//! header is needed, and it is outside the workload's single-flight: it is never
//! refused with 409 and never blocks a restore.

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db;
use volsnap_shared::domain::JobKind;
use volsnap_shared::ids::{SnapshotId, WorkloadId};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::limits::wait_duration;
use crate::query::{BatchQuery, WaitQuery};
use crate::restores::{Confirm, RestoreAccepted, RestoreRequest, answer, check_and_enqueue};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(plan))
        .routes(routes!(get_restore_settings, put_restore_settings))
}

/// A workload's restore defaults.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSettings {
    /// Verify every restore of this workload against its snapshot unless the request
    /// says otherwise (`"verify": false`). Default false: verification adds one full
    /// comparison of the volumes to the downtime.
    pub verify_restores: bool,
}

/// A workload's restore defaults.
#[utoipa::path(get, path = "/api/workloads/{id}/restore-settings", tag = "restores",
    params(("id" = WorkloadId, Path, description = "workload id")),
    responses(
        (status = 200, body = RestoreSettings),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_restore_settings(
    State(state): State<AppState>,
    Path(id): Path<WorkloadId>,
) -> Result<axum::Json<RestoreSettings>, Error> {
    let verify = db::jobs::workload_verifies_restores(&state.pool, id)
        .await?
        .ok_or_else(Error::workload_not_found)?;
    Ok(axum::Json(RestoreSettings {
        verify_restores: verify,
    }))
}

/// Set a workload's restore defaults (admin).
#[utoipa::path(put, path = "/api/workloads/{id}/restore-settings", tag = "restores",
    params(("id" = WorkloadId, Path, description = "workload id")),
    request_body = RestoreSettings,
    responses(
        (status = 200, body = RestoreSettings),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn put_restore_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<WorkloadId>,
    Json(body): Json<RestoreSettings>,
) -> Result<axum::Json<RestoreSettings>, Error> {
    if !db::jobs::set_workload_verifies_restores(&state.pool, id, body.verify_restores).await? {
        return Err(Error::workload_not_found());
    }
    tracing::info!(workload_id = %id, verify_restores = body.verify_restores, by = %caller.name, "restore settings changed");
    Ok(axum::Json(body))
}

/// Whether a request is one of the plan `POST`s a viewer may make: the plan route, or
/// the batch route with `plan=true` (parsed exactly as its handler parses it, and the
/// handler checks the role again).
pub fn is_plan_request(req: &Request) -> bool {
    if req.method() != Method::POST {
        return false;
    }
    let path = req.uri().path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["api", "workloads", w, "snapshots", s, "plan"] = segs.as_slice() {
        return !w.is_empty() && !s.is_empty();
    }
    if path == "/api/restores" {
        return axum::extract::Query::<BatchQuery>::try_from_uri(req.uri())
            .is_ok_and(|q| q.0.plan == Some(true));
    }
    false
}

/// Plan a restore: a dry run on the workload's node that reports, against the current
/// config, whether the restore's pre-flight passes and what it would add, change and
/// remove per volume (`job.result`). Changes nothing; no confirmation; viewers allowed.
///
/// With `?wait=N`: 200 the plan finished (a restore would pass its pre-flight), 202
/// still queued/running at the deadline, 422 the restore would be refused for a reason
/// the client can act on (`error.code` is the restore's code, e.g.
/// `insufficient_space`, `volume_overlap`, `snapshot_file_missing`; `error.job.result`
/// says which step refused), 500 failed otherwise.
#[utoipa::path(post, path = "/api/workloads/{id}/snapshots/{sid}/plan", tag = "restores",
    params(
        ("id" = WorkloadId, Path, description = "workload id"),
        ("sid" = SnapshotId, Path, description = "snapshot id"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "waited: the plan finished; see `job.result`", body = RestoreAccepted),
        (status = 202, description = "enqueued (or still running at the wait deadline)", body = RestoreAccepted, headers(("Location" = String, description = "/api/jobs/{job_id}"))),
        (status = 400, description = "snapshot of another workload, not an image workload, snapshot not ready, snapshot on another node, or malformed input", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "unknown workload or snapshot (deleted snapshots too)", body = ErrorBody),
        (status = 409, description = "waited: the plan was cancelled", body = ErrorBody),
        (status = 422, description = "waited: a restore would be refused (the restore's error code)", body = ErrorBody),
        (status = 500, description = "waited: the plan failed for an internal reason", body = ErrorBody),
    ))]
async fn plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((workload_id, snapshot_id)): Path<(WorkloadId, SnapshotId)>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, Error> {
    let wait = wait_duration(q.wait)?;
    // Taken first: past the waiter cap the request is refused before enqueueing.
    let slot = wait.map(|_| state.wait_slot()).transpose()?;
    let job = check_and_enqueue(
        &state.pool,
        RestoreRequest {
            workload_id,
            snapshot_id,
            confirm: Confirm::NotNeeded,
            batch_id: None,
            requested_by: &caller.name,
            kind: JobKind::Plan,
            verify: None,
        },
    )
    .await?;
    tracing::info!(job_id = %job.id, %workload_id, %snapshot_id, by = %caller.name, "plan enqueued");
    answer(&state, job, wait.zip(slot)).await
}
