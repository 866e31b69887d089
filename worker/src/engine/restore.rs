//! Restore a snapshot onto a workload's live volumes, in this order (issue 4):
//!
//! 1. [`preflight`]: the workload's CURRENT config, every manifest volume mapped by
//!    `target`, paths resolved and checked, each target's parent opened fd by fd (no
//!    symlink anywhere) and held for the whole job, non-image refused, staging possible
//!    on each target's own filesystem. All or nothing; nothing touched on failure.
//! 2. [`check_free_space`]: per filesystem, what it must hold.
//! 3. [`open_archive`] (present, recorded size) then [`extract`]: into staging next to
//!    each target while the app still runs, hashing the archive in the same read; a
//!    sha256 that differs from the database's discards the staging before anything
//!    else is touched.
//! 4. Re-check every parent and target identity, journal `quiescing` (containers to
//!    restart) — after the point of no return.
//! 5. [`quiesce_and_swap`]: stop, re-check identities, exchange, fsync, journal
//!    `committed`.
//! 6. [`finish_forward`]: redeploy, keep the old data where the swap put it (a keep
//!    record; [`super::keep`] archives it in the background as its own job and removes
//!    it after its retention), close the journal. Recovery runs the same function.
//!
//! Nothing is ever written inside a live volume, and every name is resolved in a held
//! parent directory fd ([`super::dirs`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use volsnap_shared::db;
use volsnap_shared::domain::{JobKind, Snapshot, SnapshotState, SourceKind};
use volsnap_shared::failure::{self, FailureCode};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::JobContext;

use super::context::{Engine, blocking};
use super::dirs::{self, FileId, ParentDir};
use super::error::{BeforeAnyChange as _, Failure, Stop};
use super::journal::{Journal, JournalState, Outcome, PlannedVolume, close_journal, write_journal};
use super::swap::Held;
use super::{archive, fsops, paths, swap};
use crate::crash_point;

/// What pre-flight decided: everything later steps need, all checked.
#[derive(Debug)]
pub struct Plan {
    pub snapshot: Snapshot,
    pub archive: PathBuf,
    pub expected_sha256: String,
    pub volumes: Vec<PlannedVolume>,
    /// The parent directory of each volume (same order), held for the whole job.
    pub parents: Vec<Arc<ParentDir>>,
    pub manifest: archive::Manifest,
}

/// The side directory's name of a volume: in the target's parent, so on the same
/// filesystem, and in a directory no app can write.
pub fn side_name(job: JobId, index: u32) -> String {
    format!(".volsnap-{job}-{index}")
}

/// Pair journaled volumes with their held parents.
pub fn held(volumes: &[PlannedVolume], parents: &[Arc<ParentDir>]) -> Vec<Held> {
    volumes
        .iter()
        .cloned()
        .zip(parents.iter().cloned())
        .collect()
}

/// Open every volume's parent again from the journal, refusing a directory that is not
/// the one recorded (recovery).
pub fn reopen_parents(volumes: &[PlannedVolume]) -> Result<Vec<Arc<ParentDir>>, Failure> {
    volumes
        .iter()
        .map(|v| {
            ParentDir::reopen(&v.base, &v.parent_rel, v.parent_id)
                .map(Arc::new)
                .map_err(|e| {
                    tracing::error!(volume = %v.spec.target, base = %v.base.display(), parent = %v.parent_rel.display(), error = %e, "cannot open a volume's parent again");
                    Failure::internal(
                        failure::VOLUME_CHANGED,
                        format!(
                            "volume {:?}: its parent directory is no longer the one this job recorded",
                            v.spec.target
                        ),
                        e,
                    )
                })
        })
        .collect()
}

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    let sid = ctx
        .job
        .snapshot_id
        .ok_or_else(|| Failure::new(failure::SNAPSHOT_NOT_READY, "the job names no snapshot"))?;
    run_snapshot(eng, ctx, sid).await
}

