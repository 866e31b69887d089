//! `/api/jobs`: list with filters and cursor pagination, read one (optionally waiting
//! for it to finish), cancel.

use axum::Extension;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db::console::{JobPhase, JobSearch, Triage};
use volsnap_shared::db::jobs::JobFilter;
use volsnap_shared::db::{self};
use volsnap_shared::domain::{Job, JobKind, JobState};
use volsnap_shared::ids::{BatchId, JobId, WorkloadId};
use volsnap_shared::queue::{self, CancelOutcome};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody};
use crate::extract::{Path, Query};
use crate::limits::wait_duration;
use crate::query::WaitQuery;
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_phases))
        .routes(routes!(triage))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Comma-separated states: queued, running, succeeded, failed, cancelled.
    pub state: Option<String>,
    /// Comma-separated kinds: capture, restore, plan.
    pub kind: Option<String>,
    /// Only this workload's jobs (`workload_id` is accepted too).
    #[serde(alias = "workload_id")]
    pub workload: Option<WorkloadId>,
    /// Only this batch's jobs (`batch_id` is accepted too).
    #[serde(alias = "batch_id")]
    pub batch: Option<BatchId>,
    /// Only jobs routed to this node.
    pub node: Option<String>,
    /// Only jobs of workloads in this project.
    pub project: Option<String>,
    /// Only jobs of workloads in this stage.
    pub stage: Option<String>,
    /// Free text (1 to 200 characters), matched case-insensitively against the job id,
    /// its workload's `project/stage/name`, node, error code and message, and requester.
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub items: Vec<Job>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn parse_list<T: std::str::FromStr>(
    field: &str,
    value: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<T>, Error> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>().map_err(|_| {
                Error::invalid_field(
                    field,
                    format!("unknown value {s:?}; one or more of {}", allowed.join(", ")),
                )
            })
        })
        .collect()
}

/// List jobs, newest first, filtered.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(JobListQuery),
    responses(
        (status = 200, body = JobList),
        (status = 400, description = "bad filter, cursor or limit", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<JobListQuery>,
) -> Result<axum::Json<JobList>, Error> {
    let states_allowed: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    let kinds_allowed: Vec<&str> = JobKind::ALL.iter().map(|s| s.as_str()).collect();
    let states = parse_list::<JobState>("state", q.state.as_deref(), &states_allowed)?;
    let kinds = parse_list::<JobKind>("kind", q.kind.as_deref(), &kinds_allowed)?;
    if let Some(n) = &q.node {
        validate::node("node", n)?;
    }
    for (field, v) in [("project", &q.project), ("stage", &q.stage)] {
        if let Some(v) = v {
            validate::slug(field, v)?;
        }
    }
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = text
        && (t.chars().count() > 200 || t.chars().any(char::is_control))
    {
        return Err(Error::invalid_field(
            "q",
            "must be 1 to 200 characters, none of them control characters",
        ));
    }
    let search = JobSearch {
        project: q.project,
        stage: q.stage,
        text: text.map(str::to_owned),
    };
    let filter = JobFilter {
        states,
        kinds,
        workload_id: q.workload,
        batch_id: q.batch,
        node: q.node,
        before: validate::cursor(q.cursor.as_deref())?,
        limit: validate::limit(q.limit)?,
    };
    let page = if search.is_empty() {
        db::jobs::list(&state.pool, &filter).await?
    } else {
        db::console::list_jobs(&state.pool, &filter, &search).await?
    };
    Ok(axum::Json(JobList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// Read a job. With `?wait=N` the answer is held until the job is final or N seconds
/// (at most 300) pass; it is 200 either way (see `state`).
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = JobId, Path, description = "job id"), WaitQuery),
    responses(
        (status = 200, body = Job),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<JobId>,
    Query(q): Query<WaitQuery>,
) -> Result<axum::Json<Job>, Error> {
    let job = match wait_duration(q.wait)? {
        None => queue::get_job(&state.pool, id).await?,
        Some(wait) => {
            let slot = state.wait_slot()?;
            state.wait_for_final(slot, id, wait).await?
        }
    };
    job.map(axum::Json).ok_or_else(Error::job_not_found)
}

/// Cancel a job. A queued job is cancelled at once; a running one is stopped by its
/// worker if it has not yet quiesced (stopped) the workload — after that, cancelling
/// is refused with 409 `too_late`.
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs",
    params(("id" = JobId, Path, description = "job id")),
    responses(
        (status = 200, description = "cancelled (queued), or cancel requested (running; see `cancel_requested`)", body = Job),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`too_late`: already past quiesce; `already_final`: already finished", body = ErrorBody),
    ))]
async fn cancel_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<JobId>,
) -> Result<axum::Json<Job>, Error> {
    let outcome = queue::cancel(&state.pool, id).await?;
    match outcome {
        CancelOutcome::Cancelled(job) | CancelOutcome::Requested(job) => {
            tracing::info!(job_id = %id, state = %job.state, by = %caller.name, "cancel");
            Ok(axum::Json(job))
        }
        CancelOutcome::TooLate(job) => Err(Error::conflict(
            "too_late",
            "the job has already stopped the workload's containers and is changing its data; \
             it can no longer be cancelled (it will finish or be recovered)",
        )
        .with_job(job)),
        CancelOutcome::AlreadyFinal(job) => {
            let msg = format!("the job has already {}", job.state);
            Err(Error::conflict("already_final", msg).with_job(job))
        }
        CancelOutcome::NotFound => Err(Error::job_not_found()),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPhases {
    /// Every phase (and state) change of the job, oldest first, with its time.
    pub items: Vec<JobPhase>,
}

/// A job's phase timeline: when it entered each phase (recorded by the database on
/// every change of phase, state or attempt).
#[utoipa::path(get, path = "/api/jobs/{id}/phases", tag = "jobs",
    params(("id" = JobId, Path, description = "job id")),
    responses(
        (status = 200, body = JobPhases),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn job_phases(
    State(state): State<AppState>,
    Path(id): Path<JobId>,
) -> Result<axum::Json<JobPhases>, Error> {
    if queue::get_job(&state.pool, id).await?.is_none() {
        return Err(Error::job_not_found());
    }
    let items = db::console::job_phases(&state.pool, id).await?;
    Ok(axum::Json(JobPhases { items }))
}

/// Counts for triage: jobs running and queued now, jobs failed in the last 24 hours.
#[utoipa::path(get, path = "/api/triage", tag = "jobs",
    responses((status = 200, body = Triage), (status = 401, body = ErrorBody)))]
async fn triage(State(state): State<AppState>) -> Result<axum::Json<Triage>, Error> {
    Ok(axum::Json(db::console::triage(&state.pool).await?))
}
