//! The executor: one claimed job from its workload lock to its released lock — take
//! the lock, run the handler (its panic is a requeue for recovery), hand the outcome to
//! the completer, release the lock once the outcome is durable.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::OwnedSemaphorePermit;

use super::claim::release_unstarted;
use super::completer::{Completer, apply_outcome};
use super::config::{RetryPolicy, WorkerStatus};
use super::heartbeat::{Running, RunningJob};
use super::job::{JobContext, JobHandler, JobOutcome};
use super::locks::{Locks, workload_lock_key};

/// What every job task of one runner uses.
pub(super) struct TaskShared<H> {
    pub(super) pool: PgPool,
    pub(super) retry: RetryPolicy,
    pub(super) handler: Arc<H>,
    pub(super) running: Running,
    pub(super) completer: Completer,
    pub(super) locks: Locks,
    pub(super) status: Arc<WorkerStatus>,
}

/// Take the workload lock, run the handler, apply its outcome, release the lock.
pub(super) async fn run_one<H: JobHandler>(
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
                // orphan check, which would queue it for recovery. A job claimed for
                // recovery stays `recovering`: an earlier attempt may have changed the
                // node, so it must not come back as a fresh run (found by the
                // backend-kills chaos test: a restore swapped by one attempt was re-run
                // afresh by the next and failed with the data restored).
                tracing::warn!(job_id = %id, error = %e, "taking the workload lock failed; job queued again");
                let mut conn = pool.acquire().await?;
                let outcome = if ctx.job.recovering {
                    JobOutcome::RequeueForRecovery
                } else {
                    JobOutcome::retry(
                        &crate::failure::DATABASE_UNAVAILABLE.as_str(),
                        "the workload lock could not be taken (database connection lost)",
                    )
                };
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
