//! Helpers for queue tests against a real PostgreSQL, shared by `shared/tests/queue.rs`
//! and the cross-process tests in `tests/tests/queue_processes.rs` (included there by
//! path).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use sqlx::PgPool;
use volsnap_shared::domain::JobKind;
use volsnap_shared::ids::{JobId, WorkloadId};
use volsnap_shared::queue::{self, EnqueueError, NewJob};

/// Insert an `image` workload on `node`.
pub async fn workload(pool: &PgPool, node: &str) -> WorkloadId {
    let id = WorkloadId::new();
    sqlx::query(
        "INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
         VALUES ($1, $2, 'p', 's', $3, 'image', 'busybox')",
    )
    .bind(id)
    .bind(format!("w-{}", &id.to_string()[24..]))
    .bind(node)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A capture job for workload `w` on `node`.
pub fn new_job(w: WorkloadId, node: &str) -> NewJob {
    NewJob {
        kind: JobKind::Capture,
        workload_id: w,
        snapshot_id: None,
        node: node.into(),
        batch_id: None,
        requested_by: Some("test".into()),
    }
}

/// Enqueue on a connection of its own (a transaction of one statement).
pub async fn enqueue(pool: &PgPool, job: &NewJob) -> Result<JobId, EnqueueError> {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, job).await.map(|j| j.id)
}

/// Poll `f` until it holds; panic naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
