//! The HTTP client: one method per API route volsnapctl uses, the API's JSON shapes as
//! plain serde structs (this crate deliberately does not depend on `volsnap-shared`,
//! which carries the database layer), and the mapping of every failure to an exit code.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Exit codes (documented in docs/ctl.md).
pub mod exit {
    /// Everything asked for succeeded.
    pub const OK: u8 = 0;
    /// Some job (or batch item) failed, was cancelled or was not run.
    pub const FAILED: u8 = 1;
    /// Bad usage or configuration, including an API that cannot be reached.
    pub const USAGE: u8 = 2;
    /// The API refused the request (a 4xx answer).
    pub const REFUSED: u8 = 3;
}

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the API at {url}: {}", chain(source))]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the API refused: {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    #[error("the API failed: {status} {code}: {message}")]
    ServerError {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::Unreachable { .. } => exit::USAGE,
            CtlError::Refused { .. } => exit::REFUSED,
            CtlError::ServerError { .. } | CtlError::Failed(_) => exit::FAILED,
        }
    }

    /// The API's error code, when the API answered with one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            CtlError::Refused { code, .. } | CtlError::ServerError { code, .. } => Some(code),
            _ => None,
        }
    }

    /// As JSON, for `--output json`.
    pub fn to_json(&self) -> Value {
        match self {
            CtlError::Refused { status, body, .. } => {
                serde_json::json!({"status": status, "error": body.get("error").cloned().unwrap_or(Value::Null)})
            }
            other => serde_json::json!({"error": {"code": other.api_code().unwrap_or(match other {
                CtlError::Usage(_) => "usage",
                CtlError::Unreachable { .. } => "unreachable",
                _ => "failed",
            }), "message": other.to_string()}}),
        }
    }
}

pub type Result<T> = std::result::Result<T, CtlError>;

/// An error with its causes ("error sending request: … : Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VolumeSpec {
    pub scope: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Workload {
    pub id: String,
    pub name: String,
    pub project: String,
    pub stage: String,
    pub node: String,
    pub source_kind: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
}

impl Workload {
    /// `project/stage/name`, the name operators type.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.project, self.stage, self.name)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub workload_id: String,
    pub node: String,
    pub kind: String,
    pub state: String,
    #[serde(default)]
    pub size_bytes: Option<i64>,
    pub created_at: String,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub workload_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    pub node: String,
    pub state: String,
    pub phase: String,
    pub progress_done: i64,
    pub progress_total: i64,
    pub attempt: i32,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default)]
    pub past_point_of_no_return: bool,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub pre_restore_snapshot_id: Option<String>,
    #[serde(default)]
    pub batch_id: Option<String>,
    #[serde(default)]
    pub requested_by: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Whatever else the API adds (e.g. a plan's result), kept for `--output json`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// Wall time from start to finish (or to now while running).
    pub fn duration(&self) -> Option<Duration> {
        let start = parse_time(self.started_at.as_deref()?)?;
        let end = match self.finished_at.as_deref() {
            Some(f) => parse_time(f)?,
            None => chrono::Utc::now(),
        };
        (end - start).to_std().ok()
    }

    /// `code: message` of a failed job.
    pub fn error_text(&self) -> Option<String> {
        match (&self.error_code, &self.error_message) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (Some(c), None) => Some(c.clone()),
            (None, Some(m)) => Some(m.clone()),
            (None, None) => None,
        }
    }
}

pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct JobEnvelope {
    pub job: Job,
}

