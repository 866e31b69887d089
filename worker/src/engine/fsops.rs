//! Filesystem primitives the engine's crash safety rests on: durable writes (file and
//! directory fsync), the atomic exchange of two directories, filesystem identity and
//! free space, and the marker files that tell recovery what a directory holds.
//!
//! Everything here is blocking; callers run it in `spawn_blocking`.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use volsnap_shared::ids::JobId;

/// The reserved root entry name (the archive writer skips it, the extractor refuses it).
pub const MARKER: &str = ".volsnap-marker";

/// What a directory next to (or at) a volume holds, for the job that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The restored (snapshot) data.
    New,
    /// The data that was live before the restore.
    Old,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub job: JobId,
    pub volume: u32,
    pub role: Role,
}

/// Write `dir/.volsnap-marker` durably (file and directory fsynced).
pub fn write_marker(dir: &Path, marker: &Marker) -> io::Result<()> {
    let bytes = serde_json::to_vec(marker).map_err(io::Error::other)?;
    write_durably(&dir.join(MARKER), &bytes)
}

/// The marker of `dir`, if it has one from job `job` (markers of other jobs are not
/// ours to interpret and read as none).
pub fn read_marker(dir: &Path, job: JobId) -> io::Result<Option<Marker>> {
    match std::fs::read(dir.join(MARKER)) {
        Ok(b) => Ok(serde_json::from_slice::<Marker>(&b)
            .ok()
            .filter(|m| m.job == job)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Remove `dir/.volsnap-marker` (if present) and fsync `dir`. A temp file left by a
/// marker write that a crash interrupted ([`write_durably`]) goes too, so nothing of
/// volsnap's stays in a live volume.
pub fn clear_marker(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(format!(".{MARKER}.tmp"))) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(dir.join(MARKER)) {
        Ok(()) => fsync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `p` (for fsync after a rename in it).
pub fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

/// Replace `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("volsnap")
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Atomically exchange two directories of one filesystem (`renameat2(RENAME_EXCHANGE)`).
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
}

/// Whether an exchange failed because the filesystem does not support it.
pub fn exchange_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EINVAL) | Some(nix::libc::ENOSYS) | Some(nix::libc::EOPNOTSUPP)
    )
}

/// The device of `p` itself (not following a final symlink).
pub fn dev_of(p: &Path) -> io::Result<u64> {
    Ok(std::fs::symlink_metadata(p)?.dev())
}

/// Bytes available to unprivileged writers... and to us: `f_bavail * f_frsize`.
pub fn free_bytes(p: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(p).map_err(io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// The nearest existing ancestor of `p` (itself if it exists).
pub fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while std::fs::symlink_metadata(&cur).is_err() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}

/// Remove a directory tree; a missing one is fine. Never follows symlinks.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => fsync_dir(parent(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn remove_file(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => fsync_dir(parent(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Files and bytes under `p` (regular files only, symlinks not followed), for space
/// estimates. A missing `p` counts as empty.
pub fn tree_size(p: &Path) -> io::Result<(u64, u64)> {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            let ft = ent.file_type()?;
            if ft.is_dir() {
                stack.push(ent.path());
            } else if ft.is_file() {
                files += 1;
                bytes += ent.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_directories_and_markers_identify_them() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let job = JobId::new();
        write_marker(
            &a,
            &Marker {
                job,
                volume: 0,
                role: Role::Old,
            },
        )
        .unwrap();
        write_marker(
            &b,
            &Marker {
                job,
                volume: 0,
                role: Role::New,
            },
        )
        .unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(read_marker(&a, job).unwrap().unwrap().role, Role::New);
        assert_eq!(read_marker(&b, job).unwrap().unwrap().role, Role::Old);
        assert_eq!(read_marker(&b, JobId::new()).unwrap(), None);
        std::fs::write(a.join(format!(".{MARKER}.tmp")), b"half").unwrap();
        clear_marker(&a).unwrap();
        assert_eq!(read_marker(&a, job).unwrap(), None);
        assert_eq!(
            std::fs::read_dir(&a).unwrap().count(),
            0,
            "nothing of volsnap's is left"
        );
        assert!(free_bytes(d.path()).unwrap() > 0);
    }
}