/// Restore snapshot `sid` (a restore job's own, or the `pre-restore` snapshot an undo
/// puts back).
pub async fn run_snapshot(
    eng: &Engine,
    ctx: &JobContext,
    sid: SnapshotId,
) -> Result<Outcome, Stop> {
    // Until the point of no return a transient failure retries the job (nothing changed).
    ctx.set_phase("preflight").await.before_any_change()?;
    let plan = preflight(eng, ctx, sid).await.before_any_change()?;
    let kept_bytes = check_free_space(eng, &plan).await?;
    let file = open_archive(&plan).await?;

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
        undoes: None,
        kept_bytes,
    };
    let parents = plan.parents.clone();
    ctx.set_phase("extracting").await.before_any_change()?;
    write_journal(&eng.journals, &j).await?;
    crash_point!("restore.journal.staging");

    match extract(eng, ctx, &plan, file).await {
        Ok(ids) => {
            for (v, id) in j.volumes.iter_mut().zip(ids) {
                v.new_id = Some(id);
            }
        }
        Err(stop) => {
            discard_staging(eng, &j, &parents).await;
            return Err(stop.before_any_change());
        }
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
        discard_staging(eng, &j, &parents).await;
        return Err(stop.before_any_change());
    }

    // Past the point of no return: from here on, carry on to a safe end.
    if let Err(e) = ctx.set_phase("quiescing").await {
        // Nothing stopped yet: undo the staging; a transient cause is retried (through
        // recovery, as the point of no return was entered).
        discard_staging(eng, &j, &parents).await;
        return Err(Stop::from(e).before_any_change());
    }
    let prepared = async {
        prepare_targets(&mut j.volumes, &parents).await?;
        eng.docker.running_containers(ctx.job.workload_id).await
    }
    .await;
    j.containers = match prepared {
        Ok(c) => c,
        Err(f) => {
            discard_staging(eng, &j, &parents).await;
            return Err(f.into());
        }
    };
    j.state = JournalState::Quiescing;
    if let Err(f) = write_journal(&eng.journals, &j).await {
        discard_staging(eng, &j, &parents).await;
        return Err(f.into());
    }
    crash_point!("restore.journal.quiescing");

    let down = Instant::now();
    if let Err(f) = quiesce_and_swap(eng, ctx, &mut j, &parents).await {
        if ctx.lease_lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        tracing::error!(error = %f, "restore failed before its commit point: rolling back");
        let _ = ctx.set_phase("rolling back").await;
        return match roll_back(eng, &mut j, &parents).await {
            Ok(()) => {
                close_journal(&eng.journals, ctx.id()).await?;
                Err(f.into())
            }
            Err(rb) => Err(Stop::NeedsRecovery(rb)),
        };
    }
    let step = ctx.job.verify.then(|| super::steps::Step::Verify.start());
    let verified = super::verify::after_swap(eng, ctx, &plan, &j, &parents).await;
    drop(step);
    match finish_forward(eng, Some(ctx), &mut j, &parents, Some(down)).await {
        Ok(outcome) => {
            close_journal(&eng.journals, ctx.id()).await?;
            Ok(super::verify::outcome(outcome, verified))
        }
        Err(f) if ctx.lease_lost.is_cancelled() => {
            tracing::error!(error = %f, "lease lost after the commit point; recovery will finish");
            Err(Stop::LeaseLost)
        }
        Err(f) => Err(Stop::NeedsRecovery(f)),
    }
}

/// Right before quiescing: every parent must still be where the config says and every
/// target still the directory pre-flight saw (`volume_changed` otherwise: nothing was
/// touched). A target that does not exist is created empty now, for the swap; its
/// identity goes into the journal with the others.
async fn prepare_targets(
    volumes: &mut [PlannedVolume],
    parents: &[Arc<ParentDir>],
) -> Result<(), Failure> {
    let (vols, ps) = (volumes.to_vec(), parents.to_vec());
    let ids = blocking(move || {
        let mut ids = Vec::with_capacity(vols.len());
        for (v, p) in vols.iter().zip(&ps) {
            recheck(v, p)?;
            if v.old_id.is_none() {
                p.mkdir(v.name()).map_err(|e| {
                    Failure::io(format!("volume {:?}: creating it", v.spec.target), e)
                })?;
            }
            let id = p
                .dir_id(v.name())
                .map_err(|e| changed(v, "its live directory is not a directory", e))?;
            ids.push(id);
        }
        Ok(ids)
    })
    .await?;
    for (v, id) in volumes.iter_mut().zip(ids) {
        v.old_id = id;
    }
    Ok(())
}

