//! Restores: `POST /api/workloads/{id}/snapshots/{sid}/restore` (one, optionally
//! waited on) and `POST /api/restores` (a batch, one job per item).
//!
//! The checks run in the order DESIGN.md gives (after auth): 404 unknown workload or
//! snapshot; 400 `X-Confirm-Restore` missing or not the snapshot id; 400 snapshot of
//! another workload; 400 workload not `image`; 400 snapshot not `ready`; 400 snapshot
//! on another node; 409 an active job exists (named); else 202. The workload and
//! snapshot rows are held `FOR SHARE` from the checks until the job is committed, so
//! neither can change or be deleted in between.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db;
use volsnap_shared::domain::{Job, JobKind, JobState, SnapshotState, SourceKind};
use volsnap_shared::failure;
use volsnap_shared::ids::{BatchId, JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, EnqueueError, NewBatch, NewJob};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody, ErrorDetail};
use crate::extract::{Json, Path, Query};
use crate::limits::wait_duration;
use crate::query::{BatchQuery, WaitQuery};

/// The confirmation header: the snapshot id for one restore, the item count for a batch.
pub const CONFIRM_HEADER: &str = "x-confirm-restore";

/// Most items in one batch request.
pub const MAX_BATCH_ITEMS: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(restore))
        .routes(routes!(restore_batch))
}

/// A restore job: enqueued (202), or as it ended when waited on (200).
#[derive(Debug, Serialize, ToSchema)]
pub struct RestoreAccepted {
    pub job: Job,
}

/// How the confirmation of intent was given.
pub(crate) enum Confirm<'a> {
    /// One restore: the header must name the snapshot.
    Header(Option<&'a HeaderValue>),
    /// A batch item: the batch's item count was confirmed already.
    Batch,
    /// A plan changes nothing: no confirmation.
    NotNeeded,
}

/// One restore (or plan) to check and enqueue.
pub(crate) struct RestoreRequest<'a> {
    pub workload_id: WorkloadId,
    pub snapshot_id: SnapshotId,
    pub confirm: Confirm<'a>,
    pub batch_id: Option<BatchId>,
    pub requested_by: &'a str,
    /// `Restore` or `Plan`.
    pub kind: JobKind,
    /// Verify after the swap; `None`: the workload's `verify_restores` default.
    pub verify: Option<bool>,
}

/// The optional body of a single restore.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Compare the restored volumes with the snapshot before the job succeeds
    /// (`verify_mismatch` otherwise). Default: the workload's `verify_restores`.
    #[serde(default)]
    pub verify: Option<bool>,
}

fn check_confirmation(header: Option<&HeaderValue>, sid: SnapshotId) -> Result<(), Error> {
    let Some(value) = header else {
        return Err(Error::bad_request(
            "confirmation_required",
            format!(
                "restoring overwrites the workload's data: send the header X-Confirm-Restore: {sid}"
            ),
        ));
    };
    let matches = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<SnapshotId>().ok())
        .is_some_and(|v| v == sid);
    if !matches {
        return Err(Error::bad_request(
            "confirmation_mismatch",
            format!("X-Confirm-Restore must be the snapshot id {sid}"),
        ));
    }
    Ok(())
}

