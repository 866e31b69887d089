//! The `pre_restore_archive` job (issue 11): archive a kept pre-restore copy (the side
//! directories a restore or undo left, see [`super::keep`]) as the `pre-restore`
//! snapshot its keep record names, off the restore's critical path.
//!
//! Steps, each idempotent (a crashed run is simply claimed and run again — it only
//! reads the kept directories and writes a new file through a `.partial` name):
//! the snapshot row (`capturing`, normally inserted with the job) → the archive, read
//! through the held parent fds from the very directories the record names (checked by
//! identity) → `ready` → the keeping job's `pre_restore_snapshot_id` linked → the keep
//! record marked archived. Any failure is retried by the queue (backoff, at most
//! `--max-transient-retries` times); after the last one the snapshot is marked
//! `failed`, the job fails (counted in `volsnap_jobs_finished_total{kind=
//! "pre_restore_archive",outcome="failed"}`, alerted on), and the kept copy stays.
//! A cancel stops the writing; the copy is then removed after its retention without
//! an archive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use volsnap_shared::domain::{SnapshotKind, SnapshotState};
use volsnap_shared::queue::JobContext;
use volsnap_shared::{db, failure};

use super::archive::{partial_path, write_archive_durably_until};
use super::context::{Engine, LockWait, Progress, blocking, wait_for_node_lock};
use super::error::{Failure, Stop};
use super::journal::Outcome;
use super::keep::{self, KeepRecord};
use super::restore::{held, reopen_parents};
use super::{archive, fsops, nodelock};
use crate::crash_point;

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    let _ = ctx.set_phase("archiving pre-restore copy").await;
    let kept = eng.kept.clone();
    let me = ctx.id();
    let rec = blocking(move || {
        kept.by_archive_job(me)
            .map_err(|e| Failure::io("reading the keep records", e))
    })
    .await
    .map_err(Stop::Retry)?;
    // The copy's own lock, not the workload's: an undo that swaps this copy back in
    // (and cancels this job first) or the maintenance sweep may hold it a moment.
    let (rec, _copy_lock) = match rec {
        Some(rec) => {
            let (dir, keeper) = (eng.cfg.state_dir.clone(), rec.job_id);
            let lock = wait_for_node_lock(ctx, "kept copy", true, || {
                nodelock::try_lock_copy(&dir, keeper)
            })
            .await
            .map_err(|w| match w {
                LockWait::LeaseLost => Stop::LeaseLost,
                LockWait::Shutdown => Stop::Shutdown,
                LockWait::Cancelled => Stop::Cancelled,
                LockWait::TimedOut => Stop::Retry(Failure::new(
                    failure::INTERNAL,
                    "the kept pre-restore copy stayed busy (an undo or the maintenance sweep held it)",
                )),
                LockWait::Broken(e) => Stop::Retry(Failure::io("taking the kept copy's lock", e)),
            })?;
            // Re-read under the lock: an undo may have released the copy meanwhile.
            let kept = eng.kept.clone();
            let rec = blocking(move || {
                kept.read(keeper)
                    .map_err(|e| Failure::io("reading the keep record", e))
            })
            .await
            .map_err(Stop::Retry)?
            .filter(|r| r.archive_job_id == me);
            (rec, Some(lock))
        }
        None => (None, None),
    };
    let Some(rec) = rec else {
        // Already archived by an earlier attempt whose record was then removed, or
        // released by an undo before this job ran.
        if let Some(sid) = ctx.job.snapshot_id
            && db::snapshots::state(&eng.pool, sid).await? == Some(SnapshotState::Ready)
        {
            return Ok(Outcome::Succeeded);
        }
        if let Some(sid) = ctx.job.snapshot_id {
            db::snapshots::mark_failed(&eng.pool, sid).await?;
        }
        // An undo put the copy back (or a client cancelled): nothing is left to
        // archive, which is not a failure to alert on.
        if let Ok(true) = ctx.cancel_requested().await {
            return Err(Stop::Cancelled);
        }
        if let Some(keeper) = db::jobs::source_of(&eng.pool, me).await?
            && volsnap_shared::db::jobs::undone(&eng.pool, keeper).await?
        {
            tracing::info!(%keeper, "the kept copy was put back by an undo; nothing to archive");
            return Err(Stop::Cancelled);
        }
        return Ok(Outcome::Failed {
            code: failure::PRE_RESTORE_COPY_GONE.as_str().into_owned(),
            message: "the kept pre-restore copy no longer exists on this node (undone or removed)"
                .into(),
        });
    };
    if nodelock::copy_wanted(&eng.cfg.state_dir, rec.job_id) {
        tracing::info!(job_id = %me, keeper = %rec.job_id, "an undo wants this kept copy; handing the archive back");
        return Err(Stop::Shutdown);
    }
    // An undo of this copy that crashed mid-way is recovered first: until then the
    // copy may be half swapped back.
    if eng.journals.any_open(|j| j.undoes == Some(rec.job_id)) {
        return Err(Stop::Retry(Failure::new(
            failure::INTERNAL,
            "an interrupted undo of this copy is awaiting recovery",
        )));
    }
    match archive_kept(eng, ctx, &rec).await {
        Ok(()) => Ok(Outcome::Succeeded),
        Err(stop) => {
            let dest = eng.snapshot_file(&rel_of(&rec))?;
            let _ = blocking(move || {
                fsops::remove_file(&partial_path(&dest)).map_err(|e| Failure::io("cleanup", e))
            })
            .await;
            let last = match &stop {
                Stop::Cancelled => true,
                Stop::Failed(_) | Stop::Retry(_) => !ctx.retries_left(),
                _ => false,
            };
            if last {
                // The row must not stay `capturing` for ever; the kept copy stays.
                if let Err(e) = db::snapshots::mark_failed(&eng.pool, rec.snapshot_id).await {
                    tracing::warn!(error = %e, "marking the pre-restore snapshot failed");
                }
            }
            Err(match stop {
                // Nothing this job does is destructive: every failure may be retried.
                Stop::Failed(f) => {
                    tracing::warn!(error = %f, "archiving the pre-restore copy failed");
                    Stop::Retry(f)
                }
                other => other,
            })
        }
    }
}