fn changed(
    v: &PlannedVolume,
    what: &str,
    cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Failure {
    Failure::internal(
        failure::VOLUME_CHANGED,
        format!(
            "volume {:?}: {what} since pre-flight; nothing was changed",
            v.spec.target
        ),
        cause,
    )
}

/// The parent must still be reached from its base without a symlink and be the held
/// directory, and the target must still be the directory recorded (or still absent).
pub fn recheck(v: &PlannedVolume, p: &ParentDir) -> Result<(), Failure> {
    match p.still_at_its_path() {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(volume = %v.spec.target, parent = %p.path().display(), "a volume's parent directory was replaced or re-pointed");
            return Err(changed(
                v,
                "its parent directory was replaced or re-pointed",
                "parent identity changed",
            ));
        }
        Err(e) => return Err(changed(v, "its parent directory cannot be checked", e)),
    }
    let now = p
        .entry(v.name())
        .map_err(|e| changed(v, "its live directory cannot be checked", e))?;
    let same = match (now, v.old_id) {
        (None, None) => true,
        (Some((id, true)), Some(old)) => id == old,
        _ => false,
    };
    if !same {
        tracing::error!(volume = %v.spec.target, target = %v.target.display(), "a volume's live directory was replaced");
        return Err(changed(
            v,
            "its live directory was replaced",
            "target identity changed",
        ));
    }
    Ok(())
}

/// Step 1: decide everything from the database and the current config; touch nothing.
#[tracing::instrument(skip_all)]
pub async fn preflight(eng: &Engine, ctx: &JobContext, sid: SnapshotId) -> Result<Plan, Failure> {
    let _step = super::steps::Step::Preflight.start();
    let job = &ctx.job;
    let workload = db::workloads::get(&eng.pool, job.workload_id)
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
    let snapshot = db::snapshots::get(&eng.pool, sid).await?.ok_or_else(|| {
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
            FailureCode::Archive("manifest_invalid"),
            "the snapshot's manifest is invalid",
            e,
        )
    })?;
    manifest.validate().map_err(archive::failure_of)?;
    // (A plan changes nothing, so another job's journal does not stop it.)
    if job.kind != JobKind::Plan {
        refuse_pending_journal(eng, workload.id, ctx.id())?;
    }

    // Resolve the CURRENT config, then map manifest volumes onto it by target only.
    let host = paths::resolve_all(&workload, &eng.roots)?;
    paths::refuse_overlaps(&eng.pool, &workload, &host, &eng.roots).await?;
    let by_target: HashMap<&str, &paths::HostVolume> =
        host.iter().map(|h| (h.spec.target.as_str(), h)).collect();
    let mut mapped = Vec::with_capacity(manifest.volumes.len());
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
        mapped.push((mv.index, (*h).clone()));
    }
    if mapped.is_empty() {
        return Err(Failure::new(
            failure::NO_VOLUMES,
            "the snapshot holds no volumes",
        ));
    }
    let job = ctx.id();
    let (volumes, parents) = blocking(move || open_volumes(job, &mapped)).await?;
    Ok(Plan {
        snapshot,
        archive,
        expected_sha256: sha,
        volumes,
        parents,
        manifest,
    })
}