/// Every check of a restore (or plan), then the enqueue, in one short transaction.
pub(crate) async fn check_and_enqueue(pool: &PgPool, r: RestoreRequest<'_>) -> Result<Job, Error> {
    let mut tx = pool.begin().await?;
    let workload = db::workloads::get_for_share(&mut tx, r.workload_id)
        .await?
        .ok_or_else(Error::workload_not_found)?;
    // A deleted snapshot is gone as far as restores are concerned.
    let snapshot = db::snapshots::get_for_share(&mut tx, r.snapshot_id)
        .await?
        .filter(|s| s.deleted_at.is_none())
        .ok_or_else(Error::snapshot_not_found)?;
    if let Confirm::Header(h) = r.confirm {
        check_confirmation(h, r.snapshot_id)?;
    }
    if snapshot.workload_id != workload.id {
        return Err(Error::bad_request(
            "snapshot_of_other_workload",
            format!("snapshot {} belongs to another workload", snapshot.id),
        ));
    }
    if workload.source_kind != SourceKind::Image {
        return Err(Error::bad_request(
            failure::NOT_IMAGE_WORKLOAD,
            format!(
                "only image workloads can be restored; this one is {}",
                workload.source_kind
            ),
        ));
    }
    if snapshot.state != SnapshotState::Ready {
        return Err(Error::bad_request(
            failure::SNAPSHOT_NOT_READY,
            format!("the snapshot is {}, not ready", snapshot.state),
        ));
    }
    if snapshot.node != workload.node {
        return Err(Error::bad_request(
            "snapshot_on_other_node",
            format!(
                "the snapshot is stored on node {:?} but the workload runs on {:?}",
                snapshot.node, workload.node
            ),
        ));
    }
    let verify = match (r.kind, r.verify) {
        (JobKind::Restore, Some(v)) => v,
        (JobKind::Restore, None) => db::jobs::workload_verifies_restores(&mut *tx, workload.id)
            .await?
            .unwrap_or(false),
        _ => false,
    };
    let job = queue::enqueue_with(
        &mut tx,
        &NewJob {
            kind: r.kind,
            workload_id: workload.id,
            snapshot_id: Some(snapshot.id),
            node: workload.node.clone(),
            batch_id: r.batch_id,
            requested_by: Some(r.requested_by.to_owned()),
        },
        &queue::JobOptions { verify },
    )
    .await
    .map_err(|e| match e {
        EnqueueError::AlreadyActive { active_job } => Error::active_job(active_job),
        EnqueueError::Db(e) => Error::internal(e),
    })?;
    tx.commit().await?;
    Ok(job)
}

/// The answer to a waited restore (or plan), from the job as the wait left it.
/// The answer to an enqueued restore, plan or undo: 202 at once, or (with a waiter
/// slot) the job as the wait leaves it.
pub(crate) async fn answer(
    state: &AppState,
    job: Job,
    wait: Option<(std::time::Duration, crate::WaitSlot)>,
) -> Result<Response, Error> {
    let Some((wait, slot)) = wait else {
        return Ok(accepted(job));
    };
    let id = job.id;
    let job = state
        .wait_for_final(slot, id, wait)
        .await
        .map_err(|e| Error::internal(e).with_job_id(id))?
        .unwrap_or(job);
    waited_answer(job)
}

pub(crate) fn waited_answer(job: Job) -> Result<Response, Error> {
    match job.state {
        JobState::Succeeded => {
            Ok((StatusCode::OK, axum::Json(RestoreAccepted { job })).into_response())
        }
        JobState::Queued | JobState::Running => Ok(accepted(job)),
        JobState::Cancelled => {
            let msg = format!("job {} was cancelled", job.id);
            Err(Error::conflict("job_cancelled", msg).with_job(job))
        }
        JobState::Failed => {
            let code = job
                .error_code
                .clone()
                .unwrap_or_else(|| failure::INTERNAL.into());
            if failure::is_client_actionable(&code) {
                let message = job
                    .error_message
                    .clone()
                    .unwrap_or_else(|| format!("the restore failed: {code}"));
                let mut e = Error::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
                e = e.with_job(job);
                Err(e)
            } else {
                // Generic message and the job id only (see Error::body).
                Err(Error::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "restore job failed",
                )
                .with_job_id(job.id))
            }
        }
    }
}

pub(crate) fn accepted(job: Job) -> Response {
    let location = format!("/api/jobs/{}", job.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(RestoreAccepted { job }),
    )
        .into_response()
}

