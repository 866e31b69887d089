//! Test harness: the real router over a per-test database, tokens, and fixtures.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use volsnap_api::{AppState, Limits, ServeConfig};
use volsnap_shared::db;
use volsnap_shared::domain::{Role, SnapshotState, SourceKind, VolumeScope, VolumeSpec, Workload};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

pub struct TestApp {
    pub pool: PgPool,
    pub router: Router,
    pub admin: String,
    pub viewer: String,
}

pub async fn token(pool: &PgPool, name: &str, role: Role) -> String {
    let (secret, hash) = volsnap_api::auth::generate_token();
    db::tokens::insert(pool, name, role, &hash).await.unwrap();
    secret
}

impl TestApp {
    pub async fn new(pool: PgPool) -> TestApp {
        Self::with_ttl(pool, Duration::from_secs(2)).await
    }

    pub async fn with_ttl(pool: PgPool, ttl: Duration) -> TestApp {
        let admin = token(&pool, "admin", Role::Admin).await;
        let viewer = token(&pool, "viewer", Role::Viewer).await;
        let state = AppState::new(pool.clone(), Limits::default(), ttl)
            .await
            .unwrap();
        TestApp {
            router: volsnap_api::app(state),
            pool,
            admin,
            viewer,
        }
    }

    pub fn req(&self, method: Method, uri: &str) -> Req<'_> {
        Req {
            app: self,
            builder: Request::builder().method(method).uri(uri),
            body: Body::empty(),
        }
    }

    pub fn get(&self, uri: &str) -> Req<'_> {
        self.req(Method::GET, uri).token(&self.admin)
    }

    pub fn post(&self, uri: &str) -> Req<'_> {
        self.req(Method::POST, uri).token(&self.admin)
    }

    /// A workload registered through the API.
    pub async fn workload(&self, node: &str, kind: SourceKind) -> Workload {
        let r = self
            .post("/api/workloads")
            .json(workload_body(&unique("app"), node, kind))
            .send()
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        serde_json::from_value(r.body).unwrap()
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn workload_body(name: &str, node: &str, kind: SourceKind) -> Value {
    json!({
        "name": name,
        "project": "shop",
        "stage": "prod",
        "node": node,
        "source_kind": kind,
        "image": if kind == SourceKind::Image { Some("registry.local/shop:1") } else { None },
        // One directory per workload: two workloads of a node may not share one.
        "volumes": [{"scope": "stage", "source": format!("data/{name}"), "target": "/var/lib/app"}],
    })
}

/// The fields of a fixture workload: project `shop`, stage `prod`, one stage volume
/// (`data/<name>`, so fixtures of one node never overlap).
pub fn workload_fields(name: &str, node: &str, kind: SourceKind) -> db::workloads::WorkloadFields {
    db::workloads::WorkloadFields {
        name: name.into(),
        project: "shop".into(),
        stage: "prod".into(),
        node: node.into(),
        source_kind: kind,
        image: (kind == SourceKind::Image).then(|| "img:1".to_owned()),
        volumes: vec![VolumeSpec {
            scope: VolumeScope::Stage,
            source: format!("data/{name}"),
            target: "/var/lib/app".into(),
        }],
        stop_for_capture: false,
    }
}

/// A workload inserted directly (fixtures for bulk tests).
pub async fn workload_row(pool: &PgPool, node: &str, kind: SourceKind) -> Workload {
    db::workloads::insert(pool, &workload_fields(&unique("w"), node, kind))
        .await
        .unwrap()
}

/// A snapshot row as a worker would leave it.
pub async fn snapshot_row(
    pool: &PgPool,
    workload: WorkloadId,
    node: &str,
    state: SnapshotState,
) -> SnapshotId {
    let id = SnapshotId::new();
    let ready = state == SnapshotState::Ready;
    sqlx::query(
        "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
         VALUES ($1, $2, $3, 'manual', $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(workload)
    .bind(node)
    .bind(state)
    .bind(ready.then(|| format!("{workload}/{id}.tar.gz")))
    .bind(ready.then_some(1234_i64))
    .bind(ready.then(|| "a".repeat(64)))
    .bind(ready.then(|| json!({"format": "volsnap/1", "volumes": []})))
    .execute(pool)
    .await
    .unwrap();
    id
}

pub async fn ready_snapshot(pool: &PgPool, w: &Workload) -> SnapshotId {
    snapshot_row(pool, w.id, &w.node, SnapshotState::Ready).await
}

/// Finish a job as a worker would (the trigger notifies waiters).
pub async fn finish_job(pool: &PgPool, id: JobId, state: &str, code: Option<&str>) {
    sqlx::query(
        "UPDATE jobs SET state = $2, finished_at = now(), error_code = $3, \
         error_message = CASE WHEN $3::text IS NULL THEN NULL ELSE 'failed: ' || $3 END WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(code)
    .execute(pool)
    .await
    .unwrap();
}

/// Mark a job running, as a claiming worker would.
pub async fn start_job(pool: &PgPool, id: JobId) {
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = 'test', \
         started_at = now(), heartbeat_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

pub struct Req<'a> {
    app: &'a TestApp,
    builder: axum::http::request::Builder,
    body: Body,
}

impl Req<'_> {
    pub fn token(mut self, token: &str) -> Self {
        self.builder = self
            .builder
            .header("authorization", format!("Bearer {token}"));
        self
    }

    pub fn header(mut self, k: &str, v: impl AsRef<str>) -> Self {
        self.builder = self.builder.header(k, v.as_ref());
        self
    }

    pub fn json(mut self, v: Value) -> Self {
        self.builder = self.builder.header("content-type", "application/json");
        self.body = Body::from(v.to_string());
        self
    }

    pub fn raw(mut self, content_type: &str, body: impl Into<Body>) -> Self {
        self.builder = self.builder.header("content-type", content_type);
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Resp {
        let resp = self
            .app
            .router
            .clone()
            .oneshot(self.builder.body(self.body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(text.clone()));
        Resp {
            status,
            headers,
            body,
            text,
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Assert the status and the JSON error code; returns self for more checks.
    #[track_caller]
    pub fn expect_error(self, status: StatusCode, code: &str) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.text);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        self
    }

    pub fn job_id(&self) -> JobId {
        self.body["job"]["id"].as_str().unwrap().parse().unwrap()
    }
}

/// A real server on a free loopback port.
pub async fn spawn_server(pool: PgPool) -> SocketAddr {
    let server = volsnap_api::build(
        pool,
        &ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Limits::default(),
            token_cache_ttl: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));
    addr
}
