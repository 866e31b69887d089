//! Restore a snapshot onto a workload's live volumes, in this order (issue 4):
//!
//! 1. [`preflight`]: the workload's CURRENT config, every manifest volume mapped by
//!    `target`, paths resolved and checked, non-image refused, staging possible on
//!    each target's own filesystem. All or nothing; nothing touched on failure.
//! 2. [`check_free_space`]: per filesystem, what it must hold.
//! 3. [`verify_checksum`] then [`extract`]: into staging next to each target while
//!    the app still runs (the archive is hashed again as it is read).
//! 4. Journal `quiescing` (containers to restart) — after the point of no return.
//! 5. [`quiesce_and_swap`]: stop, mark, exchange, fsync, journal `committed`.
//! 6. [`finish_forward`]: redeploy, archive the old data as a `pre-restore` snapshot,
//!    delete the old copy, close the journal. Recovery runs the same function.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use volsnap_shared::domain::{JobKind, Snapshot, SnapshotKind, SnapshotState, SourceKind};
use volsnap_shared::failure;
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::worker::JobContext;

use super::error::{Failure, Stop};
use super::journal::{Journal, JournalState, Outcome, PlannedVolume};
use super::{
    Engine, Progress, archive, blocking, blocking_with_progress, fsops, paths, store, swap,
};
use crate::crash_point;

/// What pre-flight decided: everything later steps need, all checked.
#[derive(Debug)]
pub struct Plan {
    pub snapshot: Snapshot,
    pub archive: PathBuf,
    pub expected_sha256: String,
    pub volumes: Vec<PlannedVolume>,
    pub manifest: archive::Manifest,
}

impl Plan {
    fn staging_map(&self) -> BTreeMap<u32, PathBuf> {
        self.volumes
            .iter()
            .map(|v| (v.index, v.side.clone()))
            .collect()
    }
}

/// The side directory of a volume: same parent as the target, so the same filesystem.
pub fn side_dir(target: &Path, job: JobId, index: u32) -> PathBuf {
    fsops::parent(target).join(format!(".volsnap-{job}-{index}"))
}

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    ctx.set_phase("preflight").await?;
    let plan = preflight(eng, ctx).await?;
    check_free_space(eng, &plan).await?;

    ctx.set_phase("verifying").await?;
    let file = verify_checksum(&plan).await?;

    let mut j = Journal {
        format: super::journal::FORMAT,
        job_id: ctx.id(),
        kind: JobKind::Restore,
        workload_id: ctx.job.workload_id,
        snapshot_id: Some(plan.snapshot.id),
        volumes: plan.volumes.clone(),
        containers: vec![],
        partial: None,
        state: JournalState::Staging,
    };
    ctx.set_phase("extracting").await?;
    write_journal(eng, &j).await?;
    crash_point!("restore.journal.staging");

    if let Err(stop) = extract(eng, ctx, &plan, file).await {
        discard_staging(eng, &j).await;
        return Err(stop);
    }
    crash_point!("restore.extracted");

    // The last exit: a stop, a lost lease or a cancel leaves the node as it was.
    let exit = if ctx.lease_lost.is_cancelled() {
        Some(Stop::LeaseLost)
    } else if ctx.shutdown.is_cancelled() {
        Some(Stop::Shutdown)
    } else {
        ctx.enter_point_of_no_return().await.err().map(Stop::from)
    };
    if let Some(stop) = exit {
        discard_staging(eng, &j).await;
        return Err(stop);
    }

    // Past the point of no return: from here on, carry on to a safe end.
    ctx.set_phase("quiescing").await?;
    j.containers = match eng.docker.running_containers(ctx.job.workload_id).await {
        Ok(c) => c,
        Err(f) => {
            discard_staging(eng, &j).await;
            return Err(f.into());
        }
    };
    j.state = JournalState::Quiescing;
    if let Err(f) = write_journal(eng, &j).await {
        discard_staging(eng, &j).await;
        return Err(f.into());
    }
    crash_point!("restore.journal.quiescing");

    let down = Instant::now();
    if let Err(f) = quiesce_and_swap(eng, ctx, &mut j).await {
        if ctx.lease_lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        tracing::error!(error = %f, "restore failed before its commit point: rolling back");
        let _ = ctx.set_phase("rolling back").await;
        return match roll_back(eng, &mut j).await {
            Ok(()) => {
                close_journal(eng, ctx.id()).await?;
                Err(f.into())
            }
            Err(rb) => Err(Stop::NeedsRecovery(rb)),
        };
    }
    match finish_forward(eng, Some(ctx), &mut j, Some(down)).await {
        Ok(outcome) => {
            close_journal(eng, ctx.id()).await?;
            Ok(outcome)
        }
        Err(f) if ctx.lease_lost.is_cancelled() => {
            tracing::error!(error = %f, "lease lost after the commit point; recovery will finish");
            Err(Stop::LeaseLost)
        }
        Err(f) => Err(Stop::NeedsRecovery(f)),
    }
}

