//! The queue and `plan` jobs (issue 12): plans are outside single-flight, and a plan
//! whose lease expired goes back as plainly `queued` (it has nothing to recover), while
//! a restore beside it is rescued for recovery as before.

mod support;

use std::time::Duration;

use sqlx::PgPool;
use volsnap_shared::domain::{JobKind, JobState};
use volsnap_shared::ids::{JobId, SnapshotId};
use volsnap_shared::queue::{self, EnqueueError, JobOptions, NewJob};

use support::*;

async fn snapshot(pool: &PgPool, w: volsnap_shared::ids::WorkloadId) -> SnapshotId {
    let id = SnapshotId::new();
    sqlx::query(
        "INSERT INTO snapshots (id, workload_id, node, kind, state) VALUES ($1, $2, 'n1', 'manual', 'capturing')",
    )
    .bind(id)
    .bind(w)
    .execute(pool)
    .await
    .unwrap();
    id
}

fn job(kind: JobKind, w: volsnap_shared::ids::WorkloadId, s: SnapshotId) -> NewJob {
    NewJob {
        kind,
        snapshot_id: Some(s),
        ..new_job(w, "n1")
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn plans_are_outside_single_flight(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let s = snapshot(&pool, w).await;
    let p1 = enqueue(&pool, &job(JobKind::Plan, w, s)).await.unwrap();
    // A restore is not blocked by a queued plan ...
    let mut conn = pool.acquire().await.unwrap();
    let r = queue::enqueue_with(
        &mut conn,
        &job(JobKind::Restore, w, s),
        &JobOptions { verify: true },
    )
    .await
    .unwrap();
    assert!(r.verify);
    // ... nor a plan by the active restore; a second restore names the restore.
    let p2 = enqueue(&pool, &job(JobKind::Plan, w, s)).await.unwrap();
    assert_ne!(p1, p2);
    match enqueue(&pool, &job(JobKind::Restore, w, s)).await {
        Err(EnqueueError::AlreadyActive { active_job }) => assert_eq!(active_job, r.id),
        other => panic!("expected a single-flight conflict, got {other:?}"),
    }
    assert_eq!(
        volsnap_shared::db::jobs::active_for_workload(&pool, w)
            .await
            .unwrap(),
        Some(r.id)
    );
    // A plan never asks for verification.
    assert!(!queue::get_job(&pool, p1).await.unwrap().unwrap().verify);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn an_expired_plan_is_queued_again_not_for_recovery(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let s = snapshot(&pool, w).await;
    let plan = enqueue(&pool, &job(JobKind::Plan, w, s)).await.unwrap();
    let restore = enqueue(&pool, &job(JobKind::Restore, w, s)).await.unwrap();
    // Both claimed by a worker that then went silent.
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempt = 1, worker_id = 'gone', \
         started_at = now() - interval '1 minute', heartbeat_at = now() - interval '1 minute' \
         WHERE id = ANY($1)",
    )
    .bind(vec![plan, restore])
    .execute(&pool)
    .await
    .unwrap();
    let mut rescued = queue::rescue_expired(&pool, Duration::from_secs(5))
        .await
        .unwrap();
    rescued.sort();
    let mut both: Vec<JobId> = vec![plan, restore];
    both.sort();
    assert_eq!(rescued, both);
    let p = queue::get_job(&pool, plan).await.unwrap().unwrap();
    assert_eq!(
        (p.state, p.recovering, p.phase.as_str()),
        (JobState::Queued, false, "queued")
    );
    let r = queue::get_job(&pool, restore).await.unwrap().unwrap();
    assert_eq!((r.state, r.recovering), (JobState::Queued, true));
}