/// A workload whose earlier job still has an unfinished journal here must be
/// recovered first: a second restore must not stack on top of a half-done one.
pub fn refuse_pending_journal(
    eng: &Engine,
    workload: WorkloadId,
    me: JobId,
) -> Result<(), Failure> {
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

/// Open each volume's parent (fd by fd from its trusted base, no symlink anywhere) and
/// record what the swap needs: the target must be a real directory (or absent) on its
/// parent's filesystem (a mount point cannot be swapped atomically), and nothing may sit
/// at the side directory's name yet.
fn open_volumes(
    job: JobId,
    mapped: &[(u32, paths::HostVolume)],
) -> Result<(Vec<PlannedVolume>, Vec<Arc<ParentDir>>), Failure> {
    let mut volumes = Vec::with_capacity(mapped.len());
    let mut parents = Vec::with_capacity(mapped.len());
    for (index, h) in mapped {
        let label = &h.spec.target;
        let (base, rel) = (&h.base, &h.rel);
        let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Failure::new(
                failure::INVALID_VOLUME,
                format!("volume {label:?}: its host path names no directory below its base"),
            ));
        };
        let Some(name) = name.to_str() else {
            return Err(Failure::new(
                failure::INVALID_VOLUME,
                format!("volume {label:?}: its host directory's name is not UTF-8"),
            ));
        };
        let p = ParentDir::open(base, parent_rel).map_err(|e| {
            tracing::warn!(volume = %label, path = %h.path.display(), error = %e, "cannot open a volume's parent");
            if e.raw_os_error() == Some(nix::libc::ENOENT) {
                Failure::new(
                    failure::INVALID_VOLUME,
                    format!("volume {label:?}: the parent of its host directory does not exist"),
                )
            } else {
                Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!(
                        "volume {label:?}: a component of its host path is a symlink or not a directory"
                    ),
                )
            }
            .with_cause(e)
        })?;
        let old_id = match p.entry(OsStr::new(name)) {
            Ok(None) => None,
            Ok(Some((id, true))) => {
                if id.dev != p.id().dev {
                    return Err(Failure::new(
                        failure::CROSS_FILESYSTEM,
                        format!(
                            "volume {label:?}: its host directory is a mount point; it cannot be swapped atomically"
                        ),
                    ));
                }
                Some(id)
            }
            Ok(Some((_, false))) => {
                return Err(Failure::new(
                    failure::PATH_ESCAPES_BASE,
                    format!("volume {label:?}: its host path is a symlink or not a directory"),
                ));
            }
            Err(e) => return Err(Failure::io(format!("volume {label:?}: inspecting it"), e)),
        };
        let side = side_name(job, *index);
        if p.exists(OsStr::new(&side))
            .map_err(|e| Failure::io(format!("volume {label:?}: inspecting its parent"), e))?
        {
            return Err(Failure::new(
                failure::INTERNAL,
                format!("volume {label:?}: a staging directory for this job already exists"),
            ));
        }
        volumes.push(PlannedVolume {
            index: *index,
            spec: h.spec.clone(),
            target: h.path.clone(),
            base: base.clone(),
            parent_rel: parent_rel.to_path_buf(),
            parent_id: p.id(),
            name: name.to_owned(),
            side,
            old_id,
            new_id: None,
        });
        parents.push(Arc::new(p));
    }
    Ok((volumes, parents))
}

