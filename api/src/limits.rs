//! Per-request limits: a timeout that leaves room for `?wait=`, JSON answers for
//! panics, and the `?wait=` parameter's rule.

use std::any::Any;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Limits;
use crate::error::Error;

/// The longest `?wait=` a client may ask for, in seconds.
pub const MAX_WAIT_SECS: f64 = 300.0;

/// Check a `?wait=` value: seconds (fractions allowed), 0 to 300.
pub fn wait_duration(wait: Option<f64>) -> Result<Option<Duration>, Error> {
    match wait {
        None => Ok(None),
        Some(w) if w.is_finite() && (0.0..=MAX_WAIT_SECS).contains(&w) => {
            Ok(Some(Duration::from_secs_f64(w)))
        }
        Some(_) => Err(Error::invalid_field(
            "wait",
            "must be a number of seconds from 0 to 300",
        )),
    }
}

/// The `wait` query parameter as far as the timeout needs it (the handler validates).
fn requested_wait(req: &Request) -> Duration {
    req.uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("wait="))
        .filter_map(|v| v.parse::<f64>().ok())
        .filter(|w| w.is_finite())
        .map(|w| Duration::from_secs_f64(w.clamp(0.0, MAX_WAIT_SECS)))
        .max()
        .unwrap_or_default()
}

/// Answer 503 `timeout` when a request runs longer than the limit plus its `?wait=`.
pub async fn timeout(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let budget = limits.request_timeout + requested_wait(&req);
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long",
        )
        .into_response(),
    }
}

/// Job status must never be served from a cache.
pub async fn no_store(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A handler panicked: log it, answer with a generic 500.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic");
    tracing::error!(panic = detail, "handler panicked");
    Error::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_rule() {
        assert_eq!(wait_duration(None).unwrap(), None);
        assert_eq!(
            wait_duration(Some(0.5)).unwrap(),
            Some(Duration::from_millis(500))
        );
        assert!(wait_duration(Some(300.0)).is_ok());
        for bad in [-1.0, 300.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                wait_duration(Some(bad)).unwrap_err().field.as_deref(),
                Some("wait")
            );
        }
    }
}
