//! The completer: writes job outcomes. Plain finishes are batched (many jobs, one
//! durable commit); the others are written one by one. [`Final::of`] is the one
//! mapping of a [`JobOutcome`] to the row's final state, phase, code and message.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::config::{RetryPolicy, WorkerStatus};
use super::events::INSERT_CHANNEL;
use super::job::JobOutcome;
use super::stats;
use crate::domain::{Job, JobState};
use crate::ids::JobId;

/// What an outcome that ends a job writes to its row.
struct Final<'a> {
    state: JobState,
    phase: &'static str,
    code: Option<&'a str>,
    message: Option<&'a str>,
}

impl<'a> Final<'a> {
    /// The one mapping of a [`JobOutcome`] to (state, phase, code, message), used by the
    /// batched finishes and by the one-by-one writes alike. None: the outcome does not
    /// end the job (it goes back on the queue, or is no longer ours).
    fn of(outcome: &'a JobOutcome) -> Option<Final<'a>> {
        let (state, phase, code, message) = match outcome {
            JobOutcome::Succeeded => (JobState::Succeeded, "done", None, None),
            JobOutcome::Cancelled => (
                JobState::Cancelled,
                "cancelled",
                None,
                Some("cancelled on request"),
            ),
            JobOutcome::Failed { code, message } => (
                JobState::Failed,
                "failed",
                Some(code.as_str()),
                Some(message.as_str()),
            ),
            JobOutcome::Requeue
            | JobOutcome::RequeueForRecovery
            | JobOutcome::Retry { .. }
            | JobOutcome::Abandon => return None,
        };
        Some(Final {
            state,
            phase,
            code,
            message,
        })
    }
}

/// Writes plain job finishes in batches: every finish waiting while the previous
/// batch commits goes into the next single statement, so the durable commit (one WAL
/// flush) is shared by many jobs. Each caller gets its own fenced result.
#[derive(Clone)]
pub(super) struct Completer {
    tx: tokio::sync::mpsc::Sender<Completion>,
}

struct Completion {
    id: JobId,
    attempt: i32,
    batched: bool,
    state: JobState,
    phase: &'static str,
    code: Option<String>,
    message: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<bool, sqlx::Error>>,
}

/// Most finishes one statement writes.
const COMPLETER_BATCH: usize = 256;

impl Completer {
    pub(super) fn start(
        pool: PgPool,
        status: Arc<WorkerStatus>,
    ) -> (Completer, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Completion>(COMPLETER_BATCH * 4);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(COMPLETER_BATCH);
            while rx.recv_many(&mut batch, COMPLETER_BATCH).await > 0 {
                let mut result = complete_batch(&pool, &batch).await;
                // Deadlocks should not happen (rows and counters are locked in a fixed
                // order); if the server still picks this statement as a victim, it was
                // rolled back whole and is safe to run again.
                for retry in 1..=3 {
                    match &result {
                        Err(e) if is_transient(e) => {
                            tracing::warn!(error = %e, retry, "writing job finishes: transient error, retrying");
                            tokio::time::sleep(Duration::from_millis(10 * retry)).await;
                            result = complete_batch(&pool, &batch).await;
                        }
                        _ => break,
                    }
                }
                match result {
                    Ok(done) => {
                        status.finish_commits.fetch_add(1, Ordering::Relaxed);
                        for c in batch.drain(..) {
                            let _ = c.reply.send(Ok(done.contains(&c.id)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, jobs = batch.len(), "writing job finishes failed");
                        for c in batch.drain(..) {
                            let _ = c.reply.send(Err(sqlx::Error::Protocol(format!(
                                "writing job finishes failed: {e}"
                            ))));
                        }
                    }
                }
            }
        });
        (Completer { tx }, task)
    }

