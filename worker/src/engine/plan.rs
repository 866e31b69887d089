//! A restore's dry run (a `plan` job, issue 12): the restore's whole pre-flight against
//! the workload's CURRENT config — path resolution, containment, overlaps, free space
//! per filesystem, the snapshot file's presence and sha256, the archive's caps — and a
//! streaming diff of the live volumes against the snapshot, per volume: what a restore
//! would add, change and remove.
//!
//! It touches nothing: no staging directory, no journal, no container. It takes no
//! workload lock (the queue runs it beside a capture or restore of the same workload),
//! so what it reports is the state at the moment it ran. The live volumes are read
//! through the parents pre-flight opened fd by fd (`openat(parent, name, O_DIRECTORY |
//! O_NOFOLLOW)`, then the diff's own fd-relative walk), never by path.
//!
//! A refusing pre-flight fails the job with the code the restore would have got, and
//! its result says which step refused. The result is stored in `jobs.result`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use volsnap_archive::diff::{self as vdiff, DiffError, DiffOptions, DiffSummary, LiveRoots};
use volsnap_shared::failure::{self, FailureCode};
use volsnap_shared::queue::JobContext;

use super::archive;
use super::context::Engine;
use super::dirs::{FileId, ParentDir};
use super::error::{Failure, Stop};
use super::journal::{Outcome, PlannedVolume};
use super::restore::{self, Plan};

/// Sample paths kept per set (added, changed, removed) of a volume.
pub const SAMPLES: usize = 20;

/// Which directory of a volume is compared with the snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The live directory as pre-flight found it (`old_id`; absent: everything added).
    Live,
    /// The directory the swap put in place (`new_id`): verification after a restore.
    Restored,
}

/// One volume of a plan's result: the diff plus where it lives.
#[derive(Debug, Serialize)]
pub struct PlannedVolumeResult {
    #[serde(flatten)]
    pub diff: vdiff::VolumeDiff,
    /// The host directory the restore would replace (from the current config).
    pub host_path: PathBuf,
    /// Whether that directory exists now (a restore creates it otherwise).
    pub exists: bool,
}

/// Sums over every volume.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub added_files: u64,
    pub added_bytes: u64,
    pub changed_files: u64,
    pub changed_bytes: u64,
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
}

impl Totals {
    pub fn of<'a>(volumes: impl IntoIterator<Item = &'a vdiff::VolumeDiff>) -> Totals {
        let mut t = Totals::default();
        for v in volumes {
            t.added_files += v.added.files;
            t.added_bytes += v.added.bytes;
            t.changed_files += v.changed.files;
            t.changed_bytes += v.changed.bytes;
            t.removed_files += v.removed.files;
            t.removed_bytes += v.removed.bytes;
            t.unchanged_files += v.unchanged_files;
            t.unchanged_bytes += v.unchanged_bytes;
        }
        t
    }
}

/// A refusal as the result records it.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// The pre-flight step that refused: `preflight`, `free_space`, `snapshot_file`,
    /// `checksum` or `archive`.
    pub step: &'static str,
    pub code: String,
    pub message: String,
}

/// `jobs.result` of a plan job.
#[derive(Debug, Serialize)]
pub struct PlanResult {
    /// True when every pre-flight check passed: a restore now would proceed.
    pub restorable: bool,
    /// The checks that passed, in order.
    pub checks_passed: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
    /// Per manifest volume (empty when refused before the diff).
    pub volumes: Vec<PlannedVolumeResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// The snapshot archive's size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_bytes: Option<u64>,
}

impl PlanResult {
    fn refused(checks_passed: Vec<&'static str>, step: &'static str, f: &Failure) -> PlanResult {
        PlanResult {
            restorable: false,
            checks_passed,
            refused: Some(Refusal {
                step,
                code: f.code.into(),
                message: f.message.clone(),
            }),
            volumes: vec![],
            totals: None,
            archive_bytes: None,
        }
    }
}

