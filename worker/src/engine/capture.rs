//! Capture: stream a workload's current volumes into a new snapshot archive
//! `$VOLSNAP_SNAPSHOT_DIR/<workload>/<snapshot>.tar.gz` and register it `ready`.
//!
//! With `stop_for_capture`, the workload's running containers are stopped for a
//! consistent copy and started again afterwards; the journal names them first, so a
//! crash never leaves them stopped. A volume whose host directory does not exist fails
//! the capture (`volume_source_missing`): recording it as empty would let a later
//! restore wipe data that was merely misconfigured.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use volsnap_shared::domain::{JobKind, SnapshotState};
use volsnap_shared::queue::JobContext;
use volsnap_shared::{db, failure};

use super::archive::{partial_path, write_archive_durably};
use super::context::{Engine, blocking, blocking_with_progress};
use super::dirs::ParentDir;
use super::error::{Failure, Stop};
use super::journal::{Journal, JournalState, Outcome, close_journal, write_journal};
use super::{archive, fsops, paths};
use crate::crash_point;

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    ctx.set_phase("preflight").await?;
    let sid = ctx.job.snapshot_id.ok_or_else(|| {
        Failure::new(
            failure::SNAPSHOT_NOT_READY,
            "the capture job names no snapshot",
        )
    })?;
    let res = capture(eng, ctx).await;
    if let Err(Stop::Failed(_) | Stop::Cancelled) = &res {
        db::snapshots::mark_failed(&eng.pool, sid).await?;
    }
    res
}

async fn capture(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    let sid = ctx.job.snapshot_id.expect("checked");
    let workload = db::workloads::get(&eng.pool, ctx.job.workload_id)
        .await?
        .ok_or_else(|| {
            Failure::new(failure::WORKLOAD_NOT_FOUND, "the workload no longer exists")
        })?;
    let snap = db::snapshots::get(&eng.pool, sid).await?.ok_or_else(|| {
        Failure::new(
            failure::SNAPSHOT_NOT_READY,
            "the snapshot row no longer exists",
        )
    })?;
    if snap.state != SnapshotState::Capturing
        || snap.workload_id != workload.id
        || snap.node != eng.cfg.node
    {
        return Err(Failure::new(
            failure::SNAPSHOT_NOT_READY,
            "the snapshot row is not a capture in progress of this workload on this node",
        )
        .into());
    }
    let host = paths::resolve_all(&workload, &eng.roots)?;
    paths::refuse_overlaps(&eng.pool, &workload, &host, &eng.roots).await?;
    let sources: Vec<archive::SourceVolume> = blocking(move || {
        host.iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(archive::SourceVolume {
                    index: i as u32,
                    spec: h.spec.clone(),
                    path: h.path.clone(),
                    root: Some(Arc::new(open_live(h)?)),
                })
            })
            .collect()
    })
    .await?;
    let rel = db::snapshots::archive_path(workload.id, sid);
    let dest = eng.snapshot_file(&rel)?;

    let mut j = Journal {
        format: super::journal::FORMAT,
        job_id: ctx.id(),
        kind: JobKind::Capture,
        workload_id: workload.id,
        snapshot_id: Some(sid),
        volumes: vec![],
        containers: vec![],
        partial: Some(dest.clone()),
        state: JournalState::Capturing,
        undoes: None,
        kept_bytes: 0,
    };
    if workload.stop_for_capture {
        if ctx.cancel_requested().await? {
            return Err(Stop::Cancelled);
        }
        j.containers = eng.docker.running_containers(workload.id).await?;
    }
    write_journal(&eng.journals, &j).await?;
    crash_point!("capture.journal");

    let started = Instant::now();
    ctx.set_phase("capturing").await?;
    let mut stop_err = None;
    for id in &j.containers {
        if let Err(f) = eng.docker.stop(id).await {
            stop_err = Some(f);
            break;
        }
    }
    crash_point!("capture.stopped");
    let written = match stop_err {
        Some(f) => Err(f),
        None => {
            let (dest, limits, wid) = (dest.clone(), eng.cfg.limits.clone(), workload.id);
            let level = eng.cfg.capture_gzip_level;
            blocking_with_progress(Some(ctx), move |p| {
                write_archive_durably(&dest, wid, &sources, &limits, level, p)
            })
            .await
        }
    };
    crash_point!("capture.written");
    let restarted = eng.docker.start_all_and_wait(&j.containers).await;
    if !j.containers.is_empty() {
        tracing::info!(
            stopped_ms = started.elapsed().as_millis() as u64,
            "containers stopped for the capture"
        );
    }
    crash_point!("capture.started");
    let written = match written {
        Ok(w) => w,
        Err(f) => {
            let d = dest.clone();
            let _ = blocking(move || {
                fsops::remove_file(&partial_path(&d)).map_err(|e| Failure::io("cleanup", e))?;
                fsops::remove_file(&d).map_err(|e| Failure::io("cleanup", e))
            })
            .await;
            close_journal(&eng.journals, ctx.id()).await?;
            return Err(f.into());
        }
    };
    db::snapshots::mark_ready(&eng.pool, sid, &written.record(&rel)).await?;
    crash_point!("capture.ready");
    close_journal(&eng.journals, ctx.id()).await?;
    Ok(match restarted {
        Ok(()) => Outcome::Succeeded,
        Err(f) => Outcome::Failed {
            code: f.code.into(),
            message: format!(
                "the snapshot was captured, but the workload did not come back: {}",
                f.message
            ),
        },
    })
}