/// Step 2: every filesystem must hold what the restore puts on it — the staged volumes
/// next to their targets, and in the snapshot directory the pre-restore archive of the
/// current data plus those of the node's kept copies still waiting for their archive —
/// summed per filesystem. (Kept copies themselves already occupy their filesystems.)
/// Returns the bytes of the current data (what this restore will keep).
#[tracing::instrument(skip_all)]
pub async fn check_free_space(eng: &Engine, plan: &Plan) -> Result<u64, Failure> {
    let volumes = held(&plan.volumes, &plan.parents);
    let manifest = plan.manifest.clone();
    let snapshot_dir = eng.cfg.snapshot_dir.clone();
    let kept = eng.kept.clone();
    blocking(move || {
        let pending = kept
            .unarchived_bytes()
            .map_err(|e| Failure::io("reading the keep records", e))?;
        // dev → (what it is, free bytes, bytes needed)
        let mut need: BTreeMap<u64, (String, u64, u64)> = BTreeMap::new();
        let mut add = |dev: u64, what: String, free: u64, bytes: u64| {
            let e = need.entry(dev).or_insert((what, free, 0));
            e.2 = e.2.saturating_add(bytes);
        };
        let mut current_bytes = 0u64;
        for (v, p) in &volumes {
            let label = &v.spec.target;
            let mv = manifest
                .volume(v.index)
                .expect("planned from this manifest");
            let free = p
                .free_bytes()
                .map_err(|e| Failure::io(format!("volume {label:?}: reading free space"), e))?;
            // Blocks are allocated per file: count a block of slack for each.
            add(
                p.id().dev,
                format!("the filesystem of volume {label:?}"),
                free,
                mv.bytes + mv.files * 4096 + (1 << 20),
            );
            if v.old_id.is_some() {
                let dir = p
                    .open_dir(v.name(), v.old_id)
                    .map_err(|e| changed(v, "its live directory was replaced", e))?;
                let (_, bytes) = dirs::tree_size(dir.as_fd())
                    .map_err(|e| Failure::io(format!("volume {label:?}: measuring its data"), e))?;
                current_bytes = current_bytes.saturating_add(bytes);
            }
        }
        // gzip never grows data by more than a small fraction.
        let at = fsops::existing_ancestor(&snapshot_dir);
        let dev =
            fsops::dev_of(&at).map_err(|e| Failure::io("inspecting the snapshot directory", e))?;
        let free = fsops::free_bytes(&at).map_err(|e| Failure::io("reading free space", e))?;
        let archives = current_bytes.saturating_add(pending);
        let snap_what = if pending > 0 {
            format!(
                "the snapshot directory's filesystem (counting {pending} bytes of kept pre-restore copies still to archive)"
            )
        } else {
            "the snapshot directory's filesystem".into()
        };
        add(dev, snap_what, free, archives + archives / 100 + (1 << 20));
        for (what, free, bytes) in need.values() {
            if free < bytes {
                return Err(Failure::new(
                    failure::INSUFFICIENT_SPACE,
                    format!("{what} has {free} bytes free; this restore needs {bytes}"),
                ));
            }
        }
        Ok(current_bytes)
    })
    .await
}