/// Step 1: decide everything from the database and the current config; touch nothing.
#[tracing::instrument(skip_all)]
pub async fn preflight(eng: &Engine, ctx: &JobContext) -> Result<Plan, Failure> {
    let job = &ctx.job;
    let workload = store::workload(&eng.pool, job.workload_id)
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
    let sid = job
        .snapshot_id
        .ok_or_else(|| Failure::new(failure::SNAPSHOT_NOT_READY, "the job names no snapshot"))?;
    let snapshot = store::snapshot(&eng.pool, sid).await?.ok_or_else(|| {
        Failure::new(failure::SNAPSHOT_NOT_READY, "the snapshot no longer exists")
    })?;
    let not_ready = |why: &str| Err(Failure::new(failure::SNAPSHOT_NOT_READY, why.to_owned()));
    if snapshot.workload_id != workload.id {
        return not_ready("the snapshot belongs to another workload");
    }
    if snapshot.state != SnapshotState::Ready || snapshot.deleted_at.is_some() {
        return not_ready("the snapshot is not ready (or was deleted)");
    }
    if snapshot.node != eng.cfg.node {
        return not_ready("the snapshot is stored on another node");
    }
    let (Some(rel), Some(sha), Some(manifest)) = (
        snapshot.archive_path.clone(),
        snapshot.sha256.clone(),
        snapshot.manifest.clone(),
    ) else {
        return not_ready("the snapshot row is incomplete");
    };
    let archive = eng.snapshot_file(&rel)?;
    // The stored manifest (written by a worker from a verified file) drives the plan;
    // the extractor checks the archive's own manifest and content match it.
    let manifest: archive::Manifest = serde_json::from_value(manifest).map_err(|e| {
        Failure::internal(
            &format!("{}manifest_invalid", failure::ARCHIVE_PREFIX),
            "the snapshot's manifest is invalid",
            e,
        )
    })?;
    manifest.validate().map_err(archive::failure_of)?;
    refuse_pending_journal(eng, workload.id, ctx.id())?;

    // Resolve the CURRENT config, then map manifest volumes onto it by target only.
    let host = paths::resolve_all(&workload, &eng.roots)?;
    let by_target: HashMap<&str, &paths::HostVolume> =
        host.iter().map(|h| (h.spec.target.as_str(), h)).collect();
    let mut volumes = Vec::with_capacity(manifest.volumes.len());
    for mv in &manifest.volumes {
        let Some(h) = by_target.get(mv.target.as_str()) else {
            return Err(Failure::new(
                failure::VOLUME_MISMATCH,
                format!(
                    "the snapshot's volume {:?} has no volume with that target in the workload's current config",
                    mv.target
                ),
            ));
        };
        volumes.push(PlannedVolume {
            index: mv.index,
            spec: h.spec.clone(),
            target: h.path.clone(),
            side: side_dir(&h.path, ctx.id(), mv.index),
        });
    }
    if volumes.is_empty() {
        return Err(Failure::new(
            failure::NO_VOLUMES,
            "the snapshot holds no volumes",
        ));
    }
    let checked = volumes.clone();
    blocking(move || check_swappable(&checked)).await?;
    Ok(Plan {
        snapshot,
        archive,
        expected_sha256: sha,
        volumes,
        manifest,
    })
}

