//! Unauthenticated operational routes: liveness, readiness, metrics, and the JSON
//! answers for unknown routes and methods. The web UI at `/` is [`crate::ui`].

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::{db, queue};

use crate::AppState;
use crate::error::Error;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (liveness) or `ready` (readiness).
    pub status: &'static str,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "alive", body = Status)))]
async fn healthz() -> axum::Json<Status> {
    axum::Json(Status { status: "ok" })
}

/// Readiness: the database is reachable and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "ready", body = Status),
        (status = 503, description = "database unreachable or migrations pending", body = crate::error::ErrorBody),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Status>, Error> {
    match db::schema::status(&state.pool).await {
        Ok(s) if s.is_current() => Ok(axum::Json(Status { status: "ready" })),
        Ok(s) => Err(Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "migrations_pending",
            format!(
                "{} migration(s) pending: run `volsnap-api migrate`",
                s.pending.len()
            ),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            Err(Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unreachable",
            ))
        }
    }
}

/// Prometheus metrics (text exposition format 0.0.4). Counters come from tables that
/// survive the pruning of finished jobs.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses(
        (status = 200, description = "metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 500, description = "database error", body = crate::error::ErrorBody),
    ))]
async fn metrics(State(state): State<AppState>) -> Result<Response, Error> {
    let fleet = queue::stats::FleetStats::read(&state.pool).await?;
    let failures = crate::recent_restore_failures(&state.pool).await?;
    let mut body = queue::stats::render_with(|| {
        fleet.record();
        state.record_waiter_metrics();
        failures.record();
    });
    fleet.write_histograms(&mut body);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

pub async fn not_found() -> Error {
    Error::not_found("not_found", "no such route")
}

pub async fn method_not_allowed() -> Error {
    Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
