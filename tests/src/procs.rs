//! Helpers for tests that run the real binaries as processes and talk to them over
//! HTTP on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `volsnap-api`, built next to `sibling` (a binary of the same target directory, e.g.
/// the test's worker; `cargo build --workspace --bins` builds it, scripts/test does).
pub fn api_binary(sibling: &str) -> PathBuf {
    let p = Path::new(sibling).parent().unwrap().join("volsnap-api");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// GET `url` until it answers 2xx (60 s at most; `what` names it in the panic); the body.
pub async fn get_ok(url: &str, what: &str) -> String {
    let t = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return r.text().await.unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what} never answered at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