fn rel_of(rec: &KeepRecord) -> String {
    db::snapshots::archive_path(rec.workload_id, rec.snapshot_id)
}

async fn archive_kept(eng: &Engine, ctx: &JobContext, rec: &KeepRecord) -> Result<(), Stop> {
    let sid = rec.snapshot_id;
    db::snapshots::insert_capturing(
        &eng.pool,
        sid,
        rec.workload_id,
        &eng.cfg.node,
        SnapshotKind::PreRestore,
    )
    .await?;
    crash_point!("archive.row");
    if nodelock::copy_wanted(&eng.cfg.state_dir, rec.job_id) {
        tracing::info!(keeper = %rec.job_id, "an undo wants this kept copy; handing the archive back");
        return Err(Stop::Shutdown);
    }
    if db::snapshots::state(&eng.pool, sid).await? != Some(SnapshotState::Ready) {
        let rel = rel_of(rec);
        let dest = eng.snapshot_file(&rel)?;
        let parents = reopen_parents(&rec.volumes)?;
        let volumes = held(&rec.volumes, &parents);
        let (workload, limits) = (rec.workload_id, eng.cfg.limits.clone());
        let level = eng.cfg.pre_restore_gzip_level;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let mut task = tokio::task::spawn_blocking({
            let (stop, progress) = (stop.clone(), progress.clone());
            move || {
                let mut sources = Vec::with_capacity(volumes.len());
                for (v, p) in &volumes {
                    // Only the very directory the swap displaced.
                    let fd = p.open_dir(v.side(), v.old_id).map_err(|e| {
                        tracing::error!(volume = %v.spec.target, error = %e, "the kept copy is not where its record says");
                        Failure::internal(
                            failure::INTERNAL,
                            format!(
                                "the kept pre-restore copy of {:?} is not where its record says",
                                v.spec.target
                            ),
                            e,
                        )
                    })?;
                    sources.push(archive::SourceVolume {
                        index: v.index,
                        spec: v.spec.clone(),
                        path: p.path().join(v.side()),
                        root: Some(Arc::new(fd)),
                    });
                }
                write_archive_durably_until(
                    &dest, workload, &sources, &limits, level, &progress, &stop,
                )
            }
        });
        let mut why: Option<Stop> = None;
        let mut last_cancel_check = Instant::now();
        let res = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if why.is_some() {
                continue;
            }
            if ctx.lease_lost.is_cancelled() {
                why = Some(Stop::LeaseLost);
            } else if ctx.shutdown.is_cancelled() {
                why = Some(Stop::Shutdown);
            } else if nodelock::copy_wanted(&eng.cfg.state_dir, rec.job_id) {
                // An undo waits for this copy: stop and hand the job back to the queue
                // (like a shutdown: nothing kept, run again later).
                tracing::info!(keeper = %rec.job_id, "an undo wants this kept copy; handing the archive back");
                why = Some(Stop::Shutdown);
            } else {
                let (done, total) = progress_of(&progress);
                let _ = ctx.set_progress(done, total).await;
                if last_cancel_check.elapsed() > Duration::from_secs(1) {
                    last_cancel_check = Instant::now();
                    if let Ok(true) = ctx.cancel_requested().await {
                        why = Some(Stop::Cancelled);
                    }
                }
            }
            if why.is_some() {
                stop.store(true, Ordering::Relaxed);
            }
        };
        let res = res.map_err(|e| Failure::internal(failure::INTERNAL, "archiving panicked", e))?;
        let written = match (res, why) {
            (Ok(w), _) => w,
            (Err(_), Some(stop)) => return Err(stop),
            (Err(f), None) => return Err(f.into()),
        };
        crash_point!("archive.written");
        db::snapshots::mark_ready(&eng.pool, sid, &written.record(&rel)).await?;
        crash_point!("archive.ready");
    }
    db::jobs::link_pre_restore_unfenced(&eng.pool, rec.job_id, sid).await?;
    crash_point!("archive.linked");
    keep::mark_archived(eng, rec.clone()).await?;
    crash_point!("archive.recorded");
    Ok(())
}

fn progress_of(p: &Progress) -> (u64, u64) {
    p.get()
}
