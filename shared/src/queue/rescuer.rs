//! The rescuers: running jobs whose owner is gone go back on the queue, never to a
//! blind re-run. `rescue_orphans_on_node` finds them at once on this node (lock free,
//! heartbeats stale); [`rescue_expired`] finds them on any node once their lease ran out.

use std::time::Duration;

use sqlx::PgPool;

use super::config::WorkerConfig;
use super::locks::try_workload_lock;
use super::producer::InHand;
use crate::ids::JobId;

/// Running jobs of this node whose owner is gone are queued for recovery at once
/// (at start-up and on every heartbeat tick) instead of waiting out their lease. An
/// owner that is alive holds the workload's advisory lock for the whole run, so a lock
/// we can take means a dead owner. Between its claim and its lock a live owner holds
/// nothing, so more is required: the job's heartbeat must be stale, and either its
/// owner is another process whose own heartbeat (the `workers` row) is stale too, or
/// it is this process and the job is no longer in hand (its task ended without writing
/// an outcome: a lost lock connection, a failed outcome write). `in_hand` is None at
/// start-up, before this process holds anything.
pub(super) async fn rescue_orphans_on_node(
    pool: &PgPool,
    cfg: &WorkerConfig,
    in_hand: Option<&InHand>,
) -> Result<usize, sqlx::Error> {
    let held: Vec<JobId> = in_hand.map_or_else(Vec::new, |h| {
        h.lock().expect("in-hand set").ids.iter().copied().collect()
    });
    let candidates: Vec<(JobId, i32, crate::ids::WorkloadId, bool, bool)> = sqlx::query_as(concat!(
        "SELECT j.id, j.attempt, j.workload_id, j.worker_id = $3, NOT (j.",
        crate::changes_workload_sql!(),
        ") FROM jobs j \
         WHERE j.state = 'running' AND j.node = $1 \
           AND j.heartbeat_at < now() - make_interval(secs => $2) \
           AND CASE WHEN j.worker_id = $3 THEN NOT (j.id = ANY($4)) \
             ELSE NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = j.worker_id \
               AND w.stopped_at IS NULL AND w.heartbeat_at >= now() - make_interval(secs => $2)) END",
    ))
    .bind(&cfg.node)
    .bind((cfg.heartbeat_interval * 2).as_secs_f64())
    .bind(&cfg.worker_id)
    .bind(&held)
    .fetch_all(pool)
    .await?;
    let mut rescued = 0;
    for (id, attempt, workload, ours, lock_free) in candidates {
        let in_our_hand =
            || ours && in_hand.is_none_or(|h| h.lock().expect("in-hand set").may_hold(id));
        // Our own job, claimed (the claim committed before the query above) and still in
        // hand or with its claim unanswered: not an orphan. Checked before its lock is
        // tried, as our taking it even briefly would make the job's own lock attempt
        // fail and hand the job back.
        if in_our_hand() {
            continue;
        }
        if lock_free {
            // A plan or pre-restore archive holds no workload lock: its owner is judged
            // by the heartbeats alone (the query above). It changes no live data and is
            // idempotent, so it is simply queued
            // again; the claim bumps the attempt, which fences a stale owner's writes.
            let n = sqlx::query(
                "UPDATE jobs SET state = 'queued', worker_id = NULL, phase = 'queued' \
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(attempt)
            .execute(pool)
            .await?
            .rows_affected();
            rescued += n as usize;
            continue;
        }
        // A dropped guard closes its connection: if anything below fails, the lock is
        // not returned to the pool still held.
        let Some(mut lock) = try_workload_lock(pool, workload).await? else {
            continue;
        };
        // Our own job: with its lock in our hand, make sure no claim of ours is about to
        // start it (the query above saw the in-hand set before taking the lock).
        if in_our_hand() {
            lock.unlock().await?;
            continue;
        }
        let n = sqlx::query(
            "UPDATE jobs SET state = 'queued', recovering = true, worker_id = NULL, \
             phase = 'awaiting recovery' WHERE id = $1 AND attempt = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .execute(lock.conn())
        .await?
        .rows_affected();
        rescued += n as usize;
        lock.unlock().await?;
    }
    Ok(rescued)
}

/// Return running jobs whose heartbeat is older than `lease` to their node as
/// `queued` + `recovering` (a `plan` or a pre-restore archive, which change no live
/// data and are idempotent, as plainly `queued`: they are simply run again). The attempt is not changed here; the next claim bumps it,
/// which fences the stale owner.
pub async fn rescue_expired(pool: &PgPool, lease: Duration) -> Result<Vec<JobId>, sqlx::Error> {
    let ids: Vec<JobId> = sqlx::query_scalar(concat!(
        // Locks in id order, as the heartbeat and the completer do.
        "WITH locked AS MATERIALIZED (SELECT id FROM jobs \
           WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1) \
           ORDER BY id FOR UPDATE) \
         UPDATE jobs SET state = 'queued', recovering = (",
        crate::changes_workload_sql!(),
        "), worker_id = NULL, \
         phase = CASE WHEN ",
        crate::changes_workload_sql!(),
        " THEN 'awaiting recovery' ELSE 'queued' END FROM locked \
         WHERE jobs.id = locked.id AND state = 'running' \
           AND heartbeat_at < now() - make_interval(secs => $1) \
         RETURNING jobs.id",
    ))
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    if !ids.is_empty() {
        tracing::warn!(count = ids.len(), jobs = ?ids, "rescued jobs with expired heartbeats; they will run recovery");
    }
    Ok(ids)
}
