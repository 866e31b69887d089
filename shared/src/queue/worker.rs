//! The worker side of the queue: claim, lock, heartbeat, run, finish.
//!
//! [`run`] is the agent loop used by `volsnap-worker run` (and by tests with their own
//! [`JobHandler`]). It never busy-loops: it sleeps on LISTEN wake-ups for its node,
//! a slow poll, a finished job, or shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{INSERT_CHANNEL, spawn_listener};
use super::locks::Locks;
use super::{ADVISORY_LOCK_CLASS, QueueError, stats, workload_lock_key};
use crate::domain::{Job, JobState};
use crate::ids::{JobId, SnapshotId};

/// How a worker behaves. Defaults suit production; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub node: String,
    /// Unique per process; recorded on the jobs it runs.
    pub worker_id: String,
    /// Handlers run at once by this process. A job holds its slot from claim until its
    /// handler returns; writing its outcome and releasing its workload lock follow
    /// without the slot, so the next claim is not held up by those commits (at most
    /// `concurrency` more jobs can be in that tail at once).
    pub concurrency: usize,
    /// How often running jobs' heartbeats are written.
    pub heartbeat_interval: Duration,
    /// A running job whose heartbeat is older than this is rescued (queued + recovering).
    pub lease: Duration,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How long a graceful stop waits for running jobs.
    pub shutdown_grace: Duration,
    /// Finished jobs older than this are deleted (None: never).
    pub prune_after: Option<Duration>,
    /// A job that changed nothing and failed for a transient cause is put back on the
    /// queue at most this many times (see [`JobOutcome::Retry`]).
    pub retry: RetryPolicy,
    /// What the runner reports about itself (for the worker's own metrics endpoint).
    pub status: Arc<WorkerStatus>,
}

/// Live facts about a running agent, updated by the runner.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Unix time (ms) of the last heartbeat the database accepted; 0 before the first.
    pub last_heartbeat_ms: std::sync::atomic::AtomicU64,
    /// Jobs running in this process now.
    pub running_jobs: std::sync::atomic::AtomicUsize,
    /// Jobs this process finished (any outcome) since it started.
    pub jobs_done: std::sync::atomic::AtomicU64,
    /// Claim statements that took at least one job (each is one durable commit).
    pub claim_commits: std::sync::atomic::AtomicU64,
    /// Batched finish statements the completer committed (each is one durable commit).
    pub finish_commits: std::sync::atomic::AtomicU64,
    /// Jobs whose lease the heartbeat gave up: the row was no longer theirs, or the
    /// database could not be reached for most of a lease.
    pub leases_lost: std::sync::atomic::AtomicU64,
}

impl WorkerConfig {
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        let worker_id = format!(
            "{node}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        WorkerConfig {
            node,
            worker_id,
            concurrency: 2,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(600),
            prune_after: Some(Duration::from_secs(30 * 24 * 3600)),
            retry: RetryPolicy::default(),
            status: Arc::default(),
        }
    }
}

/// How a job that changed nothing and failed for a transient cause is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Put back at most this many times; the next such failure ends the job.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one, at most `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The pool a worker with `concurrency` slots should have: the lock holder keeps one
/// connection; claims, heartbeats, the completer, each running handler's own queries
/// and the outcome writes of up to `concurrency` jobs past their handler share the rest.
pub fn min_pool_size(concurrency: usize) -> u32 {
    concurrency as u32 * 2 + 4
}

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
    span: tracing::Span,
}

impl JobContext {
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