#[derive(Debug, Deserialize)]
pub struct CaptureAccepted {
    pub job: Job,
    pub snapshot_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchItem {
    pub workload_id: String,
    pub snapshot_id: String,
    /// Verify the restore against the snapshot (absent: the workload's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BatchItemOutcome {
    pub workload_id: String,
    pub snapshot_id: String,
    pub status: u16,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub error: Option<ApiErrorBody>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct BatchAccepted {
    pub batch_id: String,
    pub accepted: i64,
    pub items: Vec<BatchItemOutcome>,
}

#[derive(Debug, Deserialize)]
pub struct BatchStatus {
    pub done: bool,
    pub jobs: Vec<Job>,
}

/// The API client: base URL and bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CtlError::Usage(format!(
                "--url must start with http:// or https://, got {base:?}"
            )));
        }
        if base.starts_with("https://") && !cfg!(feature = "tls") {
            return Err(CtlError::Usage(
                "this volsnapctl was built without TLS support (cargo feature `tls`); use an http:// URL"
                    .into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("volsnapctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.to_owned(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query)
            .timeout(timeout);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| CtlError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| CtlError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// A request whose success is 2xx; anything else becomes a [`CtlError`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<T> {
        let (status, value) = self
            .send(method, path, query, headers, body, timeout)
            .await?;
        if !status.is_success() {
            return Err(error_of(status, value));
        }
        serde_json::from_value(value).map_err(|e| {
            CtlError::Failed(format!(
                "unexpected answer from the API for {path}: {e} (is --url a volsnap API?)"
            ))
        })
    }

    fn short() -> Duration {
        Duration::from_secs(30)
    }

    pub async fn workloads(
        &self,
        project: Option<&str>,
        stage: Option<&str>,
    ) -> Result<Vec<Workload>> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit", "500".to_owned())];
            if let Some(p) = project {
                q.push(("project", p.to_owned()));
            }
            if let Some(s) = stage {
                q.push(("stage", s.to_owned()));
            }
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page: Page<Workload> = self
                .call(Method::GET, "/api/workloads", &q, &[], None, Self::short())
                .await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub async fn workload(&self, id: &str) -> Result<Workload> {
        self.call(
            Method::GET,
            &format!("/api/workloads/{id}"),
            &[],
            &[],
            None,
            Self::short(),
        )
        .await
    }

    /// Every snapshot of a workload, newest first.
    pub async fn snapshots(&self, workload_id: &str) -> Result<Vec<Snapshot>> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit", "500".to_owned())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page: Page<Snapshot> = self
                .call(
                    Method::GET,
                    &format!("/api/workloads/{workload_id}/snapshots"),
                    &q,
                    &[],
                    None,
                    Self::short(),
                )
                .await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub async fn snapshot(&self, id: &str) -> Result<Snapshot> {
        self.call(
            Method::GET,
            &format!("/api/snapshots/{id}"),
            &[],
            &[],
            None,
            Self::short(),
        )
        .await
    }

    pub async fn jobs(&self, filters: &[(&str, String)], limit: usize) -> Result<Vec<Job>> {
        let mut out = vec![];
        let mut cursor: Option<String> = None;
        while out.len() < limit {
            let mut q = filters.to_vec();
            q.push(("limit", (limit - out.len()).min(500).to_string()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page: Page<Job> = self
                .call(Method::GET, "/api/jobs", &q, &[], None, Self::short())
                .await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(out)
    }

    /// A job; with `wait`, held by the API until it is final or `wait` passes.
    pub async fn job(&self, id: &str, wait: Option<Duration>) -> Result<Job> {
        let q: Vec<(&str, String)> = wait
            .map(|w| vec![("wait", format!("{:.3}", w.as_secs_f64()))])
            .unwrap_or_default();
        let timeout = Self::short() + wait.unwrap_or_default();
        self.call(
            Method::GET,
            &format!("/api/jobs/{id}"),
            &q,
            &[],
            None,
            timeout,
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Result<Job> {
        self.call(
            Method::POST,
            &format!("/api/jobs/{id}/cancel"),
            &[],
            &[],
            None,
            Self::short(),
        )
        .await
    }

    pub async fn capture(&self, workload_id: &str) -> Result<CaptureAccepted> {
        self.call(
            Method::POST,
            &format!("/api/workloads/{workload_id}/snapshots"),
            &[],
            &[],
            None,
            Self::short(),
        )
        .await
    }

    /// Enqueue one restore (`X-Confirm-Restore` carries the snapshot id).
    pub async fn restore(&self, workload_id: &str, snapshot_id: &str) -> Result<Job> {
        self.restore_with(workload_id, snapshot_id, None).await
    }

    /// [`Client::restore`], asking for (or against) verification; `None` leaves it to
    /// the workload's `verify_restores` default.
    pub async fn restore_with(
        &self,
        workload_id: &str,
        snapshot_id: &str,
        verify: Option<bool>,
    ) -> Result<Job> {
        let body = verify.map(|v| serde_json::json!({ "verify": v }));
        let env: JobEnvelope = self
            .call(
                Method::POST,
                &format!("/api/workloads/{workload_id}/snapshots/{snapshot_id}/restore"),
                &[],
                &[("X-Confirm-Restore", snapshot_id.to_owned())],
                body.as_ref(),
                Self::short(),
            )
            .await?;
        Ok(env.job)
    }

    /// Undo a succeeded restore (or undo): `POST /api/jobs/{id}/undo`, confirmed with the
    /// job's id. The worker swaps the kept pre-restore directory back in while it
    /// exists, else restores the job's `pre-restore` snapshot.
    pub async fn undo(&self, job_id: &str) -> Result<Job> {
        let env: JobEnvelope = self
            .call(
                Method::POST,
                &format!("/api/jobs/{job_id}/undo"),
                &[],
                &[("X-Confirm-Restore", job_id.to_owned())],
                None,
                Self::short(),
            )
            .await?;
        Ok(env.job)
    }

    /// Enqueue a restore plan (a dry run; no confirmation, viewers allowed).
    pub async fn plan(&self, workload_id: &str, snapshot_id: &str) -> Result<Job> {
        let env: JobEnvelope = self
            .call(
                Method::POST,
                &format!("/api/workloads/{workload_id}/snapshots/{snapshot_id}/plan"),
                &[],
                &[],
                None,
                Self::short(),
            )
            .await?;
        Ok(env.job)
    }

    /// Plan every item (`POST /api/restores?plan=true`; no confirmation).
    pub async fn batch_plan(&self, items: &[BatchItem]) -> Result<BatchAccepted> {
        let body = serde_json::json!({ "items": items });
        self.call(
            Method::POST,
            "/api/restores",
            &[("plan", "true".to_owned())],
            &[],
            Some(&body),
            Duration::from_secs(120),
        )
        .await
    }

    /// Enqueue a batch (`X-Confirm-Restore` carries the item count).
    pub async fn batch_restore(
        &self,
        items: &[BatchItem],
        max_parallel: Option<u32>,
        stop_after_failures: Option<u32>,
    ) -> Result<BatchAccepted> {
        let mut body = serde_json::json!({ "items": items });
        if let Some(n) = max_parallel {
            body["max_parallel"] = n.into();
        }
        if let Some(n) = stop_after_failures {
            body["stop_after_failures"] = n.into();
        }
        self.call(
            Method::POST,
            "/api/restores",
            &[],
            &[("X-Confirm-Restore", items.len().to_string())],
            Some(&body),
            Duration::from_secs(120),
        )
        .await
    }

    pub async fn batch(&self, id: &str) -> Result<BatchStatus> {
        self.call(
            Method::GET,
            &format!("/api/batches/{id}"),
            &[],
            &[],
            None,
            Self::short(),
        )
        .await
    }
}

/// A non-2xx answer as an error: 4xx refused, 5xx server error.
fn error_of(status: StatusCode, body: Value) -> CtlError {
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    if status.is_client_error() {
        CtlError::Refused {
            status: status.as_u16(),
            code,
            message,
            body,
        }
    } else {
        CtlError::ServerError {
            status: status.as_u16(),
            code,
            message,
        }
    }
}