/// Step 3a: the archive file must exist and have the recorded size. Its sha256 is
/// computed in the same read as the extraction ([`extract`]): one pass over the file.
#[tracing::instrument(skip_all)]
pub async fn open_archive(plan: &Plan) -> Result<File, Failure> {
    let path = plan.archive.clone();
    let size = plan.snapshot.size_bytes;
    blocking(move || {
        let f = match File::open(&path) {
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

/// Step 3b: extract every volume into its side directory (created in the held parent)
/// while the app runs; returns each staged directory's identity.
#[tracing::instrument(skip_all)]
pub async fn extract(
    eng: &Engine,
    ctx: &JobContext,
    plan: &Plan,
    file: File,
) -> Result<Vec<FileId>, Stop> {
    let _step = super::steps::Step::Extract.start();
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let volumes = held(&plan.volumes, &plan.parents);
    let limits = eng.cfg.limits.clone();
    let expected = plan.expected_sha256.clone();
    let planned: Vec<(u32, String)> = plan
        .manifest
        .volumes
        .iter()
        .map(|v| (v.index, v.target.clone()))
        .collect();
    let mut task = tokio::task::spawn_blocking({
        let (read, stop) = (read.clone(), stop.clone());
        move || -> Result<Vec<FileId>, Failure> {
            let mut r = Tracked {
                inner: BufReader::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                read,
                stop,
                half: total / 2,
            };
            let staging: BTreeMap<u32, volsnap_archive::StagingAt<'_>> = volumes
                .iter()
                .map(|(v, p)| {
                    (
                        v.index,
                        volsnap_archive::StagingAt {
                            parent: p.fd(),
                            name: v.side(),
                            label: PathBuf::from(&v.spec.target),
                        },
                    )
                })
                .collect();
            let extracted = archive::extract_at(&mut r, &staging, &limits);
            let refuse = |f: Failure| {
                for (v, p) in &volumes {
                    let _ = p.remove_tree(v.side());
                }
                Err(f)
            };
            // The rest of the file (gzip trailer, padding) is hashed too — also after a
            // refusal, so a file that is not the one the database describes is
            // reported as such rather than by whichever rule its bytes happened to break.
            let drained = if r.stop.load(Ordering::Relaxed) {
                Ok(0)
            } else {
                io::copy(&mut r, &mut io::sink())
            };
            let hash_ok = drained.is_ok() && hex::encode(r.hasher.finalize_reset()) == expected;
            if !hash_ok && !r.stop.load(Ordering::Relaxed) && drained.is_ok() {
                return refuse(Failure::new(
                    failure::CHECKSUM_MISMATCH,
                    "the archive file's sha256 differs from the snapshot's recorded sha256",
                ));
            }
            let own = match extracted {
                Ok(m) => m,
                Err(f) => return refuse(f),
            };
            if let Err(e) = drained {
                return refuse(Failure::io("reading the archive", e));
            }
            // The plan came from the stored manifest; the archive must say the same.
            let actual: Vec<(u32, String)> = own
                .volumes
                .iter()
                .map(|v| (v.index, v.target.clone()))
                .collect();
            if actual != planned {
                return refuse(Failure::new(
                    FailureCode::Archive("manifest_mismatch"),
                    "the archive's manifest differs from the snapshot's recorded manifest",
                ));
            }
            let mut ids = Vec::with_capacity(volumes.len());
            for (v, p) in &volumes {
                match p.dir_id(v.side()) {
                    Ok(Some(id)) => ids.push(id),
                    Ok(None) => {
                        return refuse(Failure::new(
                            failure::INTERNAL,
                            "a staging directory vanished",
                        ));
                    }
                    Err(e) => return refuse(Failure::io("inspecting a staging directory", e)),
                }
            }
            Ok(ids)
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
        (Ok(ids), _) => {
            let _ = ctx.set_progress(total, total).await;
            Ok(ids)
        }
        (Err(_), Some(stop)) => Err(stop),
        (Err(f), None) => Err(f.into()),
    }
}

/// Before the point of no return: remove the staging directories and the journal.
async fn discard_staging(eng: &Engine, j: &Journal, parents: &[Arc<ParentDir>]) {
    let volumes = held(&j.volumes, parents);
    let (job, journals) = (j.job_id, eng.journals.clone());
    let res = blocking(move || {
        for (v, p) in &volumes {
            swap::discard_side(v, p).map_err(|e| Failure::io("removing staging", e))?;
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

/// Step 5: stop the containers, check every identity once more, then exchange every
/// volume; ends at the commit point.
#[tracing::instrument(skip_all)]
pub async fn quiesce_and_swap(
    eng: &Engine,
    ctx: &JobContext,
    j: &mut Journal,
    parents: &[Arc<ParentDir>],
) -> Result<(), Failure> {
    // Undo's own crash-point names (only read with the `failpoints` feature).
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    let undo = j.kind == JobKind::Undo;
    let mut step = super::steps::Step::Stop.start();
    for (i, id) in j.containers.iter().enumerate() {
        eng.docker.stop(id).await?;
        if i == 0 {
            crash_point!("restore.stop.first");
        }
    }
    crash_point!(if undo {
        "undo.stopped"
    } else {
        "restore.stopped"
    });
    step.next(super::steps::Step::Swap);
    let volumes = held(&j.volumes, parents);
    let checked = volumes.clone();
    blocking(move || {
        for (v, p) in &checked {
            recheck(v, p)?;
        }
        Ok(())
    })
    .await?;
    let _ = ctx.set_phase("swapping").await;
    j.state = JournalState::Swapping;
    write_journal(&eng.journals, j).await?;
    crash_point!(if undo {
        "undo.journal.swapping"
    } else {
        "restore.journal.swapping"
    });
    let mode = eng.cfg.swap_mode;
    blocking(move || {
        swap::swap_in(&volumes, mode).map_err(|e| Failure::io("swapping the volumes", e))?;
        crash_point!(if undo {
            "undo.swapped"
        } else {
            "restore.swapped"
        });
        Ok(())
    })
    .await?;
    j.state = JournalState::Committed;
    write_journal(&eng.journals, j).await?;
    crash_point!(if undo {
        "undo.journal.committed"
    } else {
        "restore.journal.committed"
    });
    Ok(())
}

/// Before the commit point: put every volume back as it was, drop the staging, and
/// start the containers that were running. Idempotent. Before `swapping` nothing was
/// exchanged, so only the staging goes (the targets are not even looked at: one that
/// was replaced meanwhile is not ours to judge).
pub async fn roll_back(
    eng: &Engine,
    j: &mut Journal,
    parents: &[Arc<ParentDir>],
) -> Result<(), Failure> {
    let volumes = held(&j.volumes, parents);
    let (mode, swapping) = (eng.cfg.swap_mode, j.state == JournalState::Swapping);
    // An undo's side directory is a kept copy, never staging: it is swapped back but
    // never deleted.
    let keep_side = j.kind == JobKind::Undo;
    blocking(move || {
        if swapping {
            swap::swap_back(&volumes, mode, !keep_side)
        } else if keep_side {
            Ok(())
        } else {
            volumes
                .iter()
                .try_for_each(|(v, p)| swap::discard_side(v, p))
        }
        .map_err(|e| Failure::io("rolling the volumes back", e))
    })
    .await?;
    crash_point!("recovery.rolled_back");
    if let Err(f) = eng.docker.restart_after_quiesce(&j.containers).await {
        tracing::error!(error = %f, "containers did not come back after the rollback");
    }
    Ok(())
}

/// After the commit point (the run, and recovery): redeploy, then keep the displaced
/// data where the swap put it (a durable keep record; its archive is a background job
/// of its own). Idempotent from any state on.
pub async fn finish_forward(
    eng: &Engine,
    ctx: Option<&JobContext>,
    j: &mut Journal,
    parents: &[Arc<ParentDir>],
    down_since: Option<Instant>,
) -> Result<Outcome, Failure> {
    let phase = |p: &'static str| async move {
        if let Some(ctx) = ctx {
            let _ = ctx.set_phase(p).await;
        }
    };
    let undo = j.kind == JobKind::Undo;
    let mut redeploy: Option<Failure> = None;
    if j.state == JournalState::Committed {
        let volumes = held(&j.volumes, parents);
        blocking(move || {
            swap::check_committed(&volumes).map_err(|e| Failure::io("finishing the swap", e))
        })
        .await?;
        crash_point!("restore.swap.checked");
        phase("redeploying").await;
        redeploy = redeploy_containers(eng, &j.containers).await.err();
        // Recovery's roll-forward (no downtime clock): confirm they stay up, as a
        // rollback does.
        if redeploy.is_none() && down_since.is_none() {
            redeploy = eng.docker.confirm_running(&j.containers).await.err();
        }
        let downtime = down_since.map(|t| t.elapsed());
        if let Some(d) = downtime {
            tracing::info!(
                downtime_ms = d.as_millis() as u64,
                "containers were stopped for this long"
            );
        }
        if undo {
            crash_point!("undo.started");
        }
        j.state = JournalState::Redeployed;
        write_journal(&eng.journals, j).await?;
        crash_point!("restore.journal.redeployed");
        record_stats(eng, j, downtime).await;
    } else if let Err(f) = eng.docker.start_all_and_wait(&j.containers).await {
        // Recovery after the redeploy: make sure the containers run.
        redeploy = Some(f);
    }
    if !matches!(
        j.state,
        JournalState::Redeployed | JournalState::Archiving { .. } | JournalState::Archived { .. }
    ) {
        return Err(Failure::new(
            failure::INTERNAL,
            format!("unexpected journal state {:?}", j.state),
        ));
    }
    phase("keeping the pre-restore copy").await;
    let _step = super::steps::Step::Keep.start();
    let rec = super::keep::keep_after_commit(eng, j).await?;
    Ok(match redeploy {
        None => Outcome::Succeeded,
        Some(f) => Outcome::Failed {
            code: f.code.into(),
            message: format!(
                "the data was {}, but the workload did not come back: {}; the previous data is kept next to each volume and archived in the background as snapshot {}",
                if undo { "put back" } else { "restored" },
                f.message,
                rec.snapshot_id
            ),
        },
    })
}

async fn redeploy_containers(eng: &Engine, ids: &[String]) -> Result<(), Failure> {
    let _step = super::steps::Step::Redeploy.start();
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
        Some(sid) => match db::snapshots::get(&eng.pool, sid).await {
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
