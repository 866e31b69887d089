//! A node-local lock per workload: an exclusive `flock` on
//! `$VOLSNAP_STATE_DIR/locks/<workload>.lock`, held while the engine touches that
//! workload's volumes.
//!
//! The queue's advisory lock lives in Postgres and is released when the holder's
//! connection dies — also when a worker is merely cut off from the database while its
//! process still runs a step. The kernel releases a `flock` only when the process dies,
//! so a recovering worker on the same node can never run beside a predecessor that is
//! still alive and finishing a blocking step.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use volsnap_shared::ids::{JobId, WorkloadId};

/// Held while alive; dropping it unlocks.
pub struct WorkloadLock {
    _lock: Flock<File>,
}

pub fn lock_path(state_dir: &Path, workload: WorkloadId) -> PathBuf {
    state_dir.join("locks").join(format!("{workload}.lock"))
}

/// The lock of one kept pre-restore copy (the keep record of job `job`,
/// [`super::keep`]): held by its archive job while it reads the copy, by an undo that
/// swaps it back, and by the maintenance sweep while it changes the record or removes
/// the copy. A pre-restore archive holds no workload lock (it reads data that is no
/// longer live), so a restore or undo of the workload never waits for it.
pub fn copy_lock_path(state_dir: &Path, job: JobId) -> PathBuf {
    state_dir.join("locks").join(format!("kept-{job}.lock"))
}

/// Take the lock if nobody on this node holds it.
pub fn try_lock(state_dir: &Path, workload: WorkloadId) -> io::Result<Option<WorkloadLock>> {
    try_lock_file(&lock_path(state_dir, workload))
}

/// Take a kept copy's lock if nobody on this node holds it.
pub fn try_lock_copy(state_dir: &Path, job: JobId) -> io::Result<Option<WorkloadLock>> {
    try_lock_file(&copy_lock_path(state_dir, job))
}

fn try_lock_file(path: &Path) -> io::Result<Option<WorkloadLock>> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(WorkloadLock { _lock: l })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// An undo that wants a kept copy which an archive job is reading says so with this
/// file: the archive stops within a moment and hands its job back to the queue (it runs
/// again once the undo is done, and ends as cancelled if the copy was put back).
pub fn copy_want_path(state_dir: &Path, job: JobId) -> PathBuf {
    state_dir.join("locks").join(format!("kept-{job}.want"))
}

/// Whether an undo waits for the copy kept by `job`.
pub fn copy_wanted(state_dir: &Path, job: JobId) -> bool {
    copy_want_path(state_dir, job).exists()
}

/// Remove a kept copy's lock file once its record is gone (best effort; a lock file
/// left behind is empty and harmless). Only call it while holding the lock.
pub fn remove_copy_lock_file(state_dir: &Path, job: JobId) {
    let _ = std::fs::remove_file(copy_lock_path(state_dir, job));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let d = tempfile::tempdir().unwrap();
        let w = WorkloadId::new();
        let a = try_lock(d.path(), w).unwrap().expect("free");
        assert!(try_lock(d.path(), w).unwrap().is_none());
        assert!(try_lock(d.path(), WorkloadId::new()).unwrap().is_some());
        drop(a);
        assert!(try_lock(d.path(), w).unwrap().is_some());
    }

    #[test]
    fn a_copy_lock_is_its_own() {
        let d = tempfile::tempdir().unwrap();
        let (j, w) = (JobId::new(), WorkloadId::new());
        let a = try_lock_copy(d.path(), j).unwrap().expect("free");
        assert!(try_lock_copy(d.path(), j).unwrap().is_none());
        assert!(try_lock(d.path(), w).unwrap().is_some());
        assert!(try_lock_copy(d.path(), JobId::new()).unwrap().is_some());
        drop(a);
        assert!(try_lock_copy(d.path(), j).unwrap().is_some());
    }
}
