//! Maintenance of one agent, every heartbeat interval: the orphan check and the lease
//! rescue (see `rescuer.rs`), and the hourly prune of old finished jobs.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::producer::InHand;
use super::rescuer::{rescue_expired, rescue_orphans_on_node};

/// Run `op` unless `stop` is cancelled first (a background task waiting for a pool
/// connection must not hold up a stop by the pool's acquire timeout).
pub(super) async fn unless_stopped<T>(
    stop: &CancellationToken,
    op: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = op => Some(r),
    }
}

pub(super) async fn maintenance_loop(
    pool: PgPool,
    cfg: WorkerConfig,
    in_hand: InHand,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rescue = Instant::now();
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Jobs of this node whose owner died (lock free, heartbeat stale) or that this
        // process let go of without an outcome: at once.
        match unless_stopped(&stop, rescue_orphans_on_node(&pool, &cfg, Some(&in_hand))).await {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "orphan check failed"),
            Some(Ok(_)) => {}
        }
        // Jobs of any node whose lease ran out (their owner may be alive but cut off).
        if last_rescue.elapsed() >= cfg.lease / 2 {
            last_rescue = Instant::now();
            match unless_stopped(&stop, rescue_expired(&pool, cfg.lease)).await {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "rescue pass failed"),
                Some(Ok(_)) => {}
            }
        }
        if let Some(age) = cfg.prune_after
            && last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            last_prune = Some(Instant::now());
            match unless_stopped(&stop, prune_finished(&pool, age)).await {
                None => return,
                Some(Ok(n)) if n > 0 => tracing::info!(pruned = n, "pruned old finished jobs"),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
    }
}

/// Delete finished jobs (and empty batches) older than `older_than`. Counters that
/// alerting needs are kept in `job_outcome_stats`, so pruning never resets a metric.
pub async fn prune_finished(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at IS NOT NULL \
             AND finished_at < now() - make_interval(secs => $1) LIMIT 1000)",
        )
        .bind(older_than.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 1000 {
            break;
        }
    }
    sqlx::query(
        "DELETE FROM batches b WHERE created_at < now() - make_interval(secs => $1) \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(total)
}
