//! `GET /api/batches/{id}`: a batch's options, counts of its jobs per state, and its jobs.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db::batches::{self as store, Batch};
use volsnap_shared::domain::{Job, JobState};
use volsnap_shared::ids::BatchId;

use crate::AppState;
use crate::error::{Error, ErrorBody};
use crate::extract::Path;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_batch))
}

/// Jobs per state.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StateCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatus {
    pub batch: Batch,
    pub counts: StateCounts,
    /// Items that got no job (their outcome was in the batch request's answer).
    pub rejected: i64,
    /// Whether every job of the batch is final.
    pub done: bool,
    /// The batch's jobs, in the order they were enqueued.
    pub jobs: Vec<Job>,
}

/// A batch's state.
#[utoipa::path(get, path = "/api/batches/{id}", tag = "batches",
    params(("id" = BatchId, Path, description = "batch id")),
    responses(
        (status = 200, body = BatchStatus),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_batch(
    State(state): State<AppState>,
    Path(id): Path<BatchId>,
) -> Result<axum::Json<BatchStatus>, Error> {
    let batch = store::get(&state.pool, id)
        .await?
        .ok_or_else(|| Error::not_found("batch_not_found", "no batch with this id"))?;
    let mut counts = StateCounts::default();
    for (s, n) in store::counts(&state.pool, id).await? {
        *match s {
            JobState::Queued => &mut counts.queued,
            JobState::Running => &mut counts.running,
            JobState::Succeeded => &mut counts.succeeded,
            JobState::Failed => &mut counts.failed,
            JobState::Cancelled => &mut counts.cancelled,
        } = n;
    }
    let jobs = store::jobs(&state.pool, id).await?;
    let total = jobs.len() as i64;
    Ok(axum::Json(BatchStatus {
        rejected: (i64::from(batch.item_count) - total).max(0),
        done: counts.queued == 0 && counts.running == 0,
        batch,
        counts,
        jobs,
    }))
}