/// Restore a snapshot onto its workload's live volumes (a destructive job on the
/// workload's node). Needs `X-Confirm-Restore: {sid}`. An optional JSON body
/// `{"verify": true}` verifies the restored volumes against the snapshot.
///
/// With `?wait=N`: 200 the job succeeded, 202 still queued/running at the deadline,
/// 422 failed for a reason the client can act on (`error.code` says which), 500 failed
/// otherwise, 409 `job_cancelled` cancelled meanwhile.
#[utoipa::path(post, path = "/api/workloads/{id}/snapshots/{sid}/restore", tag = "restores",
    params(
        ("id" = WorkloadId, Path, description = "workload id"),
        ("sid" = SnapshotId, Path, description = "snapshot id"),
        ("X-Confirm-Restore" = Option<String>, Header, description = "must equal {sid}"),
        WaitQuery,
    ),
    request_body(content = Option<RestoreBody>, description = "optional; `verify` defaults to the workload's `verify_restores`"),
    responses(
        (status = 200, description = "waited: the restore succeeded", body = RestoreAccepted),
        (status = 202, description = "enqueued (or still running at the wait deadline)", body = RestoreAccepted, headers(("Location" = String, description = "/api/jobs/{job_id}"))),
        (status = 400, description = "confirmation missing/wrong, snapshot of another workload, not an image workload, snapshot not ready, snapshot on another node, or malformed input", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "unknown workload or snapshot (deleted snapshots too)", body = ErrorBody),
        (status = 409, description = "the workload has an active job (named in `error.job_id`), or the waited job was cancelled", body = ErrorBody),
        (status = 422, description = "waited: the restore failed for a reason the client can act on", body = ErrorBody),
        (status = 500, description = "waited: the restore failed for an internal reason", body = ErrorBody),
    ))]
async fn restore(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((workload_id, snapshot_id)): Path<(WorkloadId, SnapshotId)>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let wait = wait_duration(q.wait)?;
    let body: RestoreBody = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::bad_request(
                "invalid_body",
                format!("the request body is not valid: {e}"),
            )
        })?
    };
    // Taken first: past the waiter cap the request is refused before enqueueing.
    let slot = wait.map(|_| state.wait_slot()).transpose()?;
    let job = check_and_enqueue(
        &state.pool,
        RestoreRequest {
            workload_id,
            snapshot_id,
            confirm: Confirm::Header(headers.get(CONFIRM_HEADER)),
            batch_id: None,
            requested_by: &caller.name,
            kind: JobKind::Restore,
            verify: body.verify,
        },
    )
    .await?;
    tracing::info!(job_id = %job.id, %workload_id, %snapshot_id, by = %caller.name, "restore enqueued");
    answer(&state, job, wait.zip(slot)).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub workload_id: WorkloadId,
    pub snapshot_id: SnapshotId,
    /// Verify this restore (default: the workload's `verify_restores`); ignored by plans.
    #[serde(default)]
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1000 restores; each is checked and enqueued on its own.
    pub items: Vec<BatchItem>,
    /// At most this many of the batch's jobs run at once (≥ 1; unlimited when absent).
    #[serde(default)]
    pub max_parallel: Option<i32>,
    /// Once this many of the batch's jobs have failed, its still-queued jobs are
    /// cancelled (≥ 1; never when absent).
    #[serde(default)]
    pub stop_after_failures: Option<i32>,
}

/// One item's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemOutcome {
    pub workload_id: WorkloadId,
    pub snapshot_id: SnapshotId,
    /// 202 enqueued, else the status a single restore would have got (400/404/409, 500).
    pub status: u16,
    /// The enqueued job (202), or the workload's active job (409).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    pub batch_id: BatchId,
    /// How many items were enqueued.
    pub accepted: usize,
    /// Per item, in request order.
    pub items: Vec<BatchItemOutcome>,
}