/// A workload whose earlier job still has an unfinished journal here must be
/// recovered first: a second restore must not stack on top of a half-done one.
fn refuse_pending_journal(eng: &Engine, workload: WorkloadId, me: JobId) -> Result<(), Failure> {
    let ids = eng
        .journals
        .list()
        .map_err(|e| Failure::io("reading the journal directory", e))?;
    for id in ids.into_iter().filter(|id| *id != me) {
        if let Ok(Some(j)) = eng.journals.read(id)
            && j.workload_id == workload
            && !matches!(j.state, JournalState::Finished { .. })
        {
            return Err(Failure::new(
                failure::INTERNAL,
                format!("job {id} of this workload has not been recovered yet on this node"),
            ));
        }
    }
    Ok(())
}

/// The rename swap needs the side directory on the target's own filesystem: the
/// target must not be a mount point, and nothing may sit at the side path yet.
fn check_swappable(volumes: &[PlannedVolume]) -> Result<(), Failure> {
    for v in volumes {
        let label = &v.spec.target;
        let parent = fsops::parent(&v.target);
        let pdev = fsops::dev_of(parent)
            .map_err(|e| Failure::io(format!("volume {label:?}: inspecting its parent"), e))?;
        match std::fs::symlink_metadata(&v.target) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt as _;
                if !m.is_dir() {
                    return Err(Failure::new(
                        failure::INVALID_VOLUME,
                        format!("volume {label:?}: its host path is not a directory"),
                    ));
                }
                if m.dev() != pdev {
                    return Err(Failure::new(
                        failure::CROSS_FILESYSTEM,
                        format!(
                            "volume {label:?}: its host directory is a mount point; it cannot be swapped atomically"
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::io(format!("volume {label:?}: inspecting it"), e)),
        }
        if fsops::exists(&v.side) {
            return Err(Failure::new(
                failure::INTERNAL,
                format!("volume {label:?}: a staging directory for this job already exists"),
            ));
        }
    }
    Ok(())
}

/// Step 2: every filesystem must hold what the restore puts on it — the staged volumes
/// next to their targets, and the pre-restore archive of the current data in the
/// snapshot directory — summed per filesystem.
#[tracing::instrument(skip_all)]
pub async fn check_free_space(eng: &Engine, plan: &Plan) -> Result<(), Failure> {
    let volumes = plan.volumes.clone();
    let manifest = plan.manifest.clone();
    let snapshot_dir = eng.cfg.snapshot_dir.clone();
    blocking(move || {
        // dev → (a path on it, bytes needed)
        let mut need: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
        let mut add = |path: &Path, bytes: u64| -> Result<(), Failure> {
            let at = fsops::existing_ancestor(path);
            let dev = fsops::dev_of(&at).map_err(|e| Failure::io("inspecting a filesystem", e))?;
            let e = need.entry(dev).or_insert((at, 0));
            e.1 = e.1.saturating_add(bytes);
            Ok(())
        };
        let mut current_bytes = 0u64;
        for v in &volumes {
            let mv = manifest
                .volume(v.index)
                .expect("planned from this manifest");
            // Blocks are allocated per file: count a block of slack for each.
            add(
                fsops::parent(&v.target),
                mv.bytes + mv.files * 4096 + (1 << 20),
            )?;
            let (_, bytes) = fsops::tree_size(&v.target)
                .map_err(|e| Failure::io("measuring the current data", e))?;
            current_bytes = current_bytes.saturating_add(bytes);
        }
        // gzip never grows data by more than a small fraction.
        add(
            &snapshot_dir,
            current_bytes + current_bytes / 100 + (1 << 20),
        )?;
        for (at, bytes) in need.values() {
            let free = fsops::free_bytes(at).map_err(|e| Failure::io("reading free space", e))?;
            if free < *bytes {
                return Err(Failure::new(
                    failure::INSUFFICIENT_SPACE,
                    format!(
                        "the filesystem of {} has {free} bytes free; this restore needs {bytes}",
                        at.display()
                    ),
                ));
            }
        }
        Ok(())
    })
    .await
}

/// Step 3a: the file on disk must be the one the database describes.
#[tracing::instrument(skip_all)]
pub async fn verify_checksum(plan: &Plan) -> Result<File, Failure> {
    let path = plan.archive.clone();
    let expected = plan.expected_sha256.clone();
    let size = plan.snapshot.size_bytes;
    blocking(move || {
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Failure::new(
                    failure::SNAPSHOT_FILE_MISSING,
                    "the snapshot's archive file is missing on this node",
                ));
            }
            Err(e) => return Err(Failure::io("opening the snapshot archive", e)),
        };
        let len = f
            .metadata()
            .map_err(|e| Failure::io("reading the archive", e))?
            .len();
        if size.is_some_and(|s| s as u64 != len) {
            return Err(Failure::new(
                failure::CHECKSUM_MISMATCH,
                "the archive file's size differs from the snapshot's recorded size",
            ));
        }
        let mut h = Sha256::new();
        io::copy(&mut BufReader::with_capacity(1 << 20, &mut f), &mut h)
            .map_err(|e| Failure::io("reading the snapshot archive", e))?;
        if hex::encode(h.finalize()) != expected {
            return Err(Failure::new(
                failure::CHECKSUM_MISMATCH,
                "the archive file's sha256 differs from the snapshot's recorded sha256",
            ));
        }
        use std::io::Seek as _;
        f.rewind()
            .map_err(|e| Failure::io("reading the snapshot archive", e))?;
        Ok(f)
    })
    .await
}

