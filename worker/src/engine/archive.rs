//! The engine's use of the `volsnap-archive` crate, in one place: writing a snapshot
//! of host directories, reading a manifest, extracting into staging directories, and
//! mapping archive errors to job failure codes (`archive_<rule>`), and writing an
//! archive durably (through `<dest>.partial`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use volsnap_archive as va;
use volsnap_shared::db;
use volsnap_shared::domain::VolumeSpec;
use volsnap_shared::failure::{self, FailureCode};
use volsnap_shared::ids::WorkloadId;

use super::context::Progress;
use super::error::Failure;
use super::fsops;

pub use va::{Limits, Manifest};

/// One host directory to put into a snapshot.
#[derive(Debug, Clone)]
pub struct SourceVolume {
    pub index: u32,
    pub spec: VolumeSpec,
    /// The host directory (logs only when `root` is set).
    pub path: PathBuf,
    /// The directory already opened through a held parent: read through this fd.
    pub root: Option<Arc<OwnedFd>>,
}

/// What a written archive is.
#[derive(Debug, Clone)]
pub struct Written {
    pub sha256: String,
    pub size: u64,
    pub manifest: serde_json::Value,
}

impl Written {
    /// The row fields for this archive stored at `archive_path`.
    pub fn record<'a>(&'a self, archive_path: &'a str) -> db::snapshots::ArchiveRecord<'a> {
        db::snapshots::ArchiveRecord {
            archive_path,
            size: self.size,
            sha256: &self.sha256,
            manifest: &self.manifest,
        }
    }
}

/// Map an archive error to a job failure: refusals and caps are client-actionable
/// `archive_<rule>`; a full disk is `insufficient_space`; other I/O is internal.
pub fn failure_of(e: va::ArchiveError) -> Failure {
    match e.rule() {
        "no_space" => Failure::new(
            failure::INSUFFICIENT_SPACE,
            "no space left on a filesystem while writing the data",
        )
        .with_cause(e),
        "io" => Failure::internal(failure::IO, "I/O error while reading or writing data", e),
        rule => {
            let msg = format!("the snapshot archive was refused: {e}");
            Failure::new(FailureCode::Archive(rule), msg).with_cause(e)
        }
    }
}

/// Write `volumes` as an archive into `out` (the caller makes it durable).
pub fn write(
    out: &mut (impl std::io::Write + Send),
    workload: WorkloadId,
    volumes: &[SourceVolume],
    limits: &Limits,
    level: u32,
    mut progress: impl FnMut(u64, u64),
) -> Result<Written, Failure> {
    let inputs: Vec<va::VolumeInput> = volumes
        .iter()
        .map(|v| va::VolumeInput {
            index: v.index,
            target: v.spec.target.clone(),
            scope: v.spec.scope.as_str().to_owned(),
            source: v.spec.source.clone(),
            path: v.path.clone(),
            root: v.root.clone(),
        })
        .collect();
    let opts = va::WriteOptions {
        limits: limits.clone(),
        level,
        ..Default::default()
    };
    let s = va::write_archive(out, &workload.to_string(), &inputs, &opts, &mut progress)
        .map_err(failure_of)?;
    let manifest = serde_json::from_slice(&s.manifest.to_json())
        .map_err(|e| Failure::internal(failure::INTERNAL, "encoding the manifest", e))?;
    Ok(Written {
        sha256: s.sha256,
        size: s.size,
        manifest,
    })
}

pub fn read_manifest(path: &Path) -> Result<Manifest, Failure> {
    va::read_manifest(path).map_err(failure_of)
}

/// Extract into staging directories named in parent directory fds the engine holds.
pub fn extract_at(
    reader: impl Read + Send,
    staging: &BTreeMap<u32, va::StagingAt<'_>>,
    limits: &Limits,
) -> Result<Manifest, Failure> {
    let opts = va::ExtractOptions {
        limits: limits.clone(),
        ..Default::default()
    };
    va::extract_at(reader, staging, &opts, &mut |_, _| {})
        .map(|s| s.manifest)
        .map_err(failure_of)
}

/// Check a whole archive (every rule, nothing written): manifest, size and sha256.
pub fn verify_full(path: &Path, limits: &Limits) -> Result<va::VerifySummary, Failure> {
    va::verify(path, limits).map_err(failure_of)
}

/// Write an archive to `<dest>.partial`, fsync it, rename it into place, fsync the dir.
pub fn write_archive_durably(
    dest: &Path,
    workload: WorkloadId,
    sources: &[SourceVolume],
    limits: &Limits,
    level: u32,
    progress: &Progress,
) -> Result<Written, Failure> {
    write_archive_durably_until(
        dest,
        workload,
        sources,
        limits,
        level,
        progress,
        &AtomicBool::new(false),
    )
}

/// [`write_archive_durably`] that fails (leaving no partial file) once `stop` is set.
pub fn write_archive_durably_until(
    dest: &Path,
    workload: WorkloadId,
    sources: &[SourceVolume],
    limits: &Limits,
    level: u32,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Written, Failure> {
    let dir = fsops::parent(dest);
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::io("creating the snapshot directory", e))?;
        // The new workload directory must survive a crash with the archive in it.
        fsops::fsync_dir(fsops::parent(dir))
            .map_err(|e| Failure::io("syncing the snapshot directory", e))?;
    }
    let partial = partial_path(dest);
    fsops::remove_file(&partial).map_err(|e| Failure::io("removing a partial archive", e))?;
    let out = File::create(&partial).map_err(|e| Failure::io("creating the archive", e))?;
    let mut w = StopWriter { inner: out, stop };
    let res = write(&mut w, workload, sources, limits, level, |d, t| {
        progress.set(d, t)
    });
    let written = match res {
        Ok(w) => w,
        Err(f) => {
            let _ = fsops::remove_file(&partial);
            return Err(f);
        }
    };
    let out = w.inner;
    out.sync_all()
        .map_err(|e| Failure::io("syncing the archive", e))?;
    drop(out);
    std::fs::rename(&partial, dest).map_err(|e| Failure::io("placing the archive", e))?;
    fsops::fsync_dir(dir).map_err(|e| Failure::io("syncing the snapshot directory", e))?;
    Ok(written)
}

/// A file writer that fails once told to stop (a cancelled background archive).
struct StopWriter<'a> {
    inner: File,
    stop: &'a AtomicBool,
}

impl io::Write for StopWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}
