//! The write-ahead journal: one JSON file per job in `$VOLSNAP_STATE_DIR/journal/`,
//! replaced atomically and durably (temp file, fsync, rename, directory fsync) BEFORE
//! each step it announces. Recovery reads it to decide: before the commit point roll
//! back, after it roll forward. Which side of a swap a volume is on is read from the
//! marker files inside the directories, never from the journal alone (a crash can
//! fall between a rename and the next journal write).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use volsnap_shared::domain::{JobKind, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

use super::fsops;

/// One volume of a restore, as planned in pre-flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedVolume {
    /// The manifest index of this volume in the snapshot being restored.
    pub index: u32,
    /// The volume from the workload's current config.
    pub spec: VolumeSpec,
    /// The live host directory.
    pub target: PathBuf,
    /// Next to `target` (same parent, same filesystem): first the staging directory
    /// (new data), after the exchange the pre-restore copy (old data).
    pub side: PathBuf,
}

/// Where a job is. Each variant is written before the step it names begins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JournalState {
    /// Restore: extracting into the side directories; targets untouched.
    Staging,
    /// Restore: stopping `containers` (all listed ones were running); targets untouched.
    Quiescing,
    /// Restore: exchanging volumes; the markers say which ones are done.
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
    Failed { code: String, message: String },
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
}

pub const FORMAT: u32 = 1;

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
        fsops::write_durably(&self.path(j.job_id), &bytes)
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
    /// the rename never happened).
    pub fn remove_stale_temp_files(&self) -> io::Result<()> {
        let rd = match std::fs::read_dir(&self.0) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                fsops::remove_file(&ent.path())?;
            }
        }
        Ok(())
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
}