    /// Some(result) when the completer wrote this outcome; None when the caller must.
    pub(super) async fn finish(
        &self,
        id: JobId,
        attempt: i32,
        batched: bool,
        outcome: &JobOutcome,
    ) -> Option<Result<bool, sqlx::Error>> {
        // A batch job's failure may stop its batch: it is written on its own.
        if batched && matches!(outcome, JobOutcome::Failed { .. }) {
            return None;
        }
        let Final {
            state,
            phase,
            code,
            message,
        } = Final::of(outcome)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let c = Completion {
            id,
            attempt,
            batched,
            state,
            phase,
            code: code.map(str::to_owned),
            message: message.map(str::to_owned),
            reply,
        };
        if self.tx.send(c).await.is_err() {
            return None;
        }
        rx.await.ok()
    }
}

/// A serialization failure or deadlock: the server rolled the transaction back, and
/// running it again is the documented remedy.
fn is_transient(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01" || c == "40001")
}

/// One statement for many finishes; returns the ids that were still ours.
async fn complete_batch(pool: &PgPool, batch: &[Completion]) -> Result<Vec<JobId>, sqlx::Error> {
    let ids: Vec<JobId> = batch.iter().map(|c| c.id).collect();
    let attempts: Vec<i32> = batch.iter().map(|c| c.attempt).collect();
    let states: Vec<&str> = batch.iter().map(|c| c.state.as_str()).collect();
    let phases: Vec<&str> = batch.iter().map(|c| c.phase).collect();
    let codes: Vec<Option<&str>> = batch.iter().map(|c| c.code.as_deref()).collect();
    let messages: Vec<Option<&str>> = batch.iter().map(|c| c.message.as_deref()).collect();
    let mut conn = pool.acquire().await?;
    // Rows are locked in id order (`locked`), as the heartbeat and the rescuer lock
    // them, so two statements over the same jobs wait for each other, never deadlock.
    // The trigger's NOTIFY would hold a database-wide lock across this commit's WAL
    // flush and serialise every finishing worker; `quiet` (evaluated before any row is
    // updated, as the UPDATE's WHERE reads it) turns it off for this statement, and the
    // notifications are sent below, after the commit, where they cost no flush.
    let done: Vec<JobId> = sqlx::query_scalar(concat!(
        "WITH quiet AS (SELECT set_config('volsnap.quiet_notify', 'on', true) AS q), \
         input AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                   AS t(id, attempt, state, phase, code, message)), \
         locked AS MATERIALIZED (SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' \
                                 ORDER BY id FOR UPDATE), \
         fin AS (UPDATE jobs j SET state = i.state, phase = i.phase, error_code = i.code, \
                   error_message = i.message, finished_at = clock_timestamp(), recovering = false \
                 FROM input i JOIN locked l USING (id) \
                 WHERE j.id = i.id AND j.attempt = i.attempt AND j.state = 'running' \
                   AND (SELECT q FROM quiet) = 'on' \
                 RETURNING j.id, j.kind, j.state, j.started_at, j.finished_at)",
        crate::record_finished_cte!(),
        " SELECT id FROM fin"
    ))
    .bind(&ids)
    .bind(&attempts)
    .bind(&states)
    .bind(&phases)
    .bind(&codes)
    .bind(&messages)
    .fetch_all(&mut *conn)
    .await?;
    if !done.is_empty() {
        let payloads: Vec<String> = done.iter().map(|id| id.to_string()).collect();
        // A finished batch job frees a max_parallel slot: wake every node's workers.
        let wake_all = batch.iter().any(|c| c.batched && done.contains(&c.id));
        // The finishes are committed: a failure from here on is only a missed wake-up
        // (waiters re-check on their fallback timers), never a failed finish.
        if let Err(e) = sqlx::query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) p \
             UNION ALL SELECT pg_notify($3, '*') WHERE $4",
        )
        .bind(super::events::STATE_CHANNEL)
        .bind(&payloads)
        .bind(INSERT_CHANNEL)
        .bind(wake_all)
        .execute(&mut *conn)
        .await
        {
            tracing::warn!(error = %e, jobs = done.len(), "notifying job finishes failed; waiters fall back to polling");
        }
    }
    Ok(done)
}

