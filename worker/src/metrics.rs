//! The worker's own Prometheus endpoint (`--metrics-addr` / `VOLSNAP_WORKER_METRICS_ADDR`).
//!
//! Fleet-wide metrics (jobs, outcomes, downtime, the newest heartbeat per node) come
//! from the API's `/metrics`, out of Postgres. This endpoint answers the question the
//! database cannot: is *this process* alive and heartbeating? A minimal HTTP/1.1
//! responder: `GET /metrics` only, one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use volsnap_shared::queue::worker::WorkerStatus;

/// The metrics text for this process.
pub fn render(node: &str, status: &WorkerStatus) -> String {
    let node = node
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let hb = status.last_heartbeat_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    format!(
        "# HELP volsnap_worker_up This worker process is running.\n\
         # TYPE volsnap_worker_up gauge\n\
         volsnap_worker_up{{node=\"{node}\"}} 1\n\
         # HELP volsnap_worker_last_heartbeat_timestamp_seconds Last heartbeat of this process that the database accepted (0: none yet).\n\
         # TYPE volsnap_worker_last_heartbeat_timestamp_seconds gauge\n\
         volsnap_worker_last_heartbeat_timestamp_seconds{{node=\"{node}\"}} {hb}\n\
         # HELP volsnap_worker_running_jobs Jobs this process is running.\n\
         # TYPE volsnap_worker_running_jobs gauge\n\
         volsnap_worker_running_jobs{{node=\"{node}\"}} {}\n\
         # HELP volsnap_worker_jobs_done_total Jobs this process ran to an end since it started.\n\
         # TYPE volsnap_worker_jobs_done_total counter\n\
         volsnap_worker_jobs_done_total{{node=\"{node}\"}} {}\n",
        status.running_jobs.load(Ordering::Relaxed),
        status.jobs_done.load(Ordering::Relaxed),
    )
}

/// Bind `addr` and serve until `stop`. Returns the bound address (port 0 allowed).
pub async fn serve(
    addr: SocketAddr,
    node: String,
    status: Arc<WorkerStatus>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (node, status) = (node.clone(), status.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let r = sock.read(&mut buf[n..]).await?;
                        if r == 0 {
                            break;
                        }
                        n += r;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or("");
                let (code, ctype, body) = if line.starts_with("GET /metrics ") {
                    (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        render(&node, &status),
                    )
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        "not found: GET /metrics\n".to_owned(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_process_metrics() {
        let status = Arc::new(WorkerStatus::default());
        status
            .last_heartbeat_ms
            .store(1_700_000_000_500, Ordering::Relaxed);
        status.running_jobs.store(2, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            "n1".into(),
            status,
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
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }
}
