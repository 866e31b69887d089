//! The `undo` job (issue 11): put back the data a restore (or an earlier undo)
//! displaced.
//!
//! - **By directory**, while the job's kept copy exists on this node (its keep record,
//!   [`super::keep`]): the kept side directory and the live target trade places with
//!   one `renameat2(RENAME_EXCHANGE)` per volume — the restore's own quiesce → swap →
//!   redeploy steps and journal, so downtime does not depend on the volume size. The
//!   journal plans each volume with the identities reversed (live = the restore's
//!   `new_id`, side = its `old_id`); recovery rolls back before the commit point (the
//!   side directory is swapped back, never deleted) and forward after it. The data the
//!   undo displaces (the restored snapshot's data plus whatever the app wrote since)
//!   becomes the undo's own kept copy under the same side names — archived in the
//!   background as the undo's `pre-restore` snapshot and removed after the retention,
//!   exactly like a restore's, so an undo can itself be undone — and the reverted job's
//!   keep record is released.
//! - **By archive**, once the directory is gone (retention passed): a normal restore
//!   of the job's `pre-restore` snapshot.

use std::sync::Arc;
use std::time::Instant;

use volsnap_shared::domain::{JobKind, SourceKind};
use volsnap_shared::ids::JobId;
use volsnap_shared::queue::JobContext;
use volsnap_shared::{db, failure};

use super::context::{Engine, LockWait, blocking, wait_for_node_lock};
use super::dirs::{self, ParentDir};
use super::error::{BeforeAnyChange as _, Failure, Stop};
use super::journal::{Journal, JournalState, Outcome, PlannedVolume, close_journal, write_journal};
use super::keep::KeepRecord;
use super::nodelock::{self, WorkloadLock};
use super::paths;
use super::restore::{
    finish_forward, held, quiesce_and_swap, refuse_pending_journal, reopen_parents, roll_back,
    run_snapshot,
};
use super::swap::{self, Side};
use crate::crash_point;

use failure::UNDO_UNAVAILABLE;

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    ctx.set_phase("preflight").await.before_any_change()?;
    let source = db::jobs::source_of(&eng.pool, ctx.id())
        .await
        .before_any_change()?
        .ok_or_else(|| Failure::new(UNDO_UNAVAILABLE, "the undo names no job to revert"))?;
    // The copy's lock for the whole undo: its background archive (asked to hand the
    // copy over, see `nodelock::copy_want_path`) and the maintenance sweep keep off it.
    let _copy_lock = take_copy(eng, ctx, source).await.before_any_change()?;
    let kept = eng.kept.clone();
    let rec = blocking(move || {
        kept.read(source)
            .map_err(|e| Failure::io("reading the keep record", e))
    })
    .await?;
    if let Some(rec) = rec {
        tracing::info!(%source, "undo by directory");
        return by_directory(eng, ctx, rec).await;
    }
    let sid = match ctx.job.snapshot_id {
        Some(sid) => Some(sid),
        None => db::jobs::pre_restore_of(&eng.pool, source)
            .await
            .before_any_change()?,
    };
    let Some(sid) = sid else {
        return Err(Failure::new(
            UNDO_UNAVAILABLE,
            format!(
                "job {source}'s pre-restore copy is neither kept on node {} nor archived",
                eng.cfg.node
            ),
        )
        .into());
    };
    tracing::info!(%source, snapshot_id = %sid, "undo by archive: restoring the pre-restore snapshot");
    run_snapshot(eng, ctx, sid).await
}

/// Take the lock of the copy kept by `source`. If an archive job is reading it, ask it
/// to hand the copy over (it stops within ~250 ms and is queued again) and wait.
async fn take_copy(eng: &Engine, ctx: &JobContext, source: JobId) -> Result<WorkloadLock, Stop> {
    let dir = eng.cfg.state_dir.clone();
    if let Some(l) = nodelock::try_lock_copy(&dir, source)
        .map_err(|e| Failure::io("taking the kept copy's lock", e))?
    {
        return Ok(l);
    }
    let want = nodelock::copy_want_path(&dir, source);
    std::fs::write(&want, b"").map_err(|e| Failure::io("asking for the kept copy", e))?;
    let got = wait_for_node_lock(ctx, "kept copy", true, || {
        nodelock::try_lock_copy(&dir, source)
    })
    .await;
    let _ = std::fs::remove_file(&want);
    got.map_err(|w| match w {
        LockWait::LeaseLost => Stop::LeaseLost,
        LockWait::Shutdown => Stop::Shutdown,
        LockWait::Cancelled => Stop::Cancelled,
        LockWait::TimedOut => Failure::new(
            failure::INTERNAL,
            "the kept pre-restore copy stayed busy for two minutes (its archive did not hand it over)",
        )
        .into(),
        LockWait::Broken(e) => Failure::io("taking the kept copy's lock", e).into(),
    })
}

