//! Crash recovery: bring every journaled job on this node to a consistent state.
//!
//! Runs at start-up (before the first claim) for every journal whose workload lock it
//! can take — a journal whose workload lock is held belongs to a live worker — and for
//! every claimed job that is `recovering` (the runner holds the lock then). Before the
//! commit point a restore is rolled back (old data in place, staging removed); after it
//! the restore is rolled forward (redeploy, archive the old data, delete it). Either way
//! the containers the journal names are started. The decision is written to the
//! journal as `finished` before the job row is finished, so every step is idempotent
//! and recovery itself may be killed at any point and run again.

use volsnap_shared::domain::{JobKind, SnapshotState};
use volsnap_shared::ids::JobId;
use volsnap_shared::queue;
use volsnap_shared::queue::JobContext;
use volsnap_shared::{db, failure};

use super::archive::partial_path;
use super::context::{Engine, blocking};
use super::error::{Failure, Stop};
use super::journal::{Journal, JournalState, Outcome, close_journal, write_journal};
use super::restore::{finish_forward, reopen_parents, roll_back};
use super::{capture, fsops};
use crate::crash_point;

/// Recover one journal. Returns the job's outcome; the journal is left `finished`.
#[tracing::instrument(skip_all, fields(job_id = %j.job_id, state = ?j.state))]
pub async fn recover_journal(
    eng: &Engine,
    ctx: Option<&JobContext>,
    j: &mut Journal,
) -> Result<Outcome, Failure> {
    crash_point!("recovery.begin");
    let outcome = match j.state.clone() {
        JournalState::Finished { outcome } => return Ok(outcome),
        JournalState::Staging | JournalState::Quiescing | JournalState::Swapping => {
            // Only staging written (next to the targets): nothing changed.
            let untouched = j.state == JournalState::Staging;
            tracing::warn!(
                untouched,
                "interrupted before the commit point: rolling back"
            );
            let parents = match reopen_parents(&j.volumes) {
                Ok(p) => p,
                // Nothing was exchanged before `swapping`: the live data is as it was.
                // A parent that is no longer where the config says keeps our partial
                // staging (logged); it is not followed to wherever it went.
                Err(f) if j.state != JournalState::Swapping => {
                    tracing::error!(error = %f, "a volume's parent moved before the swap; its staging directory is left where it is");
                    vec![]
                }
                Err(f) => return Err(f),
            };
            roll_back(eng, j, &parents).await?;
            if untouched {
                // Queued again while the job has retries left.
                Outcome::Untouched {
                    code: failure::INTERRUPTED.into(),
                    message: "the worker stopped while the restore was staging its data, \
                              before it changed anything"
                        .into(),
                }
            } else {
                Outcome::Failed {
                    code: failure::INTERRUPTED.into(),
                    message: "the worker stopped during the restore, before its commit point; every volume \
                              was rolled back to its previous data and the workload restarted (nothing changed)"
                        .into(),
                }
            }
        }
        JournalState::Committed
        | JournalState::Redeployed
        | JournalState::Archiving { .. }
        | JournalState::Archived { .. } => {
            tracing::warn!("interrupted after the commit point: rolling forward");
            let parents = reopen_parents(&j.volumes)?;
            finish_forward(eng, ctx, j, &parents, None).await?
        }
        JournalState::Capturing => capture::recover(eng, j).await?,
    };
    j.state = JournalState::Finished {
        outcome: outcome.clone(),
    };
    write_journal(&eng.journals, j).await?;
    crash_point!("recovery.finished");
    tracing::info!(?outcome, "recovered");
    Ok(outcome)
}

/// A claimed job that is `recovering` (or that has a journal here).
#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn recover_claimed(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    // A transient fault while recovery decides: recover again later (never a fresh
    // run: without a journal the job may also have finished and closed it).
    let again = |s: Stop| match s {
        Stop::Failed(f) if f.transient => Stop::NeedsRecovery(f),
        other => other,
    };
    ctx.set_phase("recovering")
        .await
        .map_err(|e| again(e.into()))?;
    let journal = eng
        .journals
        .read(ctx.id())
        .map_err(|e| Failure::io("reading the journal", e))?;
    let Some(mut j) = journal else {
        return without_journal(eng, ctx).await.map_err(|f| again(f.into()));
    };
    match recover_journal(eng, Some(ctx), &mut j).await {
        Ok(outcome) => {
            close_journal(&eng.journals, ctx.id()).await?;
            Ok(outcome)
        }
        Err(_) if ctx.lease_lost.is_cancelled() => Err(Stop::LeaseLost),
        // The database went away mid-recovery: recovery is idempotent, run it again
        // (the journal stays) rather than end a job that may well have succeeded.
        Err(f) if f.transient => Err(Stop::NeedsRecovery(f)),
        Err(f) => {
            // Keep the journal: start-up recovery retries it, and new restores of this
            // workload are refused until it succeeds.
            tracing::error!(error = %f, "recovery failed; the journal is kept for the next start");
            Ok(Outcome::Failed {
                code: f.code.into(),
                message: format!(
                    "recovery of this job failed and needs attention on node {}: {}",
                    eng.cfg.node, f.message
                ),
            })
        }
    }
}