/// Write the outcome, fenced on the attempt. Ok(false): the job is no longer ours.
pub(super) async fn apply_outcome(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    outcome: &JobOutcome,
    retry: &RetryPolicy,
) -> Result<bool, sqlx::Error> {
    let gave_up;
    let ends_with = match outcome {
        JobOutcome::Abandon => return Ok(false),
        JobOutcome::Retry { code, message } => {
            // Back to the queue, untouched, while retries are left. It changed nothing,
            // so the point of no return and recovery flags are reset too (a recovery
            // that found nothing changed ends here; a claim for recovery that could not
            // even start is handed back `recovering` by the executor instead).
            let n = sqlx::query(
                "UPDATE jobs SET state = 'queued', worker_id = NULL, recovering = false, \
                 past_point_of_no_return = false, retries = retries + 1, \
                 last_transient_error = $3, \
                 run_after = clock_timestamp() + make_interval(secs => \
                   least($4 * power(2, least(retries, 30)), $5)), \
                 phase = 'queued: retry ' || (retries + 1) || ' after a transient fault' \
                 WHERE id = $1 AND attempt = $2 AND state = 'running' AND retries < $6",
            )
            .bind(id)
            .bind(attempt)
            .bind(format!("{code}: {message}"))
            .bind(retry.backoff.as_secs_f64())
            .bind(retry.max_backoff.as_secs_f64())
            .bind(i32::try_from(retry.max_retries).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n == 1 {
                tracing::warn!(job_id = %id, %code, %message, "transient fault before any change: job queued again");
                return Ok(true);
            }
            // Retries used up (or the job is no longer ours: the fenced update below
            // then finds nothing either).
            gave_up = JobOutcome::Failed {
                code: code.clone(),
                message: format!(
                    "{message} (gave up after {} retries of transient faults)",
                    retry.max_retries
                ),
            };
            &gave_up
        }
        JobOutcome::Requeue | JobOutcome::RequeueForRecovery => {
            let recovering = *outcome == JobOutcome::RequeueForRecovery;
            let n = sqlx::query(
                "UPDATE jobs SET state = 'queued', worker_id = NULL, recovering = recovering OR $3, \
                 phase = CASE WHEN recovering OR $3 THEN 'awaiting recovery' ELSE 'queued' END \
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(attempt)
            .bind(recovering)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            return Ok(n == 1);
        }
        ends => ends,
    };
    let Final {
        state,
        phase,
        code,
        message,
    } = Final::of(ends_with).expect("every other outcome ends the job");
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let job = sqlx::query_as::<_, Job>(concat!(
        "UPDATE jobs SET state = $3, phase = $4, error_code = $5, error_message = $6, \
         finished_at = clock_timestamp(), recovering = false \
         WHERE id = $1 AND attempt = $2 AND state = 'running' RETURNING ",
        crate::job_columns!(),
        ""
    ))
    .bind(id)
    .bind(attempt)
    .bind(state)
    .bind(phase)
    .bind(code)
    .bind(message)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else {
        return Ok(false);
    };
    // The batch's cancellations are counted before this job's failure: counter rows
    // are taken in outcome order ('cancelled' < 'failed'), see `record_finished_cte!`.
    if job.state == JobState::Failed
        && let Some(batch_id) = job.batch_id
    {
        stop_batch_after_failures(&mut tx, batch_id).await?;
    }
    stats::record_finished(&mut tx, &job).await?;
    tx.commit().await?;
    Ok(true)
}

/// Cancel a batch's queued jobs once it has `stop_after_failures` failures. The batch
/// row lock serialises concurrent finishers so the threshold is never missed.
async fn stop_batch_after_failures(
    conn: &mut PgConnection,
    batch_id: crate::ids::BatchId,
) -> Result<(), sqlx::Error> {
    let limit: Option<Option<i32>> =
        sqlx::query_scalar("SELECT stop_after_failures FROM batches WHERE id = $1 FOR UPDATE")
            .bind(batch_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(Some(limit)) = limit else {
        return Ok(());
    };
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE batch_id = $1 AND state = 'failed'")
            .bind(batch_id)
            .fetch_one(&mut *conn)
            .await?;
    if failed < i64::from(limit) {
        return Ok(());
    }
    // Cancel and count them in one statement (the counter CTE takes any number of rows).
    let cancelled: i64 = sqlx::query_scalar(concat!(
        "WITH fin AS (UPDATE jobs SET state = 'cancelled', phase = 'cancelled', \
           finished_at = clock_timestamp(), \
           error_message = 'batch stopped after ' || $2 || ' failed jobs' \
           WHERE batch_id = $1 AND state = 'queued' \
           RETURNING kind, state, started_at, finished_at)",
        crate::record_finished_cte!(),
        " SELECT count(*) FROM fin"
    ))
    .bind(batch_id)
    .bind(limit)
    .fetch_one(&mut *conn)
    .await?;
    if cancelled > 0 {
        tracing::warn!(%batch_id, cancelled, failed, "batch stopped after failures");
    }
    Ok(())
}
