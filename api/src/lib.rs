//! volsnap-api: the control plane. HTTP API, web UI, auth, validation, enqueue, job
//! status and `/metrics`. It touches Postgres only — never volumes, never Docker.
//!
//! [`app`] builds the router around one [`AppState`]; [`build`] binds a listener (port 0
//! in tests) and reports the bound address, so tests start the real thing.

pub mod auth;
pub mod batches;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod restores;
pub mod snapshots;
pub mod ui;
pub mod validate;
pub mod workloads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use volsnap_shared::domain::Job;
use volsnap_shared::ids::JobId;
use volsnap_shared::queue::{self, JobEvents};

pub use error::Error;

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a request may take, on top of its own `?wait=` (at most 300 s).
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(30),
            body_limit: 1024 * 1024,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Job state notifications (LISTEN), for `?wait=`.
    pub events: JobEvents,
    pub tokens: Arc<auth::TokenCache>,
    pub limits: Limits,
    /// Cancelled when the server begins shutting down: held `?wait=` requests answer
    /// with the job as it is then, instead of holding the shutdown up.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Starts the process's LISTEN task.
    pub async fn new(
        pool: PgPool,
        limits: Limits,
        token_ttl: Duration,
    ) -> Result<Self, sqlx::Error> {
        let events = JobEvents::start(pool.clone()).await?;
        Ok(AppState {
            tokens: Arc::new(auth::TokenCache::new(pool.clone(), token_ttl)),
            pool,
            events,
            limits,
            shutdown: CancellationToken::new(),
        })
    }

    /// The job once final, or as it is when `timeout` passes or the server shuts down;
    /// `None` for an unknown job. Sleeps on notifications, never polls.
    pub async fn wait_for_final(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<Job>, sqlx::Error> {
        tokio::select! {
            r = self.events.wait_for_final(id, timeout) => r,
            _ = self.shutdown.cancelled() => queue::get_job(&self.pool, id).await,
        }
    }
}

/// The `/api` routes with their OpenAPI description (auth not yet applied).
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(auth::router())
        .merge(workloads::router())
        .merge(snapshots::router())
        .merge(restores::router())
        .merge(jobs::router())
        .merge(batches::router())
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (api, mut doc) = api_routes().split_for_parts();
    let api = api.route_layer(from_fn_with_state(state.clone(), auth::require_token));
    let (public, public_doc) = ops::router().merge(ui::router()).split_for_parts();
    doc.merge(public_doc);
    Router::new()
        .merge(api)
        .merge(public)
        .merge(openapi::router(doc))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.body_limit))
        .layer(from_fn_with_state(state.limits, limits::timeout))
        .layer(from_fn(limits::no_store))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(limits::panic_response))
        .with_state(state)
}

/// Settings of a serving process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub limits: Limits,
    /// How long a revoked token may still be accepted (the auth cache's lifetime).
    pub token_cache_ttl: Duration,
}

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serve until `shutdown` completes, then finish in-flight requests (held
    /// `?wait=` requests are answered at once with their job's current state).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let token = self.shutdown;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                token.cancel();
            })
            .await
    }
}

/// Refuse a database whose schema is behind this binary.
pub async fn ensure_schema_current(pool: &PgPool) -> anyhow::Result<()> {
    let status = volsnap_shared::db::schema::status(pool)
        .await
        .context("reading the database's applied migrations")?;
    if !status.is_current() {
        anyhow::bail!(
            "the database schema is behind this volsnap-api ({} migration(s) pending: {:?}); \
             run `volsnap-api migrate` first",
            status.pending.len(),
            status.pending
        );
    }
    Ok(())
}

/// Check the schema, start the notification listener, bind `cfg.addr` (port 0 picks a
/// free port: see [`Server::local_addr`]).
pub async fn build(pool: PgPool, cfg: &ServeConfig) -> anyhow::Result<Server> {
    ensure_schema_current(&pool).await?;
    let state = AppState::new(pool, cfg.limits, cfg.token_cache_ttl)
        .await
        .context("starting the job notification listener")?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("binding {}", cfg.addr))?;
    Ok(Server {
        listener,
        shutdown: state.shutdown.clone(),
        router: app(state),
    })
}