/// A reader that hashes what passes through, counts it, and fails once told to stop.
struct Tracked<R> {
    inner: R,
    hasher: Sha256,
    read: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    half: u64,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("restore stopped"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let before = self.read.fetch_add(n as u64, Ordering::Relaxed);
        if before < self.half && before + n as u64 >= self.half {
            crash_point!("restore.extract.half");
        }
        Ok(n)
    }
}

/// Step 3b: extract every volume into its side directory while the app runs, then
/// mark each as holding the new data.
#[tracing::instrument(skip_all)]
pub async fn extract(eng: &Engine, ctx: &JobContext, plan: &Plan, file: File) -> Result<(), Stop> {
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let staging = plan.staging_map();
    let volumes = plan.volumes.clone();
    let limits = eng.cfg.limits.clone();
    let expected = plan.expected_sha256.clone();
    let planned: Vec<(u32, String)> = plan
        .manifest
        .volumes
        .iter()
        .map(|v| (v.index, v.target.clone()))
        .collect();
    let job = ctx.id();
    let mut task = tokio::task::spawn_blocking({
        let (read, stop) = (read.clone(), stop.clone());
        move || -> Result<(), Failure> {
            let mut r = Tracked {
                inner: BufReader::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                read,
                stop,
                half: total / 2,
            };
            let own = archive::extract(&mut r, &staging, &limits, |_, _| {})?;
            io::copy(&mut r, &mut io::sink()).map_err(|e| Failure::io("reading the archive", e))?;
            let refuse = |f: Failure| {
                for dir in staging.values() {
                    let _ = fsops::remove_tree(dir);
                }
                Err(f)
            };
            if hex::encode(r.hasher.finalize_reset()) != expected {
                return refuse(Failure::new(
                    failure::CHECKSUM_MISMATCH,
                    "the archive changed on disk while it was being restored",
                ));
            }
            // The plan came from the stored manifest; the archive must say the same.
            let actual: Vec<(u32, String)> = own
                .volumes
                .iter()
                .map(|v| (v.index, v.target.clone()))
                .collect();
            if actual != planned {
                return refuse(Failure::new(
                    &format!("{}manifest_mismatch", failure::ARCHIVE_PREFIX),
                    "the archive's manifest differs from the snapshot's recorded manifest",
                ));
            }
            for v in &volumes {
                fsops::write_marker(
                    &v.side,
                    &fsops::Marker {
                        job,
                        volume: v.index,
                        role: fsops::Role::New,
                    },
                )
                .map_err(|e| Failure::io("marking a staging directory", e))?;
            }
            Ok(())
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
        } else if let Err(e) = ctx.set_progress(read.load(Ordering::Relaxed), total).await {
            why = Some(e.into());
        } else if last_cancel_check.elapsed() > Duration::from_secs(1) {
            last_cancel_check = Instant::now();
            match ctx.cancel_requested().await {
                Ok(true) => why = Some(Stop::Cancelled),
                Ok(false) => {}
                Err(e) => why = Some(e.into()),
            }
        }
        if why.is_some() {
            stop.store(true, Ordering::Relaxed);
        }
    };
    let res = res.map_err(|e| Failure::internal(failure::INTERNAL, "extraction panicked", e))?;
    match (res, why) {
        (Ok(()), _) => {
            let _ = ctx.set_progress(total, total).await;
            Ok(())
        }
        (Err(_), Some(stop)) => Err(stop),
        (Err(f), None) => Err(f.into()),
    }
}

/// Before the point of no return: remove the staging directories and the journal.
async fn discard_staging(eng: &Engine, j: &Journal) {
    let volumes = j.volumes.clone();
    let (job, journals) = (j.job_id, eng.journals.clone());
    let res = blocking(move || {
        for v in &volumes {
            swap::discard_side(v, job).map_err(|e| Failure::io("removing staging", e))?;
        }
        journals
            .remove(job)
            .map_err(|e| Failure::io("closing the journal", e))
    })
    .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "cleaning up staging failed; start-up recovery will retry");
    }
}

