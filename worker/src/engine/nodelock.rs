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
use volsnap_shared::ids::WorkloadId;

/// Held while alive; dropping it unlocks.
pub struct WorkloadLock {
    _lock: Flock<File>,
}

pub fn lock_path(state_dir: &Path, workload: WorkloadId) -> PathBuf {
    state_dir.join("locks").join(format!("{workload}.lock"))
}

/// Take the lock if nobody on this node holds it.
pub fn try_lock(state_dir: &Path, workload: WorkloadId) -> io::Result<Option<WorkloadLock>> {
    let path = lock_path(state_dir, workload);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(WorkloadLock { _lock: l })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
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
}