/// No journal: either nothing was touched yet (the journal is written before the
/// first change) or the job had finished and closed it just before the crash.
async fn without_journal(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Failure> {
    // Nothing changed: the job is queued again while it has retries left.
    let interrupted = |what: &str| {
        let (code, message) = (
            failure::INTERRUPTED.to_string(),
            format!("the worker stopped during the {what} before it changed anything"),
        );
        if ctx.retries_left() {
            Outcome::Untouched { code, message }
        } else {
            Outcome::Failed {
                code,
                message: format!("{message} (enqueue it again)"),
            }
        }
    };
    match ctx.job.kind {
        JobKind::Restore | JobKind::Undo => {
            // The keep record is written (durably) before the journal is closed.
            let kept = eng.kept.clone();
            let id = ctx.id();
            let has_record = blocking(move || {
                kept.read(id)
                    .map(|r| r.is_some())
                    .map_err(|e| Failure::io("reading the keep record", e))
            })
            .await?;
            if has_record {
                return Ok(Outcome::Succeeded);
            }
            // Before issue 11 the pre-restore snapshot was archived inline.
            if let Some(sid) = ctx.job.pre_restore_snapshot_id
                && db::snapshots::state(&eng.pool, sid).await? == Some(SnapshotState::Ready)
            {
                return Ok(Outcome::Succeeded);
            }
            Ok(interrupted(if ctx.job.kind == JobKind::Undo {
                "undo"
            } else {
                "restore"
            }))
        }
        // Plans never journal; one claimed as recovering is run again (mod.rs).
        JobKind::Plan => Ok(interrupted("plan")),
        // Never recovered here (the engine runs it again), but total all the same.
        JobKind::PreRestoreArchive => Ok(interrupted("archive")),
        JobKind::Capture => {
            let Some(sid) = ctx.job.snapshot_id else {
                return Ok(interrupted("capture"));
            };
            if db::snapshots::state(&eng.pool, sid).await? == Some(SnapshotState::Ready) {
                return Ok(Outcome::Succeeded);
            }
            let dest = eng.snapshot_file(&db::snapshots::archive_path(ctx.job.workload_id, sid))?;
            blocking(move || {
                fsops::remove_file(&partial_path(&dest)).map_err(|e| Failure::io("cleanup", e))?;
                fsops::remove_file(&dest).map_err(|e| Failure::io("cleanup", e))
            })
            .await?;
            // A retry needs the snapshot row still `capturing`.
            if !ctx.retries_left() {
                db::snapshots::mark_failed(&eng.pool, sid).await?;
            }
            Ok(interrupted("capture"))
        }
    }
}

/// At start-up, before claiming: recover every journal on this node whose workload is
/// not locked by a live worker. Jobs still open in the database keep their `finished`
/// journal until their recovering claim reports the outcome.
pub async fn startup_sweep(eng: &Engine) -> anyhow::Result<()> {
    eng.journals.remove_stale_temp_files()?;
    let ids = eng.journals.list()?;
    if !ids.is_empty() {
        tracing::warn!(
            count = ids.len(),
            "journals found: recovering before claiming work"
        );
    }
    for id in ids {
        if let Err(e) = recover_at_startup(eng, id).await {
            tracing::error!(job_id = %id, error = %e, "start-up recovery of a journal failed; it is kept");
        }
    }
    Ok(())
}

async fn recover_at_startup(eng: &Engine, id: JobId) -> anyhow::Result<()> {
    let Some(mut j) = eng.journals.read(id)? else {
        return Ok(());
    };
    let Some(_node_lock) = super::nodelock::try_lock(&eng.cfg.state_dir, j.workload_id)? else {
        tracing::info!(job_id = %id, "workload busy in another process on this node; leaving its journal alone");
        return Ok(());
    };
    let Some(lock) = queue::try_workload_lock(&eng.pool, j.workload_id).await? else {
        tracing::info!(job_id = %id, "workload locked by a live worker; leaving its journal alone");
        return Ok(());
    };
    let res = async {
        let outcome = recover_journal(eng, None, &mut j).await?;
        let state = db::jobs::state(&eng.pool, id).await?;
        if state.is_none_or(|s| s.is_final()) {
            close_journal(&eng.journals, id).await?;
        }
        Ok::<_, Failure>(outcome)
    }
    .await;
    // An unlock that fails closes the lock's connection, which releases it.
    let _ = lock.unlock().await;
    let outcome = res?;
    tracing::info!(job_id = %id, ?outcome, kind = ?j.kind, "journal recovered at start-up");
    Ok(())
}