/// Recovery of an interrupted capture: restart what it stopped, drop a partial file,
/// and fail the snapshot unless it became ready. Idempotent.
pub async fn recover(eng: &Engine, j: &Journal) -> Result<Outcome, Failure> {
    let restarted = eng.docker.restart_after_quiesce(&j.containers).await;
    let sid = j.snapshot_id;
    let ready = match sid {
        Some(sid) => db::snapshots::state(&eng.pool, sid).await? == Some(SnapshotState::Ready),
        None => false,
    };
    if let Some(dest) = j.partial.clone() {
        blocking(move || {
            fsops::remove_file(&partial_path(&dest)).map_err(|e| Failure::io("cleanup", e))?;
            if !ready {
                fsops::remove_file(&dest).map_err(|e| Failure::io("cleanup", e))?;
            }
            Ok(())
        })
        .await?;
    }
    if !ready && let Some(sid) = sid {
        db::snapshots::mark_failed(&eng.pool, sid).await?;
    }
    crash_point!("recovery.capture");
    Ok(match (ready, restarted) {
        (true, Ok(())) => Outcome::Succeeded,
        (_, Err(f)) => Outcome::Failed {
            code: f.code.into(),
            message: format!(
                "the capture was interrupted and the workload did not come back: {}",
                f.message
            ),
        },
        (false, Ok(())) => Outcome::Failed {
            code: failure::INTERRUPTED.into(),
            message:
                "the worker stopped during the capture; no snapshot was made (enqueue it again)"
                    .into(),
        },
    })
}

/// Open a live volume directory for reading (capture): its parent fd by fd from the
/// trusted base, then the directory itself, never through a symlink. A missing one is
/// `volume_source_missing`: recording it as empty would let a later restore wipe data
/// that was merely misconfigured.
pub fn open_live(h: &paths::HostVolume) -> Result<OwnedFd, Failure> {
    let label = &h.spec.target;
    let missing = || {
        Failure::new(
            failure::VOLUME_SOURCE_MISSING,
            format!("volume {label:?}: its host directory does not exist; nothing was captured"),
        )
    };
    let (base, rel) = (&h.base, &h.rel);
    let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(missing());
    };
    let refused = |e: io::Error| {
        tracing::warn!(volume = %label, path = %h.path.display(), error = %e, "cannot open a volume");
        if e.raw_os_error() == Some(nix::libc::ENOENT) {
            missing()
        } else {
            Failure::new(
                failure::PATH_ESCAPES_BASE,
                format!(
                    "volume {label:?}: a component of its host path is a symlink or not a directory"
                ),
            )
            .with_cause(e)
        }
    };
    let p = ParentDir::open(base, parent_rel).map_err(refused)?;
    p.open_dir(name, None).map_err(refused)
}
