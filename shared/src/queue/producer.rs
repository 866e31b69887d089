//! The producer: the run loop of one agent. It claims jobs into free handler slots,
//! spawns each on the executor, and never busy-loops: it sleeps on LISTEN wake-ups for
//! its node, a slow poll, a finished job, or shutdown. On shutdown it drains.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim::{claim, release_unstarted};
use super::completer::Completer;
use super::config::WorkerConfig;
use super::events::{INSERT_CHANNEL, spawn_listener};
use super::executor::{TaskShared, run_one};
use super::heartbeat::{Running, heartbeat_loop};
use super::job::{JobContext, JobHandler};
use super::locks::Locks;
use super::maintenance::maintenance_loop;
use super::rescuer::rescue_orphans_on_node;
use crate::domain::Job;
use crate::ids::JobId;

/// Every job this process has claimed and not yet let go of (from the claim's answer
/// until its task ends), and how many claims are sent but not yet entered here. The
/// orphan check rescues this process's own running jobs only when no claim is pending
/// and the job is not in hand: its task ended without writing an outcome.
pub(super) type InHand = Arc<Mutex<InHandJobs>>;

#[derive(Default)]
pub(super) struct InHandJobs {
    pub(super) ids: std::collections::HashSet<JobId>,
    pub(super) pending_claims: usize,
}

impl InHandJobs {
    /// True when `id` may be one of ours still being worked on.
    pub(super) fn may_hold(&self, id: JobId) -> bool {
        self.pending_claims > 0 || self.ids.contains(&id)
    }
}

/// A claim in flight, with the slot permits it reserved.
/// Also yields the `wakes` count when it was sent (see the run loop).
type ClaimFuture =
    futures::future::BoxFuture<'static, (Result<Vec<Job>, sqlx::Error>, OwnedSemaphorePermit, u64)>;

/// Claims one worker has in flight at once. Two were tried: on two cores the extra,
/// smaller claims cost more CPU than the overlap saved.
const CLAIMS_IN_FLIGHT: usize = 1;

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
        let ctx = JobContext::new(job, pool.clone(), shutdown.clone(), cfg.retry);
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