/// Step 5: stop the containers, then exchange every volume; ends at the commit point.
#[tracing::instrument(skip_all)]
async fn quiesce_and_swap(eng: &Engine, ctx: &JobContext, j: &mut Journal) -> Result<(), Failure> {
    for (i, id) in j.containers.iter().enumerate() {
        eng.docker.stop(id).await?;
        if i == 0 {
            crash_point!("restore.stop.first");
        }
    }
    crash_point!("restore.stopped");
    let _ = ctx.set_phase("swapping").await;
    j.state = JournalState::Swapping;
    write_journal(eng, j).await?;
    crash_point!("restore.journal.swapping");
    let volumes = j.volumes.clone();
    let (job, mode) = (j.job_id, eng.cfg.swap_mode);
    blocking(move || {
        swap::mark_targets_old(&volumes, job).map_err(|e| Failure::io("marking the volumes", e))?;
        crash_point!("restore.marked");
        swap::swap_in(&volumes, job, mode).map_err(|e| Failure::io("swapping the volumes", e))?;
        crash_point!("restore.swapped");
        Ok(())
    })
    .await?;
    j.state = JournalState::Committed;
    write_journal(eng, j).await?;
    crash_point!("restore.journal.committed");
    Ok(())
}

/// Before the commit point: put every volume back as it was, drop the staging, and
/// start the containers that were running. Idempotent.
pub async fn roll_back(eng: &Engine, j: &mut Journal) -> Result<(), Failure> {
    let volumes = j.volumes.clone();
    let (job, mode) = (j.job_id, eng.cfg.swap_mode);
    blocking(move || {
        swap::swap_back(&volumes, job, mode).map_err(|e| Failure::io("rolling the volumes back", e))
    })
    .await?;
    crash_point!("recovery.rolled_back");
    if let Err(f) = eng.docker.start_all_and_wait(&j.containers).await {
        tracing::error!(error = %f, "containers did not come back after the rollback");
    }
    Ok(())
}