/// Pre-flight of an undo by directory: nothing is touched. The workload's current
/// config must still put every volume where the kept copy lies, and every target and
/// side directory must still be what the reverted job left.
async fn preflight(
    eng: &Engine,
    ctx: &JobContext,
    rec: &KeepRecord,
) -> Result<(Vec<PlannedVolume>, Vec<Arc<ParentDir>>, u64), Failure> {
    let _step = super::steps::Step::Preflight.start();
    let workload = db::workloads::get(&eng.pool, ctx.job.workload_id)
        .await?
        .ok_or_else(|| {
            Failure::new(failure::WORKLOAD_NOT_FOUND, "the workload no longer exists")
        })?;
    if workload.source_kind != SourceKind::Image {
        return Err(Failure::new(
            failure::NOT_IMAGE_WORKLOAD,
            format!(
                "only image workloads can be restored (this one is {})",
                workload.source_kind
            ),
        ));
    }
    if rec.workload_id != workload.id {
        return Err(Failure::new(
            UNDO_UNAVAILABLE,
            "the kept copy belongs to another workload",
        ));
    }
    refuse_pending_journal(eng, workload.id, ctx.id())?;
    let host = paths::resolve_all(&workload, &eng.roots)?;
    paths::refuse_overlaps(&eng.pool, &workload, &host, &eng.roots).await?;
    for v in &rec.volumes {
        let same = host.iter().any(|h| {
            h.spec.target == v.spec.target
                && h.base == v.base
                && h.rel == v.parent_rel.join(&v.name)
        });
        if !same {
            return Err(Failure::new(
                failure::VOLUME_MISMATCH,
                format!(
                    "volume {:?} is no longer where the kept copy lies in the workload's current config",
                    v.spec.target
                ),
            ));
        }
    }
    // The reverted job's view, reversed: live = what it put in, side = what it kept.
    let volumes: Vec<PlannedVolume> = rec
        .volumes
        .iter()
        .map(|v| PlannedVolume {
            old_id: v.new_id,
            new_id: v.old_id,
            ..v.clone()
        })
        .collect();
    let parents = reopen_parents(&rec.volumes)?;
    let checked = held(&volumes, &parents);
    let bytes = blocking(move || {
        let mut bytes = 0u64;
        for (v, p) in &checked {
            let label = &v.spec.target;
            let now = (swap::at_target(v, p), swap::at_side(v, p));
            if !matches!(now, (Ok(Side::Old), Ok(Side::New))) {
                tracing::error!(volume = %label, target = ?now.0, side = ?now.1, "undo: the volume is not as the reverted job left it");
                return Err(Failure::new(
                    failure::VOLUME_CHANGED,
                    format!(
                        "volume {label:?}: its live or kept directory is not the one the reverted job left; nothing was changed"
                    ),
                ));
            }
            let dir = p
                .open_dir(v.name(), v.old_id)
                .map_err(|e| Failure::io(format!("volume {label:?}: opening it"), e))?;
            let (_, b) = dirs::tree_size(std::os::fd::AsFd::as_fd(&dir))
                .map_err(|e| Failure::io(format!("volume {label:?}: measuring its data"), e))?;
            bytes = bytes.saturating_add(b);
        }
        Ok(bytes)
    })
    .await?;
    Ok((volumes, parents, bytes))
}

async fn by_directory(eng: &Engine, ctx: &JobContext, rec: KeepRecord) -> Result<Outcome, Stop> {
    let (volumes, parents, kept_bytes) = preflight(eng, ctx, &rec).await.before_any_change()?;
    // The last exit: a stop, a lost lease or a cancel leaves the node as it was.
    if ctx.lease_lost.is_cancelled() {
        return Err(Stop::LeaseLost);
    }
    if ctx.shutdown.is_cancelled() {
        return Err(Stop::Shutdown);
    }
    ctx.enter_point_of_no_return()
        .await
        .map_err(Stop::from)
        .before_any_change()?;
    ctx.set_phase("quiescing").await.before_any_change()?;
    let containers = eng
        .docker
        .running_containers(ctx.job.workload_id)
        .await
        .map_err(Stop::from)?;
    let mut j = Journal {
        format: super::journal::FORMAT,
        job_id: ctx.id(),
        kind: JobKind::Undo,
        workload_id: ctx.job.workload_id,
        snapshot_id: None,
        volumes,
        containers,
        partial: None,
        state: JournalState::Quiescing,
        undoes: Some(rec.job_id),
        kept_bytes,
    };
    write_journal(&eng.journals, &j).await?;
    crash_point!("undo.journal.quiescing");
    let down = Instant::now();
    if let Err(f) = quiesce_and_swap(eng, ctx, &mut j, &parents).await {
        if ctx.lease_lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        tracing::error!(error = %f, "undo failed before its commit point: rolling back");
        let _ = ctx.set_phase("rolling back").await;
        return match roll_back(eng, &mut j, &parents).await {
            Ok(()) => {
                close_journal(&eng.journals, ctx.id()).await?;
                Err(f.into())
            }
            Err(rb) => Err(Stop::NeedsRecovery(rb)),
        };
    }
    match finish_forward(eng, Some(ctx), &mut j, &parents, Some(down)).await {
        Ok(outcome) => {
            close_journal(&eng.journals, ctx.id()).await?;
            Ok(outcome)
        }
        Err(f) if ctx.lease_lost.is_cancelled() => {
            tracing::error!(error = %f, "lease lost after the commit point; recovery will finish");
            Err(Stop::LeaseLost)
        }
        Err(f) => Err(Stop::NeedsRecovery(f)),
    }
}
