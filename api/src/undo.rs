//! Undo: `POST /api/jobs/{id}/undo` puts back the data a restore displaced (issue 11).
//!
//! Checks, in order (after auth — admin only, as every non-GET route): 404 unknown job;
//! 400 `X-Confirm-Restore` missing or not the job id (the same intent guard as a
//! restore); 409 `not_undoable` unless the job is a succeeded `restore` (or `undo`:
//! undoing an undo puts the restored data back); 409 `not_latest_change` when a later
//! restore or undo of the workload succeeded (undoing this one would discard it); 409
//! `active_job` when the workload has an active capture, restore or undo (named; a
//! background archive of a kept copy never blocks it); else 202 with the undo job. The worker swaps the kept directory back in while it exists on the node, else
//! restores the job's `pre-restore` snapshot (docs/engine.md).

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db;
use volsnap_shared::domain::{Job, JobKind, JobState};
use volsnap_shared::ids::JobId;
use volsnap_shared::queue::{self, EnqueueError, NewJob};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody};
use crate::extract::{Path, Query};
use crate::limits::wait_duration;
use crate::query::WaitQuery;
use crate::restores::{CONFIRM_HEADER, RestoreAccepted, answer};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(undo))
}

fn check_confirmation(header: Option<&HeaderValue>, id: JobId) -> Result<(), Error> {
    let Some(value) = header else {
        return Err(Error::bad_request(
            "confirmation_required",
            format!(
                "undoing a restore overwrites the workload's data: send the header X-Confirm-Restore: {id}"
            ),
        ));
    };
    let matches = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<JobId>().ok())
        .is_some_and(|v| v == id);
    if !matches {
        return Err(Error::bad_request(
            "confirmation_mismatch",
            format!("X-Confirm-Restore must be the job id {id}"),
        ));
    }
    Ok(())
}

async fn check_and_enqueue(
    pool: &PgPool,
    id: JobId,
    confirm: Option<&HeaderValue>,
    requested_by: &str,
) -> Result<Job, Error> {
    let mut tx = pool.begin().await?;
    let target = queue::get_job(&mut *tx, id)
        .await?
        .ok_or_else(Error::job_not_found)?;
    check_confirmation(confirm, id)?;
    if !matches!(target.kind, JobKind::Restore | JobKind::Undo)
        || target.state != JobState::Succeeded
    {
        return Err(Error::conflict(
            "not_undoable",
            format!(
                "only a succeeded restore (or undo) can be undone; job {id} is a {} {}",
                target.state, target.kind
            ),
        ));
    }
    // Held FOR SHARE until the undo is committed: the workload cannot change meanwhile.
    let workload = db::workloads::get_for_share(&mut tx, target.workload_id)
        .await?
        .ok_or_else(Error::workload_not_found)?;
    if let Some(later) = db::jobs::later_change(&mut *tx, workload.id, id).await? {
        return Err(Error::conflict(
            "not_latest_change",
            format!("job {later} changed the workload's data after job {id}; undo that one first"),
        )
        .with_job_id(later));
    }
    let job = queue::enqueue(
        &mut tx,
        &NewJob {
            kind: JobKind::Undo,
            workload_id: workload.id,
            // The archived copy, if there is one yet (the kept directory is preferred).
            snapshot_id: target.pre_restore_snapshot_id,
            node: workload.node.clone(),
            batch_id: None,
            requested_by: Some(requested_by.to_owned()),
        },
    )
    .await
    .map_err(|e| match e {
        EnqueueError::AlreadyActive { active_job } => Error::active_job(active_job),
        EnqueueError::Db(e) => Error::internal(e),
    })?;
    db::jobs::set_source(&mut *tx, job.id, id).await?;
    tx.commit().await?;
    Ok(job)
}

/// Undo a succeeded restore: put back the data it displaced — by swapping the kept
/// pre-restore directory back in (one `RENAME_EXCHANGE` per volume; downtime does not
/// depend on the volume size) while it exists on the node, else by restoring the
/// restore's `pre-restore` snapshot. The data the undo displaces is kept the same way
/// (so an undo can be undone). Needs `X-Confirm-Restore: {id}`.
///
/// With `?wait=N`: 200 the undo succeeded, 202 still queued/running at the deadline,
/// 422 failed for a reason the client can act on, 500 failed otherwise.
#[utoipa::path(post, path = "/api/jobs/{id}/undo", tag = "jobs",
    params(
        ("id" = JobId, Path, description = "the restore (or undo) job to undo"),
        ("X-Confirm-Restore" = Option<String>, Header, description = "must equal {id}"),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "waited: the undo succeeded", body = RestoreAccepted),
        (status = 202, description = "enqueued (or still running at the wait deadline)", body = RestoreAccepted, headers(("Location" = String, description = "/api/jobs/{job_id}"))),
        (status = 400, description = "confirmation missing or not the job id", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "unknown job (or its workload is gone)", body = ErrorBody),
        (status = 409, description = "`not_undoable`: not a succeeded restore/undo; `not_latest_change`: a later restore or undo of the workload succeeded (named in `error.job_id`); `active_job`: the workload has an active capture, restore or undo (named; a background pre-restore archive never blocks an undo); `job_cancelled`: the waited job was cancelled", body = ErrorBody),
        (status = 422, description = "waited: the undo failed for a reason the client can act on", body = ErrorBody),
        (status = 500, description = "waited: the undo failed for an internal reason", body = ErrorBody),
    ))]
async fn undo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<JobId>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let wait = wait_duration(q.wait)?;
    // Taken first: past the waiter cap the request is refused before enqueueing.
    let slot = wait.map(|_| state.wait_slot()).transpose()?;
    let job = check_and_enqueue(&state.pool, id, headers.get(CONFIRM_HEADER), &caller.name).await?;
    tracing::info!(job_id = %job.id, undoes = %id, by = %caller.name, "undo enqueued");
    answer(&state, job, wait.zip(slot)).await
}
