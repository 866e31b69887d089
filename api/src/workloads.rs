//! `/api/workloads`: register, list, read, replace and delete workloads.

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db::workloads::{
    self as store, WorkloadFields, WorkloadFilter, WorkloadWriteError,
};
use volsnap_shared::domain::{SourceKind, VolumeSpec, Workload};
use volsnap_shared::failure;
use volsnap_shared::ids::WorkloadId;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workload, list_workloads))
        .routes(routes!(get_workload, update_workload, delete_workload))
}

/// A workload as a client writes it (create, and full replacement with PUT).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadBody {
    /// Unique within project and stage.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,62}$")]
    pub name: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,62}$")]
    pub project: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,62}$")]
    pub stage: String,
    /// The node (host) holding the workload's volumes; its jobs run there.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")]
    pub node: String,
    pub source_kind: SourceKind,
    /// Required for `image` workloads.
    #[serde(default)]
    pub image: Option<String>,
    /// `absolute` scope: an absolute host path below one of the node's
    /// `VOLSNAP_ABSOLUTE_ROOTS`; `project`/`stage`: a relative path. No `..`, NUL or
    /// control characters; components of at most 255 bytes, paths of at most 4095.
    /// Targets: absolute container paths, unique. Stored in normal form (`.` and empty
    /// components dropped). No volume may equal, contain or lie inside a volume of
    /// another workload of the same node.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Stop the workload's containers while capturing, for a consistent copy.
    #[serde(default)]
    pub stop_for_capture: bool,
}

impl From<WorkloadBody> for WorkloadFields {
    fn from(b: WorkloadBody) -> Self {
        WorkloadFields {
            name: b.name,
            project: b.project,
            stage: b.stage,
            node: b.node,
            source_kind: b.source_kind,
            image: b.image,
            volumes: b.volumes,
            stop_for_capture: b.stop_for_capture,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub project: Option<String>,
    pub stage: Option<String>,
    pub node: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkloadList {
    pub items: Vec<Workload>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn write_error(e: WorkloadWriteError) -> Error {
    match e {
        WorkloadWriteError::NotFound => Error::workload_not_found(),
        WorkloadWriteError::Duplicate => Error::conflict(
            "workload_exists",
            "a workload with this project, stage and name already exists",
        ),
        WorkloadWriteError::ActiveJob(job) => Error::conflict(
            "active_job",
            format!("the workload has an active job {job}; wait for it or cancel it"),
        )
        .with_job_id(job),
        WorkloadWriteError::HasSnapshots(n) => Error::conflict(
            "workload_has_snapshots",
            format!(
                "the workload has {n} snapshot(s) whose archive files still exist: delete them \
                 (DELETE /api/snapshots/{{sid}}) and let the node's worker remove the files first"
            ),
        ),
        WorkloadWriteError::Volume(r) => validate::volume_refusal(&r),
        WorkloadWriteError::Overlap(o) => {
            let mut e = Error::conflict(failure::VOLUME_OVERLAP, o.to_string());
            e.field = Some(format!("volumes[{}].source", o.index));
            e
        }
        WorkloadWriteError::Db(e) => Error::internal(e),
    }
}

fn validated(body: WorkloadBody) -> Result<WorkloadFields, Error> {
    let mut fields = WorkloadFields::from(body);
    validate::workload(&mut fields)?;
    Ok(fields)
}

/// Register a workload.
#[utoipa::path(post, path = "/api/workloads", tag = "workloads", request_body = WorkloadBody,
    responses(
        (status = 201, description = "created", body = Workload, headers(("Location" = String))),
        (status = 400, description = "invalid field (named in `error.field`) or malformed body; \
            volume rules use the node's published roots (`absolute` volumes only under its \
            `VOLSNAP_ABSOLUTE_ROOTS`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "a workload with this project, stage and name exists \
            (`workload_exists`), or a volume overlaps a volume of another workload of the same \
            node (`volume_overlap`; the message names it by id and project/stage/name)", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn create_workload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<WorkloadBody>,
) -> Result<Response, Error> {
    let fields = validated(body)?;
    let w = store::insert(&state.pool, &fields)
        .await
        .map_err(write_error)?;
    tracing::info!(workload_id = %w.id, by = %caller.name, "workload created");
    let location = format!("/api/workloads/{}", w.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(w),
    )
        .into_response())
}

/// List workloads (ordered by creation), optionally filtered.
#[utoipa::path(get, path = "/api/workloads", tag = "workloads", params(ListQuery),
    responses(
        (status = 200, body = WorkloadList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    ))]
async fn list_workloads(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<WorkloadList>, Error> {
    let limit = validate::limit(q.limit)?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<WorkloadId>()
                .map_err(|_| Error::invalid_field("cursor", "not a cursor this API handed out"))
        })
        .transpose()?;
    for (field, v) in [("project", &q.project), ("stage", &q.stage)] {
        if let Some(v) = v {
            validate::slug(field, v)?;
        }
    }
    if let Some(n) = &q.node {
        validate::node("node", n)?;
    }
    let (items, next) = store::list(
        &state.pool,
        &WorkloadFilter {
            project: q.project,
            stage: q.stage,
            node: q.node,
            after,
            limit,
        },
    )
    .await?;
    Ok(axum::Json(WorkloadList {
        items,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// Read one workload.
#[utoipa::path(get, path = "/api/workloads/{id}", tag = "workloads",
    params(("id" = WorkloadId, Path, description = "workload id")),
    responses(
        (status = 200, body = Workload),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_workload(
    State(state): State<AppState>,
    Path(id): Path<WorkloadId>,
) -> Result<axum::Json<Workload>, Error> {
    store::get(&state.pool, id)
        .await?
        .map(axum::Json)
        .ok_or_else(Error::workload_not_found)
}

/// Replace a workload's fields. Moving it to another node is refused (409) while it has
/// an active job.
#[utoipa::path(put, path = "/api/workloads/{id}", tag = "workloads", request_body = WorkloadBody,
    params(("id" = WorkloadId, Path, description = "workload id")),
    responses(
        (status = 200, body = Workload),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "name taken, node change while a job is active, or a volume \
            overlaps a volume of another workload of the same node (`volume_overlap`)", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
async fn update_workload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<WorkloadId>,
    Json(body): Json<WorkloadBody>,
) -> Result<axum::Json<Workload>, Error> {
    let fields = validated(body)?;
    let w = store::update(&state.pool, id, &fields)
        .await
        .map_err(write_error)?;
    tracing::info!(workload_id = %w.id, by = %caller.name, "workload updated");
    Ok(axum::Json(w))
}

/// Delete a workload. Refused (409) while it has an active job, or while any of its
/// snapshots still has an archive file on disk.
#[utoipa::path(delete, path = "/api/workloads/{id}", tag = "workloads",
    params(("id" = WorkloadId, Path, description = "workload id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "active job, or snapshots with files remain", body = ErrorBody),
    ))]
async fn delete_workload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<WorkloadId>,
) -> Result<StatusCode, Error> {
    store::delete(&state.pool, id).await.map_err(write_error)?;
    tracing::info!(workload_id = %id, by = %caller.name, "workload deleted");
    Ok(StatusCode::NO_CONTENT)
}
