//! What a job handler sees: the [`JobHandler`] trait the runner calls, the
//! [`JobContext`] of a claimed job (its fenced updates), and the [`JobOutcome`] the
//! handler reports.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::{PgPool, Postgres};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::QueueError;
use super::config::RetryPolicy;
use crate::domain::Job;
use crate::ids::JobId;

/// How a job's run ended, as its handler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    /// `code` is a stable code (see [`crate::failure`]); `message` is client-safe.
    Failed {
        code: String,
        message: String,
    },
    /// Stopped on a cancel request, before its point of no return.
    Cancelled,
    /// Put back as plainly `queued` (e.g. graceful shutdown before any destructive step).
    Requeue,
    /// The job changed nothing and failed for a transient cause (database unreachable or
    /// restarting, lock connection gone, lease lost): put back as `queued` with a backoff
    /// and `retries + 1`, or — its retries used up — failed with this code and message.
    Retry {
        code: String,
        message: String,
    },
    /// Put back as `queued` + `recovering`: the next claimer runs recovery first.
    RequeueForRecovery,
    /// The job is no longer ours (lease lost); leave the row alone.
    Abandon,
}

impl JobOutcome {
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        JobOutcome::Failed {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub fn retry(code: &str, message: impl Into<String>) -> Self {
        JobOutcome::Retry {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// What the agent runs. `startup_recovery` runs once, before the first claim (by
/// default it has nothing to do).
pub trait JobHandler: Send + Sync + 'static {
    fn startup_recovery(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
    fn run(&self, ctx: JobContext) -> impl Future<Output = JobOutcome> + Send;
}

/// Why the point of no return was not entered.
#[derive(Debug, thiserror::Error)]
pub enum PointOfNoReturnError {
    #[error("the job was cancelled")]
    Cancelled,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A claimed job and the fenced operations its handler may perform on it.
pub struct JobContext {
    pub job: Job,
    pool: PgPool,
    /// Cancelled when the process is asked to stop: stop before the point of no return
    /// (return [`JobOutcome::Requeue`]) or carry on to a safe end.
    pub shutdown: CancellationToken,
    /// Cancelled when the heartbeat finds the job is no longer ours, or when the
    /// database has been unreachable for most of a lease.
    pub lease_lost: CancellationToken,
    last_progress: Mutex<Option<Instant>>,
    retry: RetryPolicy,
    /// Set once [`JobContext::enter_point_of_no_return`] succeeded in this run.
    past_point_of_no_return: std::sync::atomic::AtomicBool,
    /// The `job` span every log line of this run carries: job id, workload, kind,
    /// attempt and the current phase (recorded by [`JobContext::set_phase`]).
    pub(super) span: tracing::Span,
}

impl JobContext {
    /// The context of a job just claimed, with fresh tokens and its `job` span.
    pub(super) fn new(
        job: Job,
        pool: PgPool,
        shutdown: CancellationToken,
        retry: RetryPolicy,
    ) -> JobContext {
        JobContext {
            pool,
            shutdown,
            lease_lost: CancellationToken::new(),
            last_progress: Mutex::new(None),
            retry,
            past_point_of_no_return: Default::default(),
            span: tracing::info_span!(
                "job",
                job_id = %job.id,
                workload_id = %job.workload_id,
                kind = %job.kind,
                attempt = job.attempt,
                phase = job.phase.as_str(),
            ),
            job,
        }
    }

    /// Whether a [`JobOutcome::Retry`] now would put the job back on the queue (rather
    /// than end it: its retries are used up).
    pub fn retries_left(&self) -> bool {
        u32::try_from(self.job.retries).is_ok_and(|r| r < self.retry.max_retries)
    }

    /// Whether this run entered its point of no return (a retry is refused from then on).
    pub fn entered_point_of_no_return(&self) -> bool {
        self.past_point_of_no_return.load(Ordering::SeqCst)
    }

    pub fn id(&self) -> JobId {
        self.job.id
    }

    pub fn attempt(&self) -> i32 {
        self.job.attempt
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn fenced(
        &self,
        sql: &'static str,
        bind: impl FnOnce(FencedQuery) -> FencedQuery,
    ) -> Result<(), QueueError> {
        let q = sqlx::query(sql).bind(self.job.id).bind(self.job.attempt);
        let n = bind(q).execute(&self.pool).await?.rows_affected();
        if n == 0 {
            self.lease_lost.cancel();
            return Err(QueueError::LeaseLost(self.job.id));
        }
        Ok(())
    }

    /// Record the current step (shown to clients).
    pub async fn set_phase(&self, phase: &str) -> Result<(), QueueError> {
        self.span.record("phase", phase);
        self.fenced(
            "UPDATE jobs SET phase = $3 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            |q| q.bind(phase.to_owned()),
        )
        .await
    }

    /// Record byte progress. Throttled to a few writes a second unless complete.
    pub async fn set_progress(&self, done: u64, total: u64) -> Result<(), QueueError> {
        {
            let mut last = self.last_progress.lock().expect("progress mutex");
            let now = Instant::now();
            if done < total && last.is_some_and(|t| now - t < Duration::from_millis(250)) {
                return Ok(());
            }
            *last = Some(now);
        }
        self.fenced(
            "UPDATE jobs SET progress_done = $3, progress_total = $4 \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
            |q| q.bind(done as i64).bind(total as i64),
        )
        .await
    }

    /// Store what the job found (`jobs.result`), fenced like every other update. Written
    /// before the outcome, so a client that sees the job final sees its result.
    pub async fn set_result(&self, result: &serde_json::Value) -> Result<(), QueueError> {
        self.fenced(
            "UPDATE jobs SET result = $3 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            |q| q.bind(result.clone()),
        )
        .await
    }

    /// Atomically check that no cancel was requested and mark the job as past its
    /// point of no return; from here on a cancel request is refused.
    pub async fn enter_point_of_no_return(&self) -> Result<(), PointOfNoReturnError> {
        let row: Option<(bool,)> = sqlx::query_as(
            "UPDATE jobs SET past_point_of_no_return = true \
             WHERE id = $1 AND attempt = $2 AND state = 'running' AND NOT cancel_requested \
             RETURNING true",
        )
        .bind(self.job.id)
        .bind(self.job.attempt)
        .fetch_optional(&self.pool)
        .await
        .map_err(QueueError::from)?;
        if row.is_some() {
            self.past_point_of_no_return.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if self.cancel_requested().await? {
            return Err(PointOfNoReturnError::Cancelled);
        }
        self.lease_lost.cancel();
        Err(QueueError::LeaseLost(self.job.id).into())
    }

    /// Whether a client asked to cancel this (still ours) job.
    pub async fn cancel_requested(&self) -> Result<bool, QueueError> {
        let row: Option<bool> = sqlx::query_scalar(
            "SELECT cancel_requested FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'",
        )
        .bind(self.job.id)
        .bind(self.job.attempt)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(c) => Ok(c),
            None => {
                self.lease_lost.cancel();
                Err(QueueError::LeaseLost(self.job.id))
            }
        }
    }
}

type FencedQuery = sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>;
