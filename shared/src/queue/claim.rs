//! Claiming jobs and handing back the ones never started. One claim statement serves
//! both jobs outside rate-limited batches and the jobs of one `max_parallel` batch.

use sqlx::PgPool;

use super::config::WorkerConfig;
use crate::domain::Job;
use crate::ids::{BatchId, JobId};

/// Return jobs this worker claimed but never started (a claim answered after the stop
/// began, or a workload lock held elsewhere) to the queue as they were.
pub(super) async fn release_unstarted(pool: &PgPool, jobs: &[Job]) -> Result<(), sqlx::Error> {
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt).collect();
    sqlx::query(
        "WITH locked AS MATERIALIZED \
           (SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' ORDER BY id FOR UPDATE) \
         UPDATE jobs SET state = 'queued', worker_id = NULL, \
         phase = CASE WHEN recovering THEN 'awaiting recovery' ELSE 'queued' END \
         FROM unnest($1::uuid[], $2::int[]) AS t(id, attempt) JOIN locked l USING (id) \
         WHERE jobs.id = t.id AND jobs.attempt = t.attempt AND jobs.state = 'running'",
    )
    .bind(&ids)
    .bind(&attempts)
    .execute(pool)
    .await?;
    Ok(())
}

/// The one claim statement: up to `$2` queued jobs of node `$1`, oldest first, not in
/// `$3`, whose backoff (`run_after`) has passed, become `running` for worker `$4` with
/// the attempt bumped (which fences any previous owner). `$5` NULL: jobs outside
/// rate-limited batches; `$5` a batch id: only that batch's jobs (its caller holds the
/// batch row's lock and has counted its room). Claims notify nobody (see docs/queue.md).
const CLAIM_SQL: &str = concat!(
    "WITH next AS ( \
       SELECT j.id AS next_id FROM jobs j \
       WHERE j.state = 'queued' AND j.node = $1 AND NOT (j.id = ANY($3)) \
         AND (j.run_after IS NULL OR j.run_after <= clock_timestamp()) \
         AND CASE WHEN $5::uuid IS NULL \
           THEN j.batch_id IS NULL OR NOT EXISTS (SELECT 1 FROM batches b \
                WHERE b.id = j.batch_id AND b.max_parallel IS NOT NULL) \
           ELSE j.batch_id = $5 END \
       ORDER BY j.created_at, j.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
     UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $4, \
       started_at = coalesce(started_at, clock_timestamp()), heartbeat_at = clock_timestamp(), \
       phase = CASE WHEN recovering THEN 'recovering' ELSE 'starting' END \
     FROM next WHERE jobs.id = next.next_id RETURNING ",
    crate::job_columns!(),
    ""
);

async fn claim_statement(
    conn: impl sqlx::PgExecutor<'_>,
    cfg: &WorkerConfig,
    limit: i64,
    excluded: &[JobId],
    batch: Option<BatchId>,
) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(CLAIM_SQL)
        .bind(&cfg.node)
        .bind(limit)
        .bind(excluded)
        .bind(&cfg.worker_id)
        .bind(batch)
        .fetch_all(conn)
        .await
}

/// Claim up to `limit` queued jobs of this node: first jobs outside rate-limited
/// batches (one statement), then jobs of batches with `max_parallel`, under the
/// batch row's lock so concurrent claimers cannot exceed the limit.
pub(super) async fn claim(
    pool: &PgPool,
    cfg: &WorkerConfig,
    limit: usize,
    excluded: &[JobId],
) -> Result<Vec<Job>, sqlx::Error> {
    let mut jobs = claim_statement(pool, cfg, limit as i64, excluded, None).await?;
    if jobs.len() < limit {
        match claim_from_limited_batch(pool, cfg, limit - jobs.len(), excluded).await {
            Ok(more) => jobs.extend(more),
            // The first statement's jobs are committed and ours: run them, never drop them.
            Err(e) if !jobs.is_empty() => {
                tracing::warn!(error = %e, "claiming from rate-limited batches failed; will retry");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(jobs)
}

async fn claim_from_limited_batch(
    pool: &PgPool,
    cfg: &WorkerConfig,
    limit: usize,
    excluded: &[JobId],
) -> Result<Vec<Job>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lock one limited batch that has work for this node; others skip it meanwhile.
    let batch: Option<(BatchId, i32)> = sqlx::query_as(
        "SELECT b.id, b.max_parallel FROM batches b \
         WHERE b.max_parallel IS NOT NULL AND EXISTS (SELECT 1 FROM jobs j \
           WHERE j.batch_id = b.id AND j.state = 'queued' AND j.node = $1 AND NOT (j.id = ANY($2)) \
             AND (j.run_after IS NULL OR j.run_after <= clock_timestamp())) \
         ORDER BY b.created_at FOR UPDATE OF b SKIP LOCKED LIMIT 1",
    )
    .bind(&cfg.node)
    .bind(excluded)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((batch_id, max_parallel)) = batch else {
        return Ok(vec![]);
    };
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE batch_id = $1 AND state = 'running'")
            .bind(batch_id)
            .fetch_one(&mut *tx)
            .await?;
    let room = (i64::from(max_parallel) - running).clamp(0, limit as i64);
    if room == 0 {
        return Ok(vec![]);
    }
    let jobs = claim_statement(&mut *tx, cfg, room, excluded, Some(batch_id)).await?;
    tx.commit().await?;
    Ok(jobs)
}