/// Restore many snapshots: one job per item, each checked like a single restore (except
/// the confirmation, which is `X-Confirm-Restore: <number of items>` for the whole
/// batch). One bad or busy item does not sink the others. Answers 202 when at least one
/// item was enqueued, 200 when none was; `GET /api/batches/{batch_id}` follows it.
///
/// With `?plan=true` every item becomes a `plan` job instead (a dry run): no
/// confirmation, viewers allowed, and no single-flight 409 (plans run beside restores).
#[utoipa::path(post, path = "/api/restores", tag = "restores", request_body = BatchBody,
    params(("X-Confirm-Restore" = Option<String>, Header, description = "must equal the number of items (not for `?plan=true`)"), BatchQuery),
    responses(
        (status = 202, description = "at least one item enqueued; see each item", body = BatchAccepted, headers(("Location" = String, description = "/api/batches/{batch_id}"))),
        (status = 200, description = "no item could be enqueued; see each item", body = BatchAccepted),
        (status = 400, description = "confirmation missing/wrong, bad options, or malformed body", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn restore_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BatchQuery>,
    headers: HeaderMap,
    Json(body): Json<BatchBody>,
) -> Result<Response, Error> {
    let plan = q.plan.unwrap_or(false);
    // The auth middleware lets a viewer through for plans only; checked again here.
    if !plan && caller.role != volsnap_shared::domain::Role::Admin {
        return Err(Error::forbidden());
    }
    let n = body.items.len();
    if n == 0 || n > MAX_BATCH_ITEMS {
        return Err(Error::invalid_field(
            "items",
            format!("must hold 1 to {MAX_BATCH_ITEMS} items"),
        ));
    }
    let confirmed = headers
        .get(CONFIRM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match confirmed {
        _ if plan => {}
        None => {
            return Err(Error::bad_request(
                "confirmation_required",
                format!(
                    "restoring overwrites data: send the header X-Confirm-Restore: {n} (the number of items)"
                ),
            ));
        }
        Some(c) if c != n => {
            return Err(Error::bad_request(
                "confirmation_mismatch",
                format!("X-Confirm-Restore must be the number of items, {n}"),
            ));
        }
        Some(_) => {}
    }
    for (field, v) in [
        ("max_parallel", body.max_parallel),
        ("stop_after_failures", body.stop_after_failures),
    ] {
        if v.is_some_and(|v| v < 1) {
            return Err(Error::invalid_field(field, "must be at least 1"));
        }
    }
    let batch_id = {
        let mut conn = state.pool.acquire().await?;
        queue::create_batch(
            &mut conn,
            &NewBatch {
                requested_by: Some(caller.name.clone()),
                item_count: n as i32,
                max_parallel: body.max_parallel,
                stop_after_failures: body.stop_after_failures,
            },
        )
        .await?
    };
    // In request order, one at a time: when two items name the same workload, the
    // first one wins and the second gets the 409 naming it.
    let mut items = Vec::with_capacity(n);
    for item in &body.items {
        let result = check_and_enqueue(
            &state.pool,
            RestoreRequest {
                workload_id: item.workload_id,
                snapshot_id: item.snapshot_id,
                confirm: if plan {
                    Confirm::NotNeeded
                } else {
                    Confirm::Batch
                },
                batch_id: Some(batch_id),
                requested_by: &caller.name,
                kind: if plan {
                    JobKind::Plan
                } else {
                    JobKind::Restore
                },
                verify: item.verify,
            },
        )
        .await;
        items.push(match result {
            Ok(job) => BatchItemOutcome {
                workload_id: item.workload_id,
                snapshot_id: item.snapshot_id,
                status: StatusCode::ACCEPTED.as_u16(),
                job_id: Some(job.id),
                error: None,
            },
            Err(e) => {
                if e.status.is_server_error() {
                    // Log the cause (the item only gets the generic message).
                    tracing::error!(%batch_id, workload_id = %item.workload_id, error = ?e, "batch item failed");
                }
                let body = e.body();
                BatchItemOutcome {
                    workload_id: item.workload_id,
                    snapshot_id: item.snapshot_id,
                    status: e.status.as_u16(),
                    job_id: body.error.job_id,
                    error: Some(body.error),
                }
            }
        });
    }
    let accepted = items.iter().filter(|i| i.status == 202).count();
    tracing::info!(%batch_id, items = n, accepted, plan, by = %caller.name, "batch restore");
    let body = axum::Json(BatchAccepted {
        batch_id,
        accepted,
        items,
    });
    if accepted > 0 {
        let location = format!("/api/batches/{batch_id}");
        Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], body).into_response())
    } else {
        Ok((StatusCode::OK, body).into_response())
    }
}