#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn run(eng: &Engine, ctx: &JobContext) -> Result<Outcome, Stop> {
    let mut passed: Vec<&'static str> = vec![];
    ctx.set_phase("preflight").await?;
    let Some(sid) = ctx.job.snapshot_id else {
        let f = Failure::new(failure::SNAPSHOT_NOT_READY, "the job names no snapshot");
        return refuse(ctx, passed, "preflight", f).await;
    };
    let plan = match restore::preflight(eng, ctx, sid).await {
        Ok(p) => p,
        Err(f) => return refuse(ctx, passed, "preflight", f).await,
    };
    passed.push("preflight");
    if let Err(f) = restore::check_free_space(eng, &plan).await {
        return refuse(ctx, passed, "free_space", f).await;
    }
    passed.push("free_space");

    ctx.set_phase("comparing").await?;
    let file = match open_archive(&plan) {
        Ok(f) => f,
        Err(f) => return refuse(ctx, passed, "snapshot_file", f).await,
    };
    passed.push("snapshot_file");
    let archive_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let held = restore::held(&plan.volumes, &plan.parents);
    let diffed = diff_held(
        eng,
        ctx,
        file,
        plan.expected_sha256.clone(),
        held.clone(),
        Side::Live,
    )
    .await;
    let summary = match diffed {
        Ok(s) => s,
        Err(DiffFailure::Stop(s)) => return Err(s),
        Err(DiffFailure::Refused(step, f)) => {
            if step == "archive" {
                passed.push("checksum");
            }
            return refuse(ctx, passed, step, f).await;
        }
    };
    passed.push("checksum");
    passed.push("archive");
    let volumes: Vec<PlannedVolumeResult> = summary
        .volumes
        .into_iter()
        .map(|d| {
            let v = held.iter().find(|(v, _)| v.index == d.index);
            PlannedVolumeResult {
                host_path: v.map(|(v, _)| v.target.clone()).unwrap_or_default(),
                exists: v.is_some_and(|(v, _)| v.old_id.is_some()),
                diff: d,
            }
        })
        .collect();
    let result = PlanResult {
        restorable: true,
        checks_passed: passed,
        refused: None,
        totals: Some(Totals::of(volumes.iter().map(|v| &v.diff))),
        volumes,
        archive_bytes: Some(archive_bytes),
    };
    ctx.set_result(&to_json(&result)).await?;
    Ok(Outcome::Succeeded)
}

/// Record the refusal and fail the job with the restore's code; a transient fault is
/// retried instead (nothing was touched).
async fn refuse(
    ctx: &JobContext,
    passed: Vec<&'static str>,
    step: &'static str,
    f: Failure,
) -> Result<Outcome, Stop> {
    if f.transient {
        return Err(Stop::Retry(f));
    }
    tracing::info!(job_id = %ctx.id(), step, code = %f.code, "plan: a restore would be refused");
    ctx.set_result(&to_json(&PlanResult::refused(passed, step, &f)))
        .await?;
    Err(Stop::Failed(f))
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("plan results serialise")
}