    pub async fn set_pre_restore_snapshot(&self, sid: SnapshotId) -> Result<(), QueueError> {
        self.fenced(
            "UPDATE jobs SET pre_restore_snapshot_id = $3 \
             WHERE id = $1 AND attempt = $2 AND state = 'running'",
            |q| q.bind(sid),
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

/// Jobs this process runs, for the heartbeat: id → (attempt, lease-lost token).
/// The jobs this process holds, for the heartbeat.
type Running = Arc<Mutex<HashMap<JobId, RunningJob>>>;

/// Every job this process has claimed and not yet let go of (from the claim's answer
/// until its task ends), and how many claims are sent but not yet entered here. The
/// orphan check rescues this process's own running jobs only when no claim is pending
/// and the job is not in hand: its task ended without writing an outcome.
type InHand = Arc<Mutex<InHandJobs>>;

#[derive(Default)]
struct InHandJobs {
    ids: std::collections::HashSet<JobId>,
    pending_claims: usize,
}

impl InHandJobs {
    /// True when `id` may be one of ours still being worked on.
    fn may_hold(&self, id: JobId) -> bool {
        self.pending_claims > 0 || self.ids.contains(&id)
    }
}

struct RunningJob {
    attempt: i32,
    lease_lost: CancellationToken,
    /// The handler returned and its outcome is being written: the row may already be
    /// final, which the heartbeat must not mistake for a lost lease.
    finishing: bool,
}

/// What every job task of one runner uses.
struct TaskShared<H> {
    pool: PgPool,
    retry: RetryPolicy,
    handler: Arc<H>,
    running: Running,
    completer: Completer,
    locks: Locks,
    status: Arc<WorkerStatus>,
}

/// A claim in flight, with the slot permits it reserved.
/// Also yields the `wakes` count when it was sent (see the run loop).
type ClaimFuture =
    futures::future::BoxFuture<'static, (Result<Vec<Job>, sqlx::Error>, OwnedSemaphorePermit, u64)>;

/// Claims one worker has in flight at once. Two were tried: on two cores the extra,
/// smaller claims cost more CPU than the overlap saved.
const CLAIMS_IN_FLIGHT: usize = 1;

/// Return jobs this worker claimed but never started (a claim answered after the stop
/// began, or a workload lock held elsewhere) to the queue as they were.
async fn release_unstarted(pool: &PgPool, jobs: &[Job]) -> Result<(), sqlx::Error> {
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

/// Run the agent until `shutdown` is cancelled, then drain gracefully.
pub async fn run<H: JobHandler>(
    pool: PgPool,
    cfg: WorkerConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    register_worker(&pool, &cfg)
        .await
        .context("registering the worker")?;
    tracing::info!(node = %cfg.node, worker = %cfg.worker_id, "worker starting: recovery sweep first");
    handler
        .startup_recovery()
        .await
        .context("start-up recovery sweep")?;
    let rescued = rescue_orphans_on_node(&pool, &cfg, None)
        .await
        .context("rescuing orphaned jobs")?;
    if rescued > 0 {
        tracing::warn!(
            rescued,
            "jobs of a dead predecessor on this node were queued for recovery"
        );
    }

    let bg_stop = CancellationToken::new();
    let mut wake = spawn_listener(&pool, &[INSERT_CHANNEL], bg_stop.clone())
        .await
        .context("LISTEN for new jobs")?
        .subscribe();
    let running: Running = Arc::default();
    let in_hand: InHand = Arc::default();
    let (completer, completer_task) = Completer::start(pool.clone(), cfg.status.clone());
    let (locks, locks_task) = Locks::start(pool.clone());
    let hb = tokio::spawn(heartbeat_loop(
        pool.clone(),
        cfg.clone(),
        running.clone(),
        bg_stop.clone(),
    ));
    let maint = tokio::spawn(maintenance_loop(
        pool.clone(),
        cfg.clone(),
        in_hand.clone(),
        bg_stop.clone(),
    ));

    // Each task yields Some(job id) when the workload lock was held elsewhere.
    let mut tasks: JoinSet<Option<JobId>> = JoinSet::new();
    // One permit per handler slot: taken before a claim is sent (as many as it may
    // return) and held by each job until its handler returns. Jobs still writing their
    // outcome hold none, but count against `tail_cap`, which bounds the jobs in hand.
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let tail_cap = cfg.concurrency * 2;
    // Claims in flight (each with the permits it reserved): sent as soon as slots are
    // free, even while another claim's commit is still being flushed.
    let mut claims: FuturesUnordered<ClaimFuture> = FuturesUnordered::new();
    let mut reserved = 0usize;
    // A claim came back short: the queue has nothing more for us until a notification,
    // a finished job (batch room) or the poll says otherwise. `wakes` counts those
    // events, so a claim that was already in flight when one came cannot hide it.
    let mut drained = false;
    let mut wakes: u64 = 0;
    let mut claim_paused_until: Option<Instant> = None;
    let mut last_claim_error: Option<Instant> = None;
    let mut listening = true;
    let mut poll_at = Instant::now() + cfg.poll_interval;
    // Jobs whose workload lock was held by someone else (a stalled predecessor): their
    // ids are skipped by claims for a poll interval, so we do not spin on them.
    let mut lock_busy: HashMap<JobId, Instant> = HashMap::new();
    let note_busy = |r: Result<Option<JobId>, tokio::task::JoinError>,
                     busy: &mut HashMap<JobId, Instant>| {
        if let Ok(Some(id)) = r {
            busy.insert(id, Instant::now() + cfg.poll_interval);
        }
    };
    let task_shared = Arc::new(TaskShared {
        pool: pool.clone(),
        retry: cfg.retry,
        handler: handler.clone(),
        running: running.clone(),
        completer: completer.clone(),
        locks: locks.clone(),
        status: cfg.status.clone(),
    });
    let spawn_job = |tasks: &mut JoinSet<Option<JobId>>, job: Job, slot: OwnedSemaphorePermit| {
        let ctx = JobContext {
            pool: pool.clone(),
            shutdown: shutdown.clone(),
            lease_lost: CancellationToken::new(),
            last_progress: Mutex::new(None),
            retry: cfg.retry,
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
        };
        let shared = task_shared.clone();
        let id = ctx.job.id;
        let in_hand = in_hand.clone();
        tasks.spawn(async move {
            let r = match run_one(shared, slot, ctx).await {
                Ok(busy) => busy.then_some(id),
                Err(e) => {
                    tracing::error!(job_id = %id, error = ?e, "running a job failed at the queue level");
                    None
                }
            };
            in_hand.lock().expect("in-hand set").ids.remove(&id);
            r
        });
    };

    while !shutdown.is_cancelled() {
        while let Some(r) = tasks.try_join_next() {
            note_busy(r, &mut lock_busy);
            (drained, wakes) = (false, wakes + 1);
        }
        let now = Instant::now();
        lock_busy.retain(|_, until| *until > now);
        if claim_paused_until.is_some_and(|t| t <= now) {
            claim_paused_until = None;
        }
        if !drained && claim_paused_until.is_none() && claims.len() < CLAIMS_IN_FLIGHT {
            let room = tail_cap.saturating_sub(tasks.len() + reserved);
            let want = slots.available_permits().min(room);
            if want > 0 {
                let permits = slots
                    .clone()
                    .try_acquire_many_owned(want as u32)
                    .expect("only this loop takes slots, and it counted them");
                reserved += want;
                let (pool, cfg) = (pool.clone(), cfg.clone());
                let excluded: Vec<JobId> = lock_busy.keys().copied().collect();
                let sent_at = wakes;
                in_hand.lock().expect("in-hand set").pending_claims += 1;
                claims.push(Box::pin(async move {
                    (claim(&pool, &cfg, want, &excluded).await, permits, sent_at)
                }));
                continue;
            }
        }
        // Sleep until something may have changed.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(poll_at) => {
                poll_at = Instant::now() + cfg.poll_interval;
                (drained, wakes) = (false, wakes + 1);
            }
            Some((result, mut permits, sent_at)) = claims.next(), if !claims.is_empty() => {
                let asked = permits.num_permits();
                reserved -= asked;
                // Entered in hand (below) under the same lock that ends "pending".
                let mut hand = in_hand.lock().expect("in-hand set");
                hand.pending_claims -= 1;
                if let Ok(jobs) = &result {
                    hand.ids.extend(jobs.iter().map(|j| j.id));
                }
                drop(hand);
                match result {
                    Ok(jobs) => {
                        drained = jobs.len() < asked && wakes == sent_at;
                        if !jobs.is_empty() {
                            cfg.status.claim_commits.fetch_add(1, Ordering::Relaxed);
                        }
                        for job in jobs {
                            let slot = permits.split(1).expect("a permit was reserved per job");
                            spawn_job(&mut tasks, job, slot);
                        }
                    }
                    Err(e) => {
                        if last_claim_error.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            tracing::error!(error = %e, "claiming jobs failed; will retry");
                        }
                        last_claim_error = Some(Instant::now());
                        claim_paused_until = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                drop(permits);
            }
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                note_busy(r, &mut lock_busy);
                (drained, wakes) = (false, wakes + 1);
            }
            // A handler gave its slot back (only worth waking for when every slot was
            // taken and there is work to claim; otherwise a join or a claim wakes us).
            Ok(_) = slots.acquire(), if slots.available_permits() == 0 && !drained => {}
            _ = tokio::time::sleep_until(claim_paused_until.unwrap_or(poll_at)), if claim_paused_until.is_some() => {}
            n = wake.recv(), if listening => match n {
                Ok((_, payload)) if payload == cfg.node || payload == "*" => {
                    (drained, wakes) = (false, wakes + 1);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => (drained, wakes) = (false, wakes + 1),
                Err(broadcast::error::RecvError::Closed) => listening = false,
            },
        }
    }

    // Claims still in flight may have taken jobs: hand them back untouched. With the
    // database unreachable a claim would wait out the pool's acquire timeout; give up
    // on it after a moment (a claim that did commit is rescued as an orphan later).
    let handed_back = tokio::time::timeout(STOP_STEP, async {
        while let Some((result, _permits, _)) = claims.next().await {
            if let Ok(jobs) = result
                && !jobs.is_empty()
                && let Err(e) = release_unstarted(&pool, &jobs).await
            {
                tracing::warn!(error = %e, jobs = jobs.len(), "handing back jobs claimed during shutdown failed; the rescuer will return them");
            }
        }
    })
    .await;
    if handed_back.is_err() {
        tracing::warn!("a claim in flight did not answer; any job it took is rescued as an orphan");
    }
    tracing::info!(
        running = tasks.len(),
        "stopping: no new claims; waiting for running jobs"
    );
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown grace passed with jobs still running; they will be recovered");
        tasks.abort_all();
    }
    bg_stop.cancel();
    // The completer and lock tasks end when their last sender is gone; the heartbeat
    // and maintenance tasks on `bg_stop`, even while they wait for a connection. Each
    // gets a moment, then is dropped: nothing they do is needed for a safe stop.
    drop(task_shared);
    drop(completer);
    drop(locks);
    for (name, task) in [
        ("completer", completer_task),
        ("workload locks", locks_task),
        ("heartbeat", hb),
        ("maintenance", maint),
    ] {
        let abort = task.abort_handle();
        if tokio::time::timeout(STOP_STEP, task).await.is_err() {
            tracing::warn!(task = name, "background task did not stop in time; dropped");
            abort.abort();
        }
    }
    let stopped = tokio::time::timeout(
        STOP_STEP,
        sqlx::query("UPDATE workers SET stopped_at = now() WHERE id = $1")
            .bind(&cfg.worker_id)
            .execute(&pool),
    )
    .await;
    if !matches!(stopped, Ok(Ok(_))) {
        tracing::warn!(
            "could not record the stop (database unreachable); the worker row will look stale"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// How long each step of a stop after the drain may take (hand-back of claims in
/// flight, each background task, the final `workers` update): an idle worker stops
/// within about 2 s even when the database cannot be reached.
const STOP_STEP: Duration = Duration::from_millis(400);

/// Run `op` unless `stop` is cancelled first (a background task waiting for a pool
/// connection must not hold up a stop by the pool's acquire timeout).
async fn unless_stopped<T>(stop: &CancellationToken, op: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = op => Some(r),
    }
}

async fn register_worker(pool: &PgPool, cfg: &WorkerConfig) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (id, node) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET node = $2, started_at = now(), heartbeat_at = now(), stopped_at = NULL",
    )
    .bind(&cfg.worker_id)
    .bind(&cfg.node)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claim up to `limit` queued jobs of this node: first jobs outside rate-limited
/// batches (one statement), then jobs of batches with `max_parallel`, under the
/// batch row's lock so concurrent claimers cannot exceed the limit.
async fn claim(
    pool: &PgPool,
    cfg: &WorkerConfig,
    limit: usize,
    excluded: &[JobId],
) -> Result<Vec<Job>, sqlx::Error> {
    let sql = concat!(
        "WITH next AS ( \
           SELECT j.id AS next_id FROM jobs j \
           WHERE j.state = 'queued' AND j.node = $1 AND NOT (j.id = ANY($3)) \
             AND (j.run_after IS NULL OR j.run_after <= clock_timestamp()) \
             AND (j.batch_id IS NULL OR NOT EXISTS (SELECT 1 FROM batches b \
                  WHERE b.id = j.batch_id AND b.max_parallel IS NOT NULL)) \
           ORDER BY j.created_at, j.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $4, \
           started_at = coalesce(started_at, clock_timestamp()), heartbeat_at = clock_timestamp(), \
           phase = CASE WHEN recovering THEN 'recovering' ELSE 'starting' END \
         FROM next WHERE jobs.id = next.next_id RETURNING ",
        crate::job_columns!(),
        ""
    );
    let mut jobs = sqlx::query_as::<_, Job>(sql)
        .bind(&cfg.node)
        .bind(limit as i64)
        .bind(excluded)
        .bind(&cfg.worker_id)
        .fetch_all(pool)
        .await?;
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
    let batch: Option<(crate::ids::BatchId, i32)> = sqlx::query_as(
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
    let sql = concat!(
        "WITH next AS ( \
           SELECT j.id AS next_id FROM jobs j \
           WHERE j.state = 'queued' AND j.node = $1 AND j.batch_id = $2 AND NOT (j.id = ANY($4)) \
             AND (j.run_after IS NULL OR j.run_after <= clock_timestamp()) \
           ORDER BY j.created_at, j.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $5, \
           started_at = coalesce(started_at, clock_timestamp()), heartbeat_at = clock_timestamp(), \
           phase = CASE WHEN recovering THEN 'recovering' ELSE 'starting' END \
         FROM next WHERE jobs.id = next.next_id RETURNING ",
        crate::job_columns!(),
        ""
    );
    let jobs = sqlx::query_as::<_, Job>(sql)
        .bind(&cfg.node)
        .bind(batch_id)
        .bind(room)
        .bind(excluded)
        .bind(&cfg.worker_id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(jobs)
}

/// Take the workload lock, run the handler, apply its outcome, release the lock.
async fn run_one<H: JobHandler>(
    shared: Arc<TaskShared<H>>,
    slot: OwnedSemaphorePermit,
    ctx: JobContext,
) -> Result<bool, sqlx::Error> {
    let TaskShared {
        pool,
        retry,
        handler,
        running,
        completer,
        locks,
        status,
    } = &*shared;
    let (id, attempt, batched) = (ctx.job.id, ctx.job.attempt, ctx.job.batch_id.is_some());
    let key = workload_lock_key(ctx.job.workload_id);
    // A plan or pre-restore archive changes no live data: it takes no workload lock, so
    // it neither waits for nor holds up the workload's capture, restore or undo (its
    // liveness is its heartbeat, see `rescue_orphans_on_node`).
    let takes_lock = ctx.job.kind.changes_workload();
    let locked = if !takes_lock {
        true
    } else {
        match locks.try_lock(key, ctx.lease_lost.clone()).await {
            Ok(l) => l,
            Err(e) => {
                // Nothing ran: put the job back (with a backoff) rather than leave it to the
                // orphan check, which would queue it for recovery.
                tracing::warn!(job_id = %id, error = %e, "taking the workload lock failed; job queued again");
                let mut conn = pool.acquire().await?;
                let outcome = JobOutcome::retry(
                    &crate::failure::DATABASE_UNAVAILABLE.as_str(),
                    "the workload lock could not be taken (database connection lost)",
                );
                apply_outcome(&mut conn, id, attempt, &outcome, retry).await?;
                return Ok(false);
            }
        }
    };
    if !locked {
        // Someone (a stalled predecessor still connected) holds the workload: hand the
        // job back untouched and let the rescuer sort the predecessor out.
        tracing::warn!(job_id = %id, "workload lock is held elsewhere; job returned to the queue");
        release_unstarted(pool, std::slice::from_ref(&ctx.job)).await?;
        return Ok(true);
    }
    running.lock().expect("running map").insert(
        id,
        RunningJob {
            attempt,
            lease_lost: ctx.lease_lost.clone(),
            finishing: false,
        },
    );
    status
        .running_jobs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span = ctx.span.clone();
    let outcome = {
        use tracing::Instrument as _;
        AssertUnwindSafe(handler.run(ctx))
            .catch_unwind()
            .instrument(span)
            .await
    };
    let outcome = outcome.unwrap_or_else(|_| {
        tracing::error!(job_id = %id, "job handler panicked; the job is queued for recovery");
        JobOutcome::RequeueForRecovery
    });
    // The handler is done with its resources: the next job may start while this one's
    // outcome is written (the workload lock is still held until that is durable).
    if let Some(r) = running.lock().expect("running map").get_mut(&id) {
        r.finishing = true;
    }
    drop(slot);
    // Plain finishes go through the completer (many jobs, one commit); the rest — and
    // a batch job's failure, which may stop its batch — are written here. Either way
    // before the workload lock is released.
    let applied = match completer.finish(id, attempt, batched, &outcome).await {
        Some(r) => r,
        None => match pool.acquire().await {
            Ok(mut conn) => apply_outcome(&mut conn, id, attempt, &outcome, retry).await,
            Err(e) => Err(e),
        },
    };
    running.lock().expect("running map").remove(&id);
    status
        .running_jobs
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    status
        .jobs_done
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if takes_lock && let Err(e) = locks.unlock(key).await {
        // The lock connection broke: the lock is gone with it (and its jobs were told).
        tracing::warn!(job_id = %id, error = %e, "releasing the workload lock failed");
    }
    if !applied? && outcome != JobOutcome::Abandon {
        tracing::warn!(job_id = %id, ?outcome, "job outcome not recorded: lease was lost");
    }
    Ok(false)
}

/// Writes plain job finishes in batches: every finish waiting while the previous
/// batch commits goes into the next single statement, so the durable commit (one WAL
/// flush) is shared by many jobs. Each caller gets its own fenced result.
#[derive(Clone)]
struct Completer {
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
    fn start(pool: PgPool, status: Arc<WorkerStatus>) -> (Completer, tokio::task::JoinHandle<()>) {
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
    async fn finish(
        &self,
        id: JobId,
        attempt: i32,
        batched: bool,
        outcome: &JobOutcome,
    ) -> Option<Result<bool, sqlx::Error>> {
        let (state, phase, code, message) = match outcome {
            JobOutcome::Succeeded => (JobState::Succeeded, "done", None, None),
            JobOutcome::Cancelled => (
                JobState::Cancelled,
                "cancelled",
                None,
                Some("cancelled on request".to_owned()),
            ),
            JobOutcome::Failed { code, message } if !batched => (
                JobState::Failed,
                "failed",
                Some(code.clone()),
                Some(message.clone()),
            ),
            _ => return None,
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let c = Completion {
            id,
            attempt,
            batched,
            state,
            phase,
            code,
            message,
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
async fn apply_outcome(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    outcome: &JobOutcome,
    retry: &RetryPolicy,
) -> Result<bool, sqlx::Error> {
    let gave_up;
    let (state, phase, code, message) = match outcome {
        JobOutcome::Abandon => return Ok(false),
        JobOutcome::Retry { code, message } => {
            // Back to the queue, untouched, while retries are left. It changed nothing,
            // so the point of no return and recovery flags are reset too.
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
            gave_up = format!(
                "{message} (gave up after {} retries of transient faults)",
                retry.max_retries
            );
            (
                JobState::Failed,
                "failed",
                Some(code.as_str()),
                Some(gave_up.as_str()),
            )
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
    };
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

async fn heartbeat_loop(
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

async fn maintenance_loop(
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
            match unless_stopped(&stop, super::rescue_expired(&pool, cfg.lease)).await {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "rescue pass failed"),
                Some(Ok(_)) => {}
            }
        }
        if let Some(age) = cfg.prune_after
            && last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            last_prune = Some(Instant::now());
            match unless_stopped(&stop, super::prune_finished(&pool, age)).await {
                None => return,
                Some(Ok(n)) if n > 0 => tracing::info!(pruned = n, "pruned old finished jobs"),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
    }
}

/// Running jobs of this node whose owner is gone are queued for recovery at once
/// (at start-up and on every heartbeat tick) instead of waiting out their lease. An
/// owner that is alive holds the workload's advisory lock for the whole run, so a lock
/// we can take means a dead owner. Between its claim and its lock a live owner holds
/// nothing, so more is required: the job's heartbeat must be stale, and either its
/// owner is another process whose own heartbeat (the `workers` row) is stale too, or
/// it is this process and the job is no longer in hand (its task ended without writing
/// an outcome: a lost lock connection, a failed outcome write). `in_hand` is None at
/// start-up, before this process holds anything.
async fn rescue_orphans_on_node(
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
        if lock_free {
            // A plan or pre-restore archive holds no workload lock: its owner is judged
            // by the heartbeats alone (the query above). It changes no live data and is
            // idempotent, so it is simply queued
            // again; the claim bumps the attempt, which fences a stale owner's writes.
            if ours && in_hand.is_none_or(|h| h.lock().expect("in-hand set").may_hold(id)) {
                continue;
            }
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
        let mut conn = pool.acquire().await?;
        // The lock is a session lock on a pooled connection: if anything below fails,
        // the connection is closed rather than returned to the pool still holding it.
        conn.close_on_drop();
        let key = workload_lock_key(workload);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            continue;
        }
        // Our own job: with its lock in our hand, make sure no claim of ours is about to
        // start it (the query above saw the in-hand set before taking the lock).
        if ours && in_hand.is_none_or(|h| h.lock().expect("in-hand set").may_hold(id)) {
            let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
                .bind(ADVISORY_LOCK_CLASS)
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
            continue;
        }
        let n = sqlx::query(
            "UPDATE jobs SET state = 'queued', recovering = true, worker_id = NULL, \
             phase = 'awaiting recovery' WHERE id = $1 AND attempt = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        rescued += n as usize;
        let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
    }
    Ok(rescued)
}

#[cfg(test)]
mod tests {
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
