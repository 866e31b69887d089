//! The worker's own Prometheus endpoint (`--metrics-addr` / `VOLSNAP_WORKER_METRICS_ADDR`).
//!
//! Fleet-wide metrics (jobs, outcomes, downtime, the newest heartbeat per node) come
//! from the API's `/metrics`, out of Postgres. This endpoint answers what the database
//! cannot: is *this process* alive and heartbeating, and where do its restores spend
//! their time (`volsnap_restore_step_seconds{step}`, [`crate::engine::steps`])?
//!
//! Metrics go through the `metrics` facade: the engine records into the process's
//! recorder ([`install`]); the process gauges are read from [`WorkerStatus`] at each
//! scrape. hyper serves `GET /metrics` (anything else: 404), one request per
//! connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, gauge};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use volsnap_shared::queue::WorkerStatus;
use volsnap_shared::queue::stats::render_with;

use crate::engine::steps;

/// The recorder the engine's histograms need (their buckets), not installed.
pub fn recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(steps::METRIC.into()), steps::BUCKETS)?
        .build_recorder())
}

/// Install [`recorder`] as this process's recorder (once, at start-up) and describe
/// the engine's metrics in it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = recorder()?;
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    steps::describe();
    Ok(handle)
}

/// The metrics text for this process: its liveness gauges and counters, then what the
/// engine recorded into `recorded`.
pub fn render(node: &str, status: &WorkerStatus, recorded: &PrometheusHandle) -> String {
    let mut out = render_with(|| {
        let node = node.to_owned();
        describe_gauge!("volsnap_worker_up", "This worker process is running.");
        gauge!("volsnap_worker_up", "node" => node.clone()).set(1.0);
        describe_gauge!(
            "volsnap_worker_last_heartbeat_timestamp_seconds",
            "Last heartbeat of this process that the database accepted (0: none yet)."
        );
        gauge!("volsnap_worker_last_heartbeat_timestamp_seconds", "node" => node.clone())
            .set(status.last_heartbeat_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        describe_gauge!(
            "volsnap_worker_running_jobs",
            "Jobs this process is running."
        );
        gauge!("volsnap_worker_running_jobs", "node" => node.clone())
            .set(status.running_jobs.load(Ordering::Relaxed) as f64);
        describe_counter!(
            "volsnap_worker_jobs_done_total",
            "Jobs this process ran to an end since it started."
        );
        counter!("volsnap_worker_jobs_done_total", "node" => node)
            .absolute(status.jobs_done.load(Ordering::Relaxed));
    });
    out.push_str(&recorded.render());
    out
}

struct Endpoint {
    node: String,
    status: Arc<WorkerStatus>,
    recorded: PrometheusHandle,
}

impl Endpoint {
    fn respond(&self, req: &Request<Incoming>) -> Response<String> {
        let (status, ctype, body) = if req.method() == Method::GET && req.uri().path() == "/metrics"
        {
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                render(&self.node, &self.status, &self.recorded),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: GET /metrics\n".to_owned(),
            )
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        resp
    }
}

/// Bind `addr` and serve until `stop`. Returns the bound address (port 0 allowed).
/// `recorded` is the handle of the recorder the engine records into ([`install`]).
pub async fn serve(
    addr: SocketAddr,
    node: String,
    status: Arc<WorkerStatus>,
    recorded: PrometheusHandle,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let endpoint = Arc::new(Endpoint {
        node,
        status,
        recorded,
    });
    tokio::spawn(async move {
        // Histogram samples wait in the recorder until a scrape or an upkeep folds them.
        let mut upkeep = tokio::time::interval(Duration::from_secs(5));
        loop {
            let sock = tokio::select! {
                _ = stop.cancelled() => return,
                _ = upkeep.tick() => {
                    endpoint.recorded.run_upkeep();
                    continue;
                }
                a = listener.accept() => match a {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let resp = endpoint.respond(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(sock), svc);
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(30), conn).await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_the_process_metrics() {
        let status = Arc::new(WorkerStatus::default());
        status
            .last_heartbeat_ms
            .store(1_700_000_000_500, Ordering::Relaxed);
        status.running_jobs.store(2, Ordering::Relaxed);
        // The engine's histograms, recorded into a recorder of the test's own.
        let recorder = recorder().unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            steps::describe();
            drop(steps::Step::Swap.start());
        });
        let stop = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            "n1".into(),
            status,
            recorder.handle(),
            stop.clone(),
        )
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.contains(
                "volsnap_worker_last_heartbeat_timestamp_seconds{node=\"n1\"} 1700000000.5"
            ),
            "{ok}"
        );
        assert!(ok.contains("volsnap_worker_running_jobs{node=\"n1\"} 2"));
        assert!(ok.contains("volsnap_worker_up{node=\"n1\"} 1"), "{ok}");
        assert!(
            ok.contains("volsnap_worker_jobs_done_total{node=\"n1\"} 0"),
            "{ok}"
        );
        assert!(
            ok.contains("volsnap_restore_step_seconds_count{step=\"swap\"} 1"),
            "{ok}"
        );
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }
}
