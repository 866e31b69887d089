//! The write-ahead journal: one JSON file per job in `$VOLSNAP_STATE_DIR/journal/`,
//! replaced atomically and durably (temp file, fsync, rename, directory fsync) BEFORE
//! each step it announces. Recovery reads it to decide: before the commit point roll
//! back, after it roll forward. Which side of a swap a volume is on is told by the
//! identity (device, inode) of the directory at the target's name, compared with the
//! identities recorded here — never by anything written inside a volume, and never by
//! the journal's state alone (a crash can fall between a rename and the next write).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use serde::{Deserialize, Serialize};
use volsnap_shared::domain::{JobKind, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

use super::dirs::FileId;
use super::error::Failure;
use super::fsops;

/// One volume of a restore, as planned in pre-flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedVolume {
    /// The manifest index of this volume in the snapshot being restored.
    pub index: u32,
    /// The volume from the workload's current config.
    pub spec: VolumeSpec,
    /// The live host directory (for the worker's log only; never resolved again).
    pub target: PathBuf,
    /// How to open the target's parent again, fd by fd with no symlink: the trusted
    /// base and the parent's path below it, and the parent's identity.
    pub base: PathBuf,
    pub parent_rel: PathBuf,
    pub parent_id: FileId,
    /// The target's name in that parent.
    pub name: String,
    /// The side directory's name in the same parent (same filesystem): first the
    /// staging directory (new data), after the exchange the pre-restore copy (old data).
    pub side: String,
    /// The live directory before the swap (`None` until it exists).
    pub old_id: Option<FileId>,
    /// The staged directory (`None` until the extraction finished).
    pub new_id: Option<FileId>,
}

impl PlannedVolume {
    pub fn name(&self) -> &OsStr {
        OsStr::new(&self.name)
    }

    pub fn side(&self) -> &OsStr {
        OsStr::new(&self.side)
    }

    /// The name a three-rename swap parks a directory under.
    pub fn parking(&self) -> OsString {
        format!("{}.swap", self.side).into()
    }

    /// The name the pre-restore copy is moved to (atomically) before it is deleted,
    /// so a crash in the middle of the deletion never leaves a half-deleted copy under
    /// the side name.
    pub fn trash(&self) -> OsString {
        format!("{}.del", self.side).into()
    }
}

/// Where a job is. Each variant is written before the step it names begins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JournalState {
    /// Restore: extracting into the side directories; targets untouched.
    Staging,
    /// Restore: stopping `containers` (all listed ones were running); targets untouched.
    Quiescing,
    /// Restore: exchanging volumes; the identities at the targets say which are done.
    Swapping,
    /// Restore: every volume holds the new data. The commit point: roll forward.
    Committed,
    /// Restore: containers started again; the old data waits to be archived.
    Redeployed,
    /// Restore: archiving the old data as the `pre-restore` snapshot `snapshot_id`.
    Archiving { snapshot_id: SnapshotId },
    /// Restore: the pre-restore snapshot is ready; the old copies may be deleted.
    Archived { snapshot_id: SnapshotId },
    /// Capture: writing the archive (containers listed are stopped, if any).
    Capturing,
    /// The node is consistent again; only the job row remains to be finished.
    Finished { outcome: Outcome },
}

/// A job's end as recovery (or the run) decided it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed {
        code: String,
        message: String,
    },
    /// Nothing changed (or all of it was undone before the first destructive step): the
    /// job goes back to the queue while it has retries left, else fails with this.
    Untouched {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    pub format: u32,
    pub job_id: JobId,
    pub kind: JobKind,
    pub workload_id: WorkloadId,
    /// Restore: the snapshot restored. Capture: the snapshot being written.
    pub snapshot_id: Option<SnapshotId>,
    pub volumes: Vec<PlannedVolume>,
    /// Container ids that were running and that this job stops; recovery starts them.
    pub containers: Vec<String>,
    /// Capture: the archive being written (temp name) and its final name.
    pub partial: Option<PathBuf>,
    pub state: JournalState,
    /// Undo: the job it reverts (whose keep record it releases after its commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<JobId>,
    /// Restore and undo: bytes of the data the swap displaces (kept, then archived).
    #[serde(default)]
    pub kept_bytes: u64,
}

/// Format 2: volumes are identified by (device, inode), not by marker files.
pub const FORMAT: u32 = 2;

/// The node's journal directory.
#[derive(Debug, Clone)]
pub struct JournalDir(PathBuf);

impl JournalDir {
    pub fn new(state_dir: &Path) -> JournalDir {
        JournalDir(state_dir.join("journal"))
    }

    pub fn ensure(&self) -> io::Result<()> {
        if !self.0.is_dir() {
            std::fs::create_dir_all(&self.0)?;
            fsops::fsync_dir(fsops::parent(&self.0))?;
        }
        Ok(())
    }

    pub fn path(&self, job: JobId) -> PathBuf {
        self.0.join(format!("{job}.json"))
    }

