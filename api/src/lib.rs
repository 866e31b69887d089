//! volsnap-api: the control plane. HTTP API, web UI, auth, validation, enqueue, job
//! status and `/metrics`. It touches Postgres only — never volumes, never Docker.
//!
//! [`app`] builds the router around one [`AppState`]; [`build`] binds a listener (port 0
//! in tests) and reports the bound address, so tests start the real thing.

pub mod auth;
pub mod batches;
mod conn;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod plans;
pub mod query;
pub mod restores;
pub mod snapshots;
pub mod ui;
pub mod undo;
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

/// Limits applied to every request and connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a request may take, on top of its own `?wait=` (at most 300 s).
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// Time from a request's first byte to the end of its headers; a connection that
    /// has not sent a whole request head by then is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte sent either way for this long
    /// is closed (covers connections that never send anything).
    pub idle_timeout: Duration,
    /// Most open client connections; past it new connections wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// Most requests held by `?wait=` at once; past it a waited request is answered 503
    /// `too_many_waiters` with `Retry-After` (and a waited restore enqueues nothing).
    pub max_waiters: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(30),
            body_limit: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_waiters: 2048,
        }
    }
}

/// Seconds a client is told to wait (`Retry-After`) when the waiter cap is reached.
pub const WAITERS_RETRY_AFTER_SECS: u32 = 2;

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
    /// One permit per request held by `?wait=` ([`Limits::max_waiters`]).
    pub waiters: Arc<tokio::sync::Semaphore>,
}

/// A place among the held `?wait=` requests; released when dropped.
pub struct WaitSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

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
            waiters: Arc::new(tokio::sync::Semaphore::new(limits.max_waiters)),
            limits,
            shutdown: CancellationToken::new(),
        })
    }

    /// Set this process's `?wait=` gauges and counters in the current recorder (the
    /// `/metrics` handler renders them with the fleet-wide values).
    pub fn record_waiter_metrics(&self) {
        use metrics::{counter, describe_counter, describe_gauge, gauge};
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.events.stats();
        describe_gauge!(
            "volsnap_api_waiters",
            "Requests held by ?wait= in this API process."
        );
        gauge!("volsnap_api_waiters")
            .set((self.limits.max_waiters - self.waiters.available_permits()) as f64);
        describe_gauge!(
            "volsnap_api_waiter_limit",
            "The most ?wait= requests held at once."
        );
        gauge!("volsnap_api_waiter_limit").set(self.limits.max_waiters as f64);
        describe_counter!(
            "volsnap_api_wait_shared_checks_total",
            "Missed-notification checks run (one query each)."
        );
        counter!("volsnap_api_wait_shared_checks_total").absolute(st.shared_checks.load(Relaxed));
        describe_counter!(
            "volsnap_api_wait_rereads_total",
            "Job re-reads by waiters after a notification named their job."
        );
        counter!("volsnap_api_wait_rereads_total").absolute(st.rereads.load(Relaxed));
    }

    /// Take a place among the held `?wait=` requests, or 503 `too_many_waiters` (with
    /// `Retry-After`) when all [`Limits::max_waiters`] are taken. Take it before doing
    /// anything, so a refused request changes nothing.
    pub fn wait_slot(&self) -> Result<WaitSlot, Error> {
        match self.waiters.clone().try_acquire_owned() {
            Ok(p) => Ok(WaitSlot(p)),
            Err(_) => Err(Error::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waiters",
                format!(
                    "{} requests are already waiting for jobs (the server's limit); \
                     retry in {WAITERS_RETRY_AFTER_SECS} s or poll without ?wait=",
                    self.limits.max_waiters
                ),
            )),
        }
    }

    /// The job once final, or as it is when `timeout` passes or the server shuts down;
    /// `None` for an unknown job. Sleeps on notifications, never polls. Holds `slot`
    /// until it answers.
    pub async fn wait_for_final(
        &self,
        slot: WaitSlot,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<Job>, sqlx::Error> {
        let _slot = slot;
        tokio::select! {
            r = self.events.wait_for_final(id, timeout) => r,
            _ = self.shutdown.cancelled() => queue::get_job(&self.pool, id).await,
        }
    }
}

/// `volsnap_restore_failures_recent{workload,workload_id,node}`: restores of each
/// workload that failed in the last 10 minutes (only workloads with one; at most 100),
/// so an alert can name the workload.
pub async fn recent_restore_failures(pool: &PgPool) -> Result<RecentRestoreFailures, sqlx::Error> {
    let rows = volsnap_shared::db::jobs::recent_restore_failures(pool).await?;
    Ok(RecentRestoreFailures(rows))
}

/// The rows of `volsnap_restore_failures_recent`: (workload, workload id, node, count).
pub struct RecentRestoreFailures(Vec<(String, uuid::Uuid, String, i64)>);

impl RecentRestoreFailures {
    /// Set the gauge's series in the current recorder (one per workload and node).
    pub fn record(&self) {
        metrics::describe_gauge!(
            "volsnap_restore_failures_recent",
            "Restores of a workload that failed in the last 10 minutes."
        );
        for (workload, id, node, n) in &self.0 {
            metrics::gauge!(
                "volsnap_restore_failures_recent",
                "workload" => workload.clone(),
                "workload_id" => id.to_string(),
                "node" => node.clone()
            )
            .set(*n as f64);
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
        .merge(plans::router())
        .merge(jobs::router())
        .merge(undo::router())
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
    limits: Limits,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serve until `shutdown` completes, then finish in-flight requests (held
    /// `?wait=` requests are answered at once with their job's current state).
    /// Connections are capped, and cut off by the header-read and idle timeouts
    /// ([`Limits`]).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        conn::serve(
            self.listener,
            self.router,
            self.limits,
            self.shutdown,
            shutdown,
        )
        .await;
        Ok(())
    }
}

/// Check the schema, start the notification listener, bind `cfg.addr` (port 0 picks a
/// free port: see [`Server::local_addr`]).
pub async fn build(pool: PgPool, cfg: &ServeConfig) -> anyhow::Result<Server> {
    // The worker runs the same check: a schema behind or ahead of this build is refused.
    volsnap_shared::database::ensure_migrated(&pool).await?;
    let state = AppState::new(pool, cfg.limits, cfg.token_cache_ttl)
        .await
        .context("starting the job notification listener")?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("binding {}", cfg.addr))?;
    Ok(Server {
        listener,
        limits: cfg.limits,
        shutdown: state.shutdown.clone(),
        router: app(state),
    })
}
