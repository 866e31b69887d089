//! The heartbeat: one statement per tick writes the heartbeat of every job this
//! process runs, and a job whose row is no longer ours (or a process cut off from the
//! database for most of a lease) has its `lease_lost` token cancelled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::maintenance::unless_stopped;
use crate::ids::JobId;

/// The jobs this process runs (from their lock until their outcome is written), for
/// the heartbeat: id → attempt, lease-lost token, finishing.
pub(super) type Running = Arc<Mutex<HashMap<JobId, RunningJob>>>;

pub(super) struct RunningJob {
    pub(super) attempt: i32,
    pub(super) lease_lost: CancellationToken,
    /// The handler returned and its outcome is being written: the row may already be
    /// final, which the heartbeat must not mistake for a lost lease.
    pub(super) finishing: bool,
}

/// Write the heartbeat of jobs still ours; returns those ids. Rows are locked in id
/// order, as the completer does (see `complete_batch`), and only rows still running:
/// a queued row may be held by a batch stop that waits for one of ours.
async fn heartbeat_jobs(
    pool: &PgPool,
    ids: &[JobId],
    attempts: &[i32],
) -> Result<Vec<JobId>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH locked AS MATERIALIZED \
           (SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' ORDER BY id FOR UPDATE) \
         UPDATE jobs SET heartbeat_at = clock_timestamp() \
         FROM unnest($1::uuid[], $2::int[]) AS t(id, attempt) JOIN locked l USING (id) \
         WHERE jobs.id = t.id AND jobs.attempt = t.attempt AND jobs.state = 'running' \
         RETURNING jobs.id",
    )
    .bind(ids)
    .bind(attempts)
    .fetch_all(pool)
    .await
}

pub(super) async fn heartbeat_loop(
    pool: PgPool,
    cfg: WorkerConfig,
    running: Running,
    stop: CancellationToken,
) {
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot: Vec<(JobId, i32, CancellationToken)> = running
            .lock()
            .expect("running map")
            .iter()
            .map(|(id, r)| (*id, r.attempt, r.lease_lost.clone()))
            .collect();
        let ids: Vec<JobId> = snapshot.iter().map(|s| s.0).collect();
        let attempts: Vec<i32> = snapshot.iter().map(|s| s.1).collect();
        let Some(res) = unless_stopped(&stop, async {
            sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE id = $1")
                .bind(&cfg.worker_id)
                .execute(&pool)
                .await?;
            if ids.is_empty() {
                return Ok(vec![]);
            }
            heartbeat_jobs(&pool, &ids, &attempts).await
        })
        .await
        else {
            return;
        };
        match res {
            Ok(alive) => {
                last_ok = Instant::now();
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                cfg.status
                    .last_heartbeat_ms
                    .store(now_ms, std::sync::atomic::Ordering::Relaxed);
                let alive: std::collections::HashSet<JobId> = alive.into_iter().collect();
                let held = running.lock().expect("running map");
                for (id, _, token) in &snapshot {
                    // Gone from the map or finishing: its own outcome made it final.
                    if !alive.contains(id) && held.get(id).is_some_and(|r| !r.finishing) {
                        tracing::error!(job_id = %id, "heartbeat found the job is no longer ours");
                        cfg.status.leases_lost.fetch_add(1, Ordering::Relaxed);
                        token.cancel();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                // Fence ourselves before anyone else can rescue our jobs.
                if last_ok.elapsed() > cfg.lease.mul_f64(0.8) {
                    for (_, _, token) in &snapshot {
                        if !token.is_cancelled() {
                            cfg.status.leases_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        token.cancel();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The interleaving a review found: a batch job F failing (its finish transaction
    /// holds F, then cancels the batch's queued jobs) while the heartbeat still lists a
    /// job Q of the same batch that was just handed back to `queued`, with Q < F. The
    /// heartbeat must not lock Q, or each waits for the other.
    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn heartbeat_never_waits_on_a_queued_row(pool: PgPool) {
        let w: Vec<crate::ids::WorkloadId> = sqlx::query_scalar(
            "INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
             SELECT gen_random_uuid(), 'hb-' || g, 'p', 's', 'n1', 'image', 'busybox' \
             FROM generate_series(1, 2) g RETURNING id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        // q sorts before f; q is queued (handed back), f is running.
        let (q, f) = (JobId::new(), JobId::new());
        sqlx::query(
            "INSERT INTO jobs (id, kind, workload_id, node, state, attempt, worker_id, heartbeat_at, started_at) \
             VALUES ($1, 'capture', $3, 'n1', 'queued', 1, NULL, NULL, NULL), \
                    ($2, 'capture', $4, 'n1', 'running', 1, 'w', now(), now())",
        )
        .bind(q)
        .bind(f)
        .bind(w[0])
        .bind(w[1])
        .execute(&pool)
        .await
        .unwrap();
        // The failing job's finish transaction holds F ...
        let mut fin = pool.begin().await.unwrap();
        sqlx::query("UPDATE jobs SET phase = 'finishing' WHERE id = $1")
            .bind(f)
            .execute(&mut *fin)
            .await
            .unwrap();
        // ... the heartbeat, listing both, waits for F ...
        let hb = tokio::spawn({
            let pool = pool.clone();
            async move { heartbeat_jobs(&pool, &[q, f], &[1, 1]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... and the batch stop now takes Q. Were Q locked by the heartbeat, this would
        // be a deadlock (one of the two aborted after deadlock_timeout).
        let cancel = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query("UPDATE jobs SET phase = 'cancelling' WHERE id = $1")
                .bind(q)
                .execute(&mut *fin),
        )
        .await
        .expect("the batch stop waited on a row the heartbeat locked");
        cancel.expect("the batch stop was aborted");
        fin.commit().await.unwrap();
        let alive = hb.await.unwrap().expect("the heartbeat failed");
        assert_eq!(alive, vec![f], "only the running job is heartbeated");
    }
}