    /// Durably record `j` (file and directory fsynced) before the step it announces.
    pub fn write(&self, j: &Journal) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(j).map_err(io::Error::other)?;
        let tmp = self.temp_path(j.job_id);
        let mut f = lock_temp_file(&tmp)?;
        f.set_len(0)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        // Renamed while still locked: a sweep that opened the temp name before the
        // rename finds it locked and leaves it alone.
        std::fs::rename(&tmp, self.path(j.job_id))?;
        fsops::fsync_dir(&self.0)
    }

    /// The temp name a rewrite of `job`'s journal goes through.
    pub fn temp_path(&self, job: JobId) -> PathBuf {
        self.0.join(format!(".{job}.json.tmp"))
    }

    pub fn read(&self, job: JobId) -> io::Result<Option<Journal>> {
        match std::fs::read(self.path(job)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Close a job's journal (durably).
    pub fn remove(&self, job: JobId) -> io::Result<()> {
        fsops::remove_file(&self.path(job))
    }

    /// Temp files of journal rewrites a crash interrupted (the journal itself is intact:
    /// the rename never happened). A writer holds an exclusive `flock` on its temp file
    /// from before its first byte until after the rename, and the lock dies with the
    /// process; so a temp file whose lock this sweep can take is provably not being
    /// written (by any process on this node), and one it cannot take is left alone.
    /// Returns how many were removed.
    pub fn remove_stale_temp_files(&self) -> io::Result<usize> {
        let rd = match std::fs::read_dir(&self.0) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for ent in rd {
            let ent = ent?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                && name.ends_with(".json.tmp")
                && remove_if_unlocked(&ent.path())?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Jobs with a journal on this node.
    pub fn list(&self) -> io::Result<Vec<JobId>> {
        let mut out = vec![];
        let rd = match std::fs::read_dir(&self.0) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for ent in rd {
            let name = ent?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether an open journal on this node matches `pred`. A directory or journal that
    /// cannot be read counts as a match: it is kept for recovery, so whatever waits for
    /// it must go on waiting.
    pub fn any_open(&self, pred: impl Fn(&Journal) -> bool) -> bool {
        let Ok(ids) = self.list() else {
            return true;
        };
        ids.into_iter().any(|id| match self.read(id) {
            Ok(Some(j)) => pred(&j),
            Ok(None) => false,
            Err(_) => true,
        })
    }
}

/// Open (creating) the temp file at `tmp` and hold an exclusive lock on it. Retries
/// when a sweep removed the name between the open and the lock, so the lock returned
/// is always on the file the name refers to.
fn lock_temp_file(tmp: &Path) -> io::Result<Flock<File>> {
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(tmp)?;
        let locked =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        if same_file(tmp, &locked)? {
            return Ok(locked);
        }
    }
}

/// Whether `path` still names the open file `f`.
fn same_file(path: &Path, f: &File) -> io::Result<bool> {
    let held = f.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == held.dev() && m.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove a journal temp file unless a live writer holds its lock. Ok(true): removed.
fn remove_if_unlocked(path: &Path) -> io::Result<bool> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let locked = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::debug!(path = %path.display(), "journal temp file is being written; left alone");
            return Ok(false);
        }
        Err((_, e)) => return Err(e.into()),
    };
    // Under our lock no writer can rename this file; but the name may already point to
    // a newer file (ours was renamed before we locked it).
    if !same_file(path, &locked)? {
        return Ok(false);
    }
    fsops::remove_file(path)?;
    Ok(true)
}

/// Write (replace) a job's journal, off the async executor.
pub async fn write_journal(journals: &JournalDir, j: &Journal) -> Result<(), Failure> {
    let (journals, j) = (journals.clone(), j.clone());
    super::context::blocking(move || {
        journals
            .write(&j)
            .map_err(|e| Failure::io("writing the journal", e))
    })
    .await
}

/// Remove a finished job's journal, off the async executor.
pub async fn close_journal(journals: &JournalDir, job: JobId) -> Result<(), Failure> {
    let journals = journals.clone();
    super::context::blocking(move || {
        journals
            .remove(job)
            .map_err(|e| Failure::io("closing the journal", e))
    })
    .await?;
    crate::crash_point!("journal.closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(job: JobId) -> Journal {
        Journal {
            format: FORMAT,
            job_id: job,
            kind: JobKind::Restore,
            workload_id: WorkloadId::new(),
            snapshot_id: None,
            volumes: vec![],
            containers: vec![],
            partial: None,
            state: JournalState::Staging,
            undoes: None,
            kept_bytes: 0,
        }
    }

    #[test]
    fn sweep_removes_unlocked_temp_files_and_keeps_locked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let jd = JournalDir::new(dir.path());
        jd.ensure().unwrap();
        let (dead, live) = (JobId::new(), JobId::new());
        std::fs::write(jd.temp_path(dead), b"half a journal").unwrap();
        let held = lock_temp_file(&jd.temp_path(live)).unwrap();
        assert_eq!(jd.remove_stale_temp_files().unwrap(), 1);
        assert!(!jd.temp_path(dead).exists());
        assert!(
            jd.temp_path(live).exists(),
            "a live writer's temp file was removed"
        );
        drop(held);
        assert_eq!(jd.remove_stale_temp_files().unwrap(), 1);
    }

    /// A writer and a sweeper racing: every write succeeds and lands whole.
    #[test]
    fn writes_survive_concurrent_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let jd = JournalDir::new(dir.path());
        jd.ensure().unwrap();
        let job = JobId::new();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = std::thread::spawn({
            let (jd, stop) = (jd.clone(), stop.clone());
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    jd.remove_stale_temp_files().unwrap();
                }
            }
        });
        let j = journal(job);
        for _ in 0..300 {
            jd.write(&j)
                .expect("a journal write failed under a concurrent sweep");
            assert_eq!(jd.read(job).unwrap().as_ref(), Some(&j));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sweeper.join().unwrap();
    }
}
