//! The accept loop and per-connection serving: a cap on open connections, a
//! header-read timeout (from a request's first byte to the end of its head) and an
//! idle timeout (no request in flight, no byte either way), then graceful shutdown.
//!
//! hyper's own header timeout starts as soon as a keep-alive connection waits for its
//! next request, so it would also close idle connections at the header deadline; the
//! two are tracked here instead, from the bytes the connection actually moves.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::Limits;

/// What one connection has been doing, shared by its I/O, its service and its watchdog.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_io: AtomicU64,
    /// Milliseconds since `start` (+1; 0 = none) of the first byte of a request head
    /// not yet handed to the service.
    head_started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn touched(&self, read: bool) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// A TCP stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touched(true);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touched(false);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Decrements the in-flight count when a request's handling ends.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        let now = self.0.now_ms();
        self.0.last_io.store(now, Ordering::Relaxed);
    }
}

/// Accept until `shutdown` completes, then let connections finish (held `?wait=`
/// requests are answered at once through `stop`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait until one closes"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if slots.available_permits() > 0 {
                    warned_full = false;
                }
                tracker.spawn(serve_connection(
                    stream,
                    router.clone(),
                    limits,
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    stop.cancel();
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_io: AtomicU64::new(0),
        head_started: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        act.in_flight.fetch_add(1, Ordering::AcqRel);
        act.head_started.store(0, Ordering::Release);
        let guard = InFlight(act.clone());
        let router = router.clone();
        async move {
            let _guard = guard;
            router.oneshot(req).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let wake = next_check(&activity, &limits);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(wake) => {
                if activity.in_flight.load(Ordering::Acquire) > 0 {
                    continue;
                }
                let now = activity.now_ms();
                let head = activity.head_started.load(Ordering::Acquire);
                if head != 0 {
                    if now + 1 - head >= limits.header_read_timeout.as_millis() as u64 {
                        tracing::info!(
                            timeout_s = limits.header_read_timeout.as_secs_f64(),
                            "closing a connection that did not send its request head in time"
                        );
                        return; // dropping the connection closes the socket
                    }
                } else if now - activity.last_io.load(Ordering::Relaxed).min(now)
                    >= limits.idle_timeout.as_millis() as u64
                {
                    tracing::debug!("closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// When the watchdog should look next: the earlier of the header deadline (when a
/// request head is being read) and the idle deadline.
fn next_check(a: &Activity, limits: &Limits) -> Instant {
    let head = a.head_started.load(Ordering::Acquire);
    let base = if head != 0 {
        a.start + Duration::from_millis(head - 1) + limits.header_read_timeout
    } else {
        a.start + Duration::from_millis(a.last_io.load(Ordering::Relaxed)) + limits.idle_timeout
    };
    // Never sleep past a second: the head may start (or a request end) meanwhile.
    base.min(Instant::now() + Duration::from_secs(1))
        .max(Instant::now() + Duration::from_millis(10))
}