/// The snapshot's archive file, which must exist and have the recorded size (its
/// sha256 is checked while it is compared).
fn open_archive(plan: &Plan) -> Result<File, Failure> {
    let f = match File::open(&plan.archive) {
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
    if plan.snapshot.size_bytes.is_some_and(|s| s as u64 != len) {
        return Err(Failure::new(
            failure::CHECKSUM_MISMATCH,
            "the archive file's size differs from the snapshot's recorded size",
        ));
    }
    Ok(f)
}

/// Why [`diff_held`] did not produce a summary.
pub enum DiffFailure {
    /// The job must stop (cancel, shutdown, lost lease).
    Stop(Stop),
    /// The comparison was refused: `checksum` (the file is not the recorded one) or
    /// `archive` (a rule or cap of the format, or reading failed).
    Refused(&'static str, Failure),
}

/// A reader that hashes and counts what passes through, and fails once told to stop.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Compare the archive `file` with one directory of each held volume (see [`Side`]),
/// checking the file's sha256 on the way (one read of the archive). Runs off the
/// executor; reports the archive bytes read as progress, and stops on a cancel
/// request, a shutdown or a lost lease.
pub async fn diff_held(
    eng: &Engine,
    ctx: &JobContext,
    file: File,
    expected_sha256: String,
    volumes: Vec<(PlannedVolume, Arc<ParentDir>)>,
    side: Side,
) -> Result<DiffSummary, DiffFailure> {
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let opts = DiffOptions {
        limits: eng.cfg.limits.clone(),
        samples: SAMPLES,
    };
    let mut task = tokio::task::spawn_blocking({
        let (read, stop) = (read.clone(), stop.clone());
        move || -> Result<DiffSummary, (&'static str, Failure)> {
            let mut roots = LiveRoots::new();
            for (v, p) in &volumes {
                let fd = open_side(v, p, side).map_err(|f| ("archive", f))?;
                roots.insert(v.index, fd);
            }
            let mut r = Hashing {
                inner: BufReader::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                read,
                stop,
            };
            let res = vdiff::diff(&mut r, roots, &opts);
            // Whatever the diff thought of it, the file must be the recorded one: a
            // refusal of a file that is not is reported as the checksum mismatch.
            let drained = io::copy(&mut r, &mut io::sink());
            let sha_ok = drained.is_ok() && hex::encode(r.hasher.finalize()) == expected_sha256;
            if drained.is_ok() && !sha_ok {
                return Err((
                    "checksum",
                    Failure::new(
                        failure::CHECKSUM_MISMATCH,
                        "the archive file's sha256 differs from the snapshot's recorded sha256",
                    ),
                ));
            }
            let summary = res.map_err(|e| ("archive", failure_of_diff(e)))?;
            if let Err(e) = drained {
                return Err(("archive", Failure::io("reading the snapshot archive", e)));
            }
            Ok(summary)
        }
    });
    let mut why: Option<Stop> = None;
    let mut ticks = 0u32;
    let res = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if why.is_some() {
            continue;
        }
        ticks += 1;
        if ctx.lease_lost.is_cancelled() {
            why = Some(Stop::LeaseLost);
        } else if ctx.shutdown.is_cancelled() && !ctx.entered_point_of_no_return() {
            // (Past the point of no return — a verification — it carries on.)
            why = Some(Stop::Shutdown);
        } else if let Err(e) = ctx.set_progress(read.load(Ordering::Relaxed), total).await {
            why = Some(e.into());
        } else if ticks.is_multiple_of(4) && !ctx.entered_point_of_no_return() {
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
    let res = res.map_err(|e| {
        DiffFailure::Stop(Stop::Failed(Failure::internal(
            failure::INTERNAL,
            "the comparison panicked",
            e,
        )))
    })?;
    match (res, why) {
        (_, Some(stop)) => Err(DiffFailure::Stop(stop)),
        (Ok(s), None) => {
            let _ = ctx.set_progress(total, total).await;
            Ok(s)
        }
        (Err((step, f)), None) => Err(DiffFailure::Refused(step, f)),
    }
}

/// The volume's directory to compare, opened in its held parent, never through a
/// symlink, and checked to be the very directory the job recorded.
fn open_side(v: &PlannedVolume, p: &ParentDir, side: Side) -> Result<Option<OwnedFd>, Failure> {
    let want: Option<FileId> = match side {
        Side::Live => v.old_id,
        Side::Restored => v.new_id,
    };
    let Some(want) = want else {
        return match side {
            Side::Live => Ok(None),
            Side::Restored => Err(Failure::new(
                failure::INTERNAL,
                format!("volume {:?}: no restored directory recorded", v.spec.target),
            )),
        };
    };
    p.open_dir(v.name(), Some(want)).map(Some).map_err(|e| {
        Failure::internal(
            failure::VOLUME_CHANGED,
            format!(
                "volume {:?}: its live directory was replaced while it was being compared",
                v.spec.target
            ),
            e,
        )
    })
}

/// A diff error as a job failure: the archive's rules as `archive_<rule>`, I/O as
/// internal (or `insufficient_space`), the rest under the diff's own code.
pub fn failure_of_diff(e: DiffError) -> Failure {
    match e {
        DiffError::Archive(a) => archive::failure_of(a),
        DiffError::Io { what, source } => Failure::io(what, source),
        other => Failure::new(FailureCode::Other(other.code()), other.to_string()),
    }
}
