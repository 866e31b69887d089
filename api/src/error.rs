//! The one error type of the API. Every failure a client sees is JSON
//! `{"error":{"code","message"}}` with a stable `code`; 5xx answers carry a generic
//! message (and the job id where one is involved), the detail goes to the log only.

use std::borrow::Cow;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use volsnap_shared::domain::Job;
use volsnap_shared::ids::JobId;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The job concerned, where a waited request reports a job's failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<Job>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable reason (e.g. `invalid_field`, `active_job`).
    pub code: String,
    /// Human-readable explanation; never internal detail.
    pub message: String,
    /// The request field at fault, for validation errors (e.g. `volumes[0].target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The job concerned: the active job for a 409, the failed job for a 422/500.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
}

/// An API error: status, stable code, client-safe message, and (for 5xx) the cause,
/// which is logged and never sent.
#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    pub field: Option<String>,
    pub job_id: Option<JobId>,
    pub job: Option<Box<Job>>,
    source: Option<anyhow::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            job_id: None,
            job: None,
            source: None,
        }
    }

    pub fn bad_request(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 400 naming the request field at fault.
    pub fn invalid_field(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut e = Self::bad_request("invalid_field", format!("{field}: {problem}"));
        e.field = Some(field);
        e
    }

    pub fn not_found(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 404 `workload_not_found`.
    pub fn workload_not_found() -> Self {
        Self::not_found("workload_not_found", "no workload with this id")
    }

    /// 404 `snapshot_not_found`.
    pub fn snapshot_not_found() -> Self {
        Self::not_found("snapshot_not_found", "no snapshot with this id")
    }

    /// 404 `job_not_found`.
    pub fn job_not_found() -> Self {
        Self::not_found("job_not_found", "no job with this id")
    }

    /// 409 `active_job`: a new job of the workload is refused while `job` is queued or
    /// running (single-flight).
    pub fn active_job(job: JobId) -> Self {
        Self::conflict(
            "active_job",
            format!("the workload already has an active job {job}"),
        )
        .with_job_id(job)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required: Authorization: Bearer <token>",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an admin token",
        )
    }

    /// A 500 whose cause is logged, not sent.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
        e.source = Some(source.into());
        e
    }

    pub fn with_job_id(mut self, id: JobId) -> Self {
        self.job_id = Some(id);
        self
    }

    pub fn with_job(mut self, job: Job) -> Self {
        self.job_id = Some(job.id);
        self.job = Some(Box::new(job));
        self
    }

    pub fn body(&self) -> ErrorBody {
        let message = if self.status.is_server_error() {
            match self.job_id {
                Some(id) => format!("internal error (job {id})"),
                None => "internal error".to_owned(),
            }
        } else {
            self.message.clone()
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message,
                field: self.field.clone(),
                job_id: self.job_id,
            },
            job: self.job.clone(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e.as_ref() as _)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::internal(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            let job_id = self.job_id.map(|j| j.to_string());
            match &self.source {
                Some(src) => tracing::error!(
                    status = self.status.as_u16(), code = %self.code, job_id, error = ?src,
                    "request failed"
                ),
                None => tracing::warn!(
                    status = self.status.as_u16(), code = %self.code, job_id, message = %self.message,
                    "request failed"
                ),
            }
        }
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.code == "too_many_waiters" {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::WAITERS_RETRY_AFTER_SECS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<JsonRejection> for Error {
    fn from(rej: JsonRejection) -> Self {
        let (status, code) = match &rej {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::BytesRejection(_) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_body"),
        };
        Error::new(status, code, rej.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(rej: PathRejection) -> Self {
        Error::bad_request("invalid_path", rej.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(rej: QueryRejection) -> Self {
        Error::bad_request("invalid_query", rej.body_text())
    }
}
