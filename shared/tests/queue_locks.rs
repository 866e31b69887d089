//! The typed workload lock (`queue::try_workload_lock`) against a real PostgreSQL: one
//! holder at a time, released by `unlock` or, when the guard is dropped, by closing its
//! connection — never handed back to the pool still held.

use std::time::Duration;

use sqlx::PgPool;
use volsnap_shared::ids::WorkloadId;
use volsnap_shared::queue;

mod support;
use support::wait_until;

/// Advisory locks of the lock class on `workload`'s key, granted to any session.
async fn holders(pool: &PgPool, w: WorkloadId) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::int = $1 AND objid::int = $2",
    )
    .bind(queue::ADVISORY_LOCK_CLASS)
    .bind(queue::workload_lock_key(w))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_workload_lock_has_one_holder_until_unlocked(pool: PgPool) {
    let w = WorkloadId::new();
    let mut held = queue::try_workload_lock(&pool, w)
        .await
        .unwrap()
        .expect("a free workload is locked");
    assert_eq!(holders(&pool, w).await, 1);
    // Another session (the pool hands out another connection) is refused.
    assert!(
        queue::try_workload_lock(&pool, w).await.unwrap().is_none(),
        "a held workload was locked twice"
    );
    // Statements run on the holder's own session.
    let pid_held: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(held.conn())
        .await
        .unwrap();
    let pid_lock: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid::int = $1",
    )
    .bind(queue::workload_lock_key(w))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pid_held, pid_lock);
    held.unlock().await.unwrap();
    assert_eq!(holders(&pool, w).await, 0);
    let again = queue::try_workload_lock(&pool, w).await.unwrap();
    assert!(
        again.is_some(),
        "an unlocked workload could not be locked again"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_dropped_workload_lock_is_released_with_its_connection(pool: PgPool) {
    let w = WorkloadId::new();
    let held = queue::try_workload_lock(&pool, w).await.unwrap().unwrap();
    drop(held);
    // The session is closed (in the background), which releases the lock; the pool
    // never gets a connection back that still holds it.
    wait_until(
        "the dropped lock's session ends",
        Duration::from_secs(5),
        || async { holders(&pool, w).await == 0 },
    )
    .await;
    for _ in 0..3 {
        let mut c = pool.acquire().await.unwrap();
        let held_here: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .fetch_one(&mut *c)
        .await
        .unwrap();
        assert_eq!(held_here, 0, "a pooled connection still held the lock");
    }
    assert!(queue::try_workload_lock(&pool, w).await.unwrap().is_some());
}