/// After the commit point (the run, and recovery): redeploy, archive the old data as
/// a `pre-restore` snapshot, delete the old copy. Idempotent from any state on.
pub async fn finish_forward(
    eng: &Engine,
    ctx: Option<&JobContext>,
    j: &mut Journal,
    down_since: Option<Instant>,
) -> Result<Outcome, Failure> {
    let phase = |p: &'static str| async move {
        if let Some(ctx) = ctx {
            let _ = ctx.set_phase(p).await;
        }
    };
    let mut redeploy: Option<Failure> = None;
    if j.state == JournalState::Committed {
        let (volumes, job) = (j.volumes.clone(), j.job_id);
        blocking(move || {
            swap::clear_targets(&volumes, job).map_err(|e| Failure::io("finishing the swap", e))
        })
        .await?;
        crash_point!("restore.markers_cleared");
        phase("redeploying").await;
        redeploy = redeploy_containers(eng, &j.containers).await.err();
        let downtime = down_since.map(|t| t.elapsed());
        if let Some(d) = downtime {
            tracing::info!(
                downtime_ms = d.as_millis() as u64,
                "containers were stopped for this long"
            );
        }
        j.state = JournalState::Redeployed;
        write_journal(eng, j).await?;
        crash_point!("restore.journal.redeployed");
        record_stats(eng, j, downtime).await;
    } else if let Err(f) = eng.docker.start_all_and_wait(&j.containers).await {
        // Recovery after the redeploy: make sure the containers run.
        redeploy = Some(f);
    }
    if j.state == JournalState::Redeployed {
        j.state = JournalState::Archiving {
            snapshot_id: SnapshotId::new(),
        };
        write_journal(eng, j).await?;
        crash_point!("restore.journal.archiving");
    }
    if let JournalState::Archiving { snapshot_id } = j.state {
        phase("archiving pre-restore copy").await;
        archive_old_data(eng, ctx, j, snapshot_id).await?;
        j.state = JournalState::Archived { snapshot_id };
        write_journal(eng, j).await?;
        crash_point!("restore.journal.archived");
    }
    let JournalState::Archived { snapshot_id } = j.state else {
        return Err(Failure::new(
            failure::INTERNAL,
            format!("unexpected journal state {:?}", j.state),
        ));
    };
    phase("cleaning up").await;
    let (volumes, job) = (j.volumes.clone(), j.job_id);
    blocking(move || {
        swap::remove_backups(&volumes, job)
            .map_err(|e| Failure::io("deleting the pre-restore copy", e))
    })
    .await?;
    crash_point!("restore.backups_removed");
    Ok(match redeploy {
        None => Outcome::Succeeded,
        Some(f) => Outcome::Failed {
            code: f.code,
            message: format!(
                "the data was restored, but the workload did not come back: {}; the previous data is kept as snapshot {snapshot_id}",
                f.message
            ),
        },
    })
}

async fn redeploy_containers(eng: &Engine, ids: &[String]) -> Result<(), Failure> {
    let mut first_err = None;
    for (i, id) in ids.iter().enumerate() {
        if let Err(e) = eng.docker.start(id).await {
            tracing::error!(error = %e, "a container did not start");
            first_err.get_or_insert(e);
        }
        if i == 0 {
            crash_point!("restore.start.first");
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    eng.docker.wait_running(ids).await?;
    crash_point!("restore.started");
    Ok(())
}

async fn record_stats(eng: &Engine, j: &Journal, downtime: Option<Duration>) {
    let bytes = match j.snapshot_id {
        Some(sid) => match store::snapshot(&eng.pool, sid).await {
            Ok(Some(s)) => s
                .manifest
                .and_then(|m| serde_json::from_value::<archive::Manifest>(m).ok())
                .map_or(0, |m| m.total_bytes()),
            _ => 0,
        },
        None => 0,
    };
    let res = async {
        let mut conn = eng.pool.acquire().await?;
        volsnap_shared::queue::stats::record_restore(
            &mut conn,
            bytes,
            downtime.map(|d| d.as_secs_f64()),
        )
        .await
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "recording restore metrics failed");
    }
}

/// Archive the old data (the side directories, marked `old`) as a ready `pre-restore`
/// snapshot with the id the journal chose. Idempotent.
async fn archive_old_data(
    eng: &Engine,
    ctx: Option<&JobContext>,
    j: &Journal,
    sid: SnapshotId,
) -> Result<(), Failure> {
    store::insert_capturing(
        &eng.pool,
        sid,
        j.workload_id,
        &eng.cfg.node,
        SnapshotKind::PreRestore,
    )
    .await?;
    match ctx {
        Some(ctx) => ctx.set_pre_restore_snapshot(sid).await.map_err(|e| {
            Failure::internal(failure::LEASE_LOST, "linking the pre-restore snapshot", e)
        })?,
        None => store::link_pre_restore_unfenced(&eng.pool, j.job_id, sid).await?,
    }
    crash_point!("restore.archive.row");
    if store::snapshot_state(&eng.pool, sid).await? == Some(SnapshotState::Ready) {
        return Ok(());
    }
    let rel = format!("{}/{sid}.tar.gz", j.workload_id);
    let dest = eng.snapshot_file(&rel)?;
    let sources: Vec<archive::SourceVolume> = j
        .volumes
        .iter()
        .map(|v| archive::SourceVolume {
            index: v.index,
            spec: v.spec.clone(),
            path: v.side.clone(),
        })
        .collect();
    let (job, workload, limits) = (j.job_id, j.workload_id, eng.cfg.limits.clone());
    let level = eng.cfg.pre_restore_gzip_level;
    let written = blocking_with_progress(ctx, move |progress| {
        for v in &sources {
            if fsops::read_marker(&v.path, job)
                .map_err(|e| Failure::io("reading a marker", e))?
                .map(|m| m.role)
                != Some(fsops::Role::Old)
            {
                return Err(Failure::new(
                    failure::INTERNAL,
                    format!(
                        "the pre-restore copy of {:?} is not where the journal says",
                        v.spec.target
                    ),
                ));
            }
        }
        write_archive_durably(&dest, workload, &sources, &limits, level, progress)
    })
    .await?;
    crash_point!("restore.archive.written");
    store::mark_ready(&eng.pool, sid, &written.record(&rel)).await?;
    crash_point!("restore.archive.ready");
    Ok(())
}

/// Write an archive to `<dest>.partial`, fsync it, rename it into place, fsync the dir.
pub fn write_archive_durably(
    dest: &Path,
    workload: WorkloadId,
    sources: &[archive::SourceVolume],
    limits: &archive::Limits,
    level: u32,
    progress: &Progress,
) -> Result<archive::Written, Failure> {
    let dir = fsops::parent(dest);
    std::fs::create_dir_all(dir).map_err(|e| Failure::io("creating the snapshot directory", e))?;
    let partial = partial_path(dest);
    fsops::remove_file(&partial).map_err(|e| Failure::io("removing a partial archive", e))?;
    let mut out = File::create(&partial).map_err(|e| Failure::io("creating the archive", e))?;
    let written = archive::write(&mut out, workload, sources, limits, level, |d, t| {
        progress.set(d, t)
    })?;
    out.sync_all()
        .map_err(|e| Failure::io("syncing the archive", e))?;
    drop(out);
    std::fs::rename(&partial, dest).map_err(|e| Failure::io("placing the archive", e))?;
    fsops::fsync_dir(dir).map_err(|e| Failure::io("syncing the snapshot directory", e))?;
    Ok(written)
}

pub fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

pub async fn write_journal(eng: &Engine, j: &Journal) -> Result<(), Failure> {
    let (journals, j) = (eng.journals.clone(), j.clone());
    blocking(move || {
        journals
            .write(&j)
            .map_err(|e| Failure::io("writing the journal", e))
    })
    .await
}

pub async fn close_journal(eng: &Engine, job: JobId) -> Result<(), Failure> {
    let journals = eng.journals.clone();
    blocking(move || {
        journals
            .remove(job)
            .map_err(|e| Failure::io("closing the journal", e))
    })
    .await?;
    crash_point!("journal.closed");
    Ok(())
}
